#!/usr/bin/env python
"""Write a noisy web-like corpus from the bundled demo text, with every planted defect listed.

Sentences come from the demo corpus (tools/make_demo_corpus.py: Python's own documentation);
documents get made-up URLs in the "url" key. Planted: near-duplicates, exact duplicates up to
case and spacing, mojibake, foreign-language documents, one-sentence documents and evaluation
text (--task-file, LAMBADA JSON lines) pasted into documents. Also writes a directory of URL
lists with blacklisted, binary, short and repeated URLs for blacklist_urls.py.

    python tools/openwebtext/make_noisy_corpus.py --output-dir noisy --num-docs 2000 \\
        --task-file tests/data/lambada_sample.jsonl
Outputs: <dir>/corpus.json, <dir>/manifest.json, <dir>/urls/*.txt
"""
import argparse
import json
import os
import random
import sys
from dataclasses import asdict

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.core.fileio import atomic_write_text  # noqa: E402
from megatron.preprocessing.webtext import synthetic  # noqa: E402
from megatron.preprocessing.webtext.jsonl import WebtextError, dumps, run_cli, write_lines  # noqa: E402
from megatron.preprocessing.webtext.ngrams import task_texts  # noqa: E402
from tools.make_demo_corpus import iter_documents  # noqa: E402

BAD_URLS = ["https://imgur.com/gallery/abc123", "http://i.imgur.com/xyz.jpg", "https://www.youtube.com/watch?v=q",
            "https://example.org/files/report.pdf", "https://example.org/pkg/archive.tar.gz",
            "https://example.org/photo.PNG", "http://a.b", "bit.ly", "not a url at all"]


def demo_sentences():
    sentences = []
    for doc in iter_documents():
        sentences.extend(synthetic.split_sentences(doc["text"]))
    return sorted(set(sentences))


def url_lists(records, seed):
    """Two URL files: every document's URL (shuffled, some repeated with another spelling) plus junk."""
    rng = random.Random(seed)
    urls = [r["url"] for r in records]
    repeats = [u.replace("https://www.", "http://") + "/" for u in rng.sample(urls, max(1, len(urls) // 20))]
    lines = urls + repeats + BAD_URLS
    rng.shuffle(lines)
    half = len(lines) // 2
    return lines[:half], lines[half:]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output-dir", required=True)
    parser.add_argument("--num-docs", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--task-file", default=None, help="LAMBADA-format JSON lines whose texts are planted.")
    parser.add_argument("--no-urls", action="store_true", help="Skip the URL lists (large benchmark corpora).")
    args = parser.parse_args(argv)
    if args.num_docs < 1:
        raise WebtextError(f"--num-docs {args.num_docs} must be at least 1")
    tasks = task_texts("lambada", [args.task_file]) if args.task_file else []
    manifest = synthetic.Manifest()
    os.makedirs(args.output_dir, exist_ok=True)
    corpus = os.path.join(args.output_dir, "corpus.json")
    records = synthetic.generate(demo_sentences(), args.num_docs, args.seed, task_texts=tasks, manifest=manifest)
    kept_urls = []

    def lines():
        for record in records:
            if not args.no_urls:
                kept_urls.append(record)
            yield dumps(record)

    write_lines(corpus, lines())
    atomic_write_text(os.path.join(args.output_dir, "manifest.json"), json.dumps(asdict(manifest), indent=1))
    if not args.no_urls:
        for n, part in enumerate(url_lists(kept_urls, args.seed)):
            write_lines(os.path.join(args.output_dir, "urls", f"urls_{n}.txt"), (u + "\n" for u in part))
    print(f"wrote {args.num_docs:,} documents ({os.path.getsize(corpus) / 2**20:.1f} MiB) to {corpus}: "
          f"{len(manifest.near_duplicates)} near-duplicates, {len(manifest.exact_duplicates)} exact duplicates, "
          f"{len(manifest.mojibake)} mojibake, {len(manifest.foreign)} foreign, {len(manifest.short)} short, "
          f"{len(manifest.task_text)} with task text")


if __name__ == "__main__":
    run_cli(main)
