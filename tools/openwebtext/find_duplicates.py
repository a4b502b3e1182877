#!/usr/bin/env python
"""Find near-duplicate documents: MinHash (datasketch) over character shingles, LSH bands,
then the exact Jaccard similarity of every candidate pair, so no pair below the threshold is
reported. Output (Megatron-LM's format), one JSON object per line:
``{"<id>": [["<other id>", <jaccard>], ...]}``.

    python tools/openwebtext/find_duplicates.py --inputs <file> <id key> [<file> <id key> ...] \\
        --output <pairs> [--jaccard-threshold 0.5] [--num-workers N]

A pair of similarity J becomes a candidate with probability 1 - (1 - J^r)^b for b = --num-bands
and r = --num-seeds / --num-bands: the defaults (128 seeds, 32 bands of 4 rows) find 87% of the
pairs at exactly J = 0.5, 95% at 0.55, 99.8% at 0.65 (more bands raise recall and work).
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.preprocessing.webtext.jsonl import WebtextError, positive_workers, print_counts, run_cli  # noqa: E402
from megatron.preprocessing.webtext.minhash import JACCARD_KINDS, MinHashConfig, find_duplicates  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--inputs", nargs="*", default=[],
                        help="Pairs of <loose-JSON file> <id key> (the key naming each document, e.g. url).")
    parser.add_argument("--output", required=True, help="Where the duplicate pairs are written.")
    parser.add_argument("--text-key", default="text", help="JSON key of the document text.")
    parser.add_argument("--jaccard", default="union", choices=JACCARD_KINDS,
                        help="Similarity: |A&B| over |A|B| (union), the smaller set (min) or the larger (max). "
                             "Candidates still come from union-Jaccard bands, so with min a short text inside a "
                             "much longer one (low union similarity) can be missed.")
    parser.add_argument("--jaccard-threshold", type=float, default=0.5,
                        help="Report pairs with at least this exact similarity.")
    parser.add_argument("--num-bands", type=int, default=32, help="LSH bands.")
    parser.add_argument("--num-seeds", type=int, default=128, help="MinHash permutations (a multiple of --num-bands).")
    parser.add_argument("--char-ngram", type=int, default=5, help="Characters per shingle.")
    parser.add_argument("--seed", type=int, default=1234, help="Seed of the MinHash permutations.")
    parser.add_argument("--max-bucket-size", type=int, default=200,
                        help="A band bucket with more documents pairs each with its first member only.")
    parser.add_argument("--estimate-margin", type=float, default=0.15,
                        help="Skip the exact check of candidates whose MinHash estimate is below threshold minus "
                             "this (negative: check every candidate).")
    parser.add_argument("--save-fingerprints", default=None, help="Save the fingerprints (.npz) for later runs.")
    parser.add_argument("--load-fingerprints", nargs="*", default=[],
                        help="Fingerprint files from earlier runs (their inputs must be unchanged).")
    parser.add_argument("--num-workers", "--workers", dest="workers", type=int, default=1,
                        help="Worker processes for fingerprints and verification.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    positive_workers(args.workers, "--num-workers")
    if len(args.inputs) % 2:
        raise WebtextError(f"--inputs takes pairs of <file> <id key>; got {len(args.inputs)} values")
    inputs = list(zip(args.inputs[0::2], args.inputs[1::2]))
    if not inputs and not args.load_fingerprints:
        raise WebtextError("nothing to compare: give --inputs and/or --load-fingerprints")
    if not 0.0 < args.jaccard_threshold <= 1.0:
        raise WebtextError(f"--jaccard-threshold {args.jaccard_threshold} must be in (0, 1]")
    if args.max_bucket_size < 2:
        raise WebtextError(f"--max-bucket-size {args.max_bucket_size} must be at least 2")
    config = MinHashConfig(num_seeds=args.num_seeds, num_bands=args.num_bands, char_ngram=args.char_ngram,
                           seed=args.seed, text_key=args.text_key)
    stats = find_duplicates(inputs, args.output, config, args.jaccard_threshold, args.jaccard, args.workers,
                            args.save_fingerprints, args.load_fingerprints, args.max_bucket_size,
                            args.estimate_margin)
    print_counts(f"{stats['pairs']:,} pairs with {args.jaccard} Jaccard >= {args.jaccard_threshold} -> {args.output}",
                 {"documents": stats["documents"], "lsh candidate pairs": stats["candidates"],
                  "checked exactly": stats["checked"], "verified pairs": stats["pairs"]})
    print(f"  seconds: fingerprints {stats['fingerprint_s']:.1f}, lsh {stats['lsh_s']:.1f}, "
          f"verification {stats['verify_s']:.1f}")


if __name__ == "__main__":
    run_cli(main)
