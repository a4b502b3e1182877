#!/usr/bin/env python
"""Exact deduplication, the cheap first pass: keep the first document of each normalised text
(NFKC, case-folded, punctuation and whitespace runs folded) across all inputs, in order.

    python tools/openwebtext/exact_dedup.py <input> [<input> ...] <output> [--text-key text]
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.preprocessing.webtext import exact  # noqa: E402
from megatron.preprocessing.webtext.jsonl import (byte_progress, check_inputs, ordered_map, positive_workers,  # noqa: E402
                                                  print_counts, read_batches, run_cli, write_lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("inputs", nargs="+", help="Loose-JSON corpora, deduplicated together in this order.")
    parser.add_argument("output", help="The corpus without exact duplicates.")
    parser.add_argument("--text-key", default="text", help="JSON key of the document text.")
    parser.add_argument("--removed", default=None,
                        help="Also write 'file:line<TAB>kept file:line' for every dropped document here.")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes for hashing.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    positive_workers(args.workers)
    check_inputs(args.inputs)
    first = {}
    removed = []
    counts = {"documents": 0, "kept": 0, "duplicates": 0}

    def lines():
        with byte_progress(args.inputs, "exact dedup") as progress:
            for path, items in ordered_map(exact.digest_batch, read_batches(args.inputs, 512, progress), args.workers,
                                           initializer=exact.init_worker, initargs=(args.text_key,)):
                for number, digest, raw in items:
                    counts["documents"] += 1
                    if digest in first:
                        counts["duplicates"] += 1
                        if args.removed:
                            kept_at = first[digest]
                            removed.append(f"{path}:{number}\t{kept_at[0]}:{kept_at[1]}\n")
                        continue
                    # Only --removed needs to know where the kept copy is; otherwise 16 bytes a document.
                    first[digest] = (path, number) if args.removed else None
                    counts["kept"] += 1
                    yield raw.decode("utf-8").rstrip("\r\n") + "\n"

    write_lines(args.output, lines())
    if args.removed:
        write_lines(args.removed, removed)
    print_counts(f"{counts['documents']:,} documents -> {counts['kept']:,} kept in {args.output}", counts)


if __name__ == "__main__":
    run_cli(main)
