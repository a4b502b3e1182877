#!/usr/bin/env python
"""Merge every indexed dataset (``.bin`` + ``.idx``) in a directory into one.

    python tools/merge_datasets.py --input parts/ --output-prefix data/corpus_text_document

Inputs are taken in name order, so the result does not depend on the file system.  Every
``.bin`` needs its ``.idx`` and the other way round; all inputs must share one dtype.  The
output is written under temporary names and renamed into place, so an interrupted merge
leaves no half-written dataset.  Legacy (lazy/cached) inputs are accepted; the output is
always the MMap format.
"""
import argparse
import os
import sys

from tqdm import tqdm

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.datasets.indexed_dataset import (  # noqa: E402
    IndexedDatasetBuilder,
    IndexedDatasetError,
    get_bin_path,
    get_idx_path,
    make_dataset,
)


def find_prefixes(input_dir):
    """The dataset prefixes in ``input_dir``, sorted by name; a lone .bin or .idx is an error."""
    if not os.path.isdir(input_dir):
        raise IndexedDatasetError(f"--input {input_dir}: not a directory")
    names = os.listdir(input_dir)
    stems = {ext: {n[:-len(ext)] for n in names if n.endswith(ext)} for ext in (".bin", ".idx")}
    for ext, other in ((".bin", ".idx"), (".idx", ".bin")):
        lonely = sorted(stems[ext] - stems[other])
        if lonely:
            path = os.path.join(input_dir, lonely[0] + ext)
            raise IndexedDatasetError(f"{path}: has no matching {other} file")
    if not stems[".bin"]:
        raise IndexedDatasetError(f"--input {input_dir}: contains no .bin/.idx datasets")
    return [os.path.join(input_dir, stem) for stem in sorted(stems[".bin"])]


def merge_datasets(prefixes, output_prefix):
    """Concatenate ``prefixes`` into ``output_prefix``; returns the merged (sequences, documents, tokens)."""
    out_files = {os.path.realpath(get_bin_path(output_prefix)), os.path.realpath(get_idx_path(output_prefix))}
    for prefix in prefixes:
        if os.path.realpath(get_bin_path(prefix)) in out_files:
            raise IndexedDatasetError(f"--output-prefix {output_prefix}: is also an input")
    dtype = make_dataset(prefixes[0]).dtype
    with IndexedDatasetBuilder(get_bin_path(output_prefix), dtype=dtype) as builder:
        # tqdm's disable=None: a bar on a terminal, nothing in logs.
        for prefix in tqdm(prefixes, desc="merging", unit=" datasets", file=sys.stderr, disable=None):
            builder.merge_file_(prefix)
        builder.finalize(get_idx_path(output_prefix))
    merged = make_dataset(output_prefix, "mmap")
    return len(merged), len(merged.doc_idx) - 1, int(merged.sizes.sum(dtype="int64"))


def get_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--input", required=True,
                        help="directory holding the datasets to merge (every PREFIX.bin with its PREFIX.idx)")
    parser.add_argument("--output-prefix", required=True,
                        help="path prefix of the merged dataset, without .bin/.idx")
    return parser.parse_args(argv)


def main(argv=None):
    args = get_args(argv)
    try:
        prefixes = find_prefixes(args.input)
        out_dir = os.path.dirname(os.path.abspath(args.output_prefix))
        if not os.path.isdir(out_dir):
            raise IndexedDatasetError(f"--output-prefix {args.output_prefix}: directory {out_dir} does not exist")
        sequences, documents, tokens = merge_datasets(prefixes, args.output_prefix)
    except (IndexedDatasetError, OSError) as err:
        print(f"merge_datasets.py: error: {err}", file=sys.stderr)
        return 1
    for prefix in prefixes:
        print(f"merged {prefix}")
    print(f"wrote {args.output_prefix}.bin/.idx from {len(prefixes)} datasets: "
          f"{sequences} sequences, {documents} documents, {tokens} tokens")
    return 0


if __name__ == "__main__":
    sys.exit(main())
