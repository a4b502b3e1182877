#!/usr/bin/env python
"""Keep one document per duplicate group: the first of each group met in the data (so the
corpus order is preserved), and every document in no group.

    python tools/openwebtext/remove_group_duplicates.py <groups> <data> <output> [--id-key url]
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.preprocessing.webtext.groups import read_groups, removal_index  # noqa: E402
from megatron.preprocessing.webtext.jsonl import (WebtextError, byte_progress, check_inputs, parse_line,  # noqa: E402
                                                  print_counts, read_batches, run_cli, write_lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("groups", help="group_duplicate_url.py output.")
    parser.add_argument("data", help="Loose-JSON corpus the groups refer to.")
    parser.add_argument("output", help="The corpus with one document per group.")
    parser.add_argument("--id-key", default="url", help="JSON key holding the ids the groups list.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    check_inputs([args.data])
    group_of = removal_index(read_groups(args.groups))
    kept_groups = set()
    counts = {"documents": 0, "kept": 0, "removed": 0}

    def lines():
        with byte_progress([args.data], "remove duplicates") as progress:
            for path, batch in read_batches([args.data], 1024, progress):
                for number, _, raw in batch:
                    record = parse_line(path, number, raw)
                    doc_id = record.get(args.id_key)
                    if not isinstance(doc_id, (str, int)) or isinstance(doc_id, bool):
                        raise WebtextError(f"{path}:{number}: --id-key {args.id_key!r} must hold a string or an "
                                           f"integer")
                    counts["documents"] += 1
                    group = group_of.get(str(doc_id))
                    if group is not None:
                        if group in kept_groups:
                            counts["removed"] += 1
                            continue
                        kept_groups.add(group)
                    counts["kept"] += 1
                    yield raw.decode("utf-8").rstrip("\r\n") + "\n"

    write_lines(args.output, lines())
    counts["groups never met in the data"] = len(set(group_of.values()) - kept_groups)
    print_counts(f"{counts['documents']:,} documents -> {counts['kept']:,} kept in {args.output}", counts)


if __name__ == "__main__":
    run_cli(main)
