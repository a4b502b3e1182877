#!/usr/bin/env python
"""Group near-duplicates: the connected components of the pairs find_duplicates wrote whose
similarity is at least the threshold. Output: one JSON object per group of two or more,
``{"<group number>": ["<id>", ...]}``, ids in order of first appearance in the pairs file.

    python tools/openwebtext/group_duplicate_url.py <pairs> <groups> [threshold (default 0.7)]
"""
import argparse
import json
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from tqdm import tqdm  # noqa: E402

from megatron.preprocessing.webtext.groups import group_pairs, read_pairs  # noqa: E402
from megatron.preprocessing.webtext.jsonl import WebtextError, print_counts, run_cli, write_lines  # noqa: E402


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pairs", help="find_duplicates.py output.")
    parser.add_argument("groups", help="Where the groups are written.")
    parser.add_argument("threshold", nargs="?", type=float, default=0.7,
                        help="Use only pairs with at least this similarity (Megatron-LM's default 0.7).")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    if not 0.0 <= args.threshold <= 1.0:
        raise WebtextError(f"threshold {args.threshold} must be in [0, 1]")
    seen = [0]

    def counted():
        for pair in tqdm(read_pairs(args.pairs), unit=" pairs", desc="group", disable=None, file=sys.stderr):
            seen[0] += 1
            yield pair

    groups, used = group_pairs(counted(), args.threshold)
    write_lines(args.groups, (json.dumps({str(n): g}, ensure_ascii=False) + "\n" for n, g in enumerate(groups)))
    print_counts(f"{len(groups):,} groups -> {args.groups}",
                 {"pairs read": seen[0], f"pairs >= {args.threshold}": used, "groups": len(groups),
                  "documents in groups": sum(len(g) for g in groups),
                  "documents to remove": sum(len(g) - 1 for g in groups)})


if __name__ == "__main__":
    run_cli(main)
