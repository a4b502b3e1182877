#!/usr/bin/env python
"""Filter a directory of URL lists before downloading: blacklisted domains, non-text file
extensions, duplicates and too-short URLs are dropped; the count per reason is printed.

    python tools/openwebtext/blacklist_urls.py <url dir> <clean urls file>

<url dir> holds text files of URLs, one per line (a single file is accepted too); files are
read in sorted name order and the kept URLs are written in that order.
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tqdm import tqdm  # noqa: E402

from megatron.preprocessing.webtext.jsonl import print_counts, run_cli, write_lines  # noqa: E402
from megatron.preprocessing.webtext.urls import (DEFAULT_DOMAIN_BLACKLIST, DEFAULT_EXTENSION_BLACKLIST,  # noqa: E402
                                                 UrlFilter, read_urls, read_word_list, url_files)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("url_dir", help="Directory of URL files (one URL per line), or one such file.")
    parser.add_argument("output", help="Where the clean URLs are written, one per line.")
    parser.add_argument("--domain-blacklist", default=None,
                        help="File of domains (one per line) to use instead of the built-in list.")
    parser.add_argument("--extra-domains", default=None, help="File of domains to add to the blacklist.")
    parser.add_argument("--extension-blacklist", default=None,
                        help="File of extensions (one per line) to use instead of the built-in list.")
    parser.add_argument("--min-length", type=int, default=8, help="URLs shorter than this many characters are dropped.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    domains = read_word_list(args.domain_blacklist) if args.domain_blacklist else set(DEFAULT_DOMAIN_BLACKLIST)
    if args.extra_domains:
        domains = set(domains) | set(read_word_list(args.extra_domains))
    extensions = read_word_list(args.extension_blacklist) if args.extension_blacklist else DEFAULT_EXTENSION_BLACKLIST
    url_filter = UrlFilter(domains, extensions, args.min_length)
    files = url_files(args.url_dir)
    urls = (url for _, _, url in tqdm(read_urls(files), desc="urls", unit=" url", disable=None, file=sys.stderr))
    write_lines(args.output, (u + "\n" for u in url_filter.filter(urls)))
    counts = url_filter.counts
    total = sum(counts.values())
    print_counts(f"{total:,} URLs from {len(files)} file(s) -> {counts['kept']:,} kept in {args.output}",
                 {"kept": counts["kept"], **{k: v for k, v in counts.items() if k != "kept"}})


if __name__ == "__main__":
    run_cli(main)
