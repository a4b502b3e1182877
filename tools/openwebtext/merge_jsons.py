#!/usr/bin/env python
"""Merge loose-JSON shards into one file, in sorted file-name order, each line validated.

    python tools/openwebtext/merge_jsons.py --json_path <dir of *.json> --output_file <merged.json>
"""
import argparse
import glob
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.preprocessing.webtext.jsonl import (WebtextError, byte_progress, parse_line, print_counts,  # noqa: E402
                                                  read_batches, run_cli, write_lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json_path", "--json-path", dest="json_path", required=True,
                        help="Directory whose shards are merged (or a single shard).")
    parser.add_argument("--output_file", "--output-file", dest="output_file", required=True, help="Merged output.")
    parser.add_argument("--pattern", default="*.json",
                        help="Glob of the shard names inside --json_path (default *.json; *.jsonl for others).")
    return parser.parse_args(argv)


def shard_paths(json_path, pattern, output_file):
    if os.path.isfile(json_path):
        return [json_path]
    if not os.path.isdir(json_path):
        raise WebtextError(f"--json_path {json_path}: no such directory")
    output = os.path.abspath(output_file)
    paths = sorted(p for p in glob.glob(os.path.join(json_path, pattern)) if os.path.abspath(p) != output)
    if not paths:
        raise WebtextError(f"--json_path {json_path}: no files match {pattern}")
    return paths


def main(argv=None):
    args = parse_args(argv)
    paths = shard_paths(args.json_path, args.pattern, args.output_file)
    per_file = {}

    def lines():
        with byte_progress(paths, "merge") as progress:
            for path, batch in read_batches(paths, 1024, progress):
                for number, _, raw in batch:
                    parse_line(path, number, raw)  # validate: a broken shard fails here, naming its line
                    per_file[path] = per_file.get(path, 0) + 1
                    yield raw.decode("utf-8").rstrip("\r\n") + "\n"

    total = write_lines(args.output_file, lines())
    print_counts(f"{total:,} documents from {len(paths)} shard(s) -> {args.output_file}",
                 {os.path.basename(p): per_file.get(p, 0) for p in paths})


if __name__ == "__main__":
    run_cli(main)
