#!/usr/bin/env python
"""DALI index files for the train and eval TFRecords (``tfrecord2idx`` for every file).

    python tools/make_idx.py --tfrecord_train=tfrecord/ --tfrecord_eval=eval_10k_dir/ --output_idx=idx/

Writes ``<out>/train/<name>.idx`` and ``<out>/eval/<name>.idx``: one line per record,
``<byte offset> <record size including framing>``. ``--tfrecord_output`` is the same flag
(the script's spelling; the ColossalAI README says ``--output_idx``). A directory argument
indexes every regular, non-hidden file in it that is not itself an ``.idx``; a file argument
indexes that file. A truncated TFRecord is an error naming the file and the byte offset.
"""
import argparse
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.datasets.tfrecord import TFRecordError, build_index, write_index  # noqa: E402


def tfrecord_files(path, flag):
    if os.path.isfile(path):
        return [path]
    if not os.path.isdir(path):
        raise TFRecordError(f"{flag} {path}: no such file or directory")
    files = sorted(os.path.join(path, name) for name in os.listdir(path)
                   if not name.startswith(".") and not name.endswith(".idx")
                   and os.path.isfile(os.path.join(path, name)))
    if not files:
        raise TFRecordError(f"{flag} {path}: holds no TFRecord files")
    return files


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tfrecord_train", help="directory (or file) of training TFRecords")
    p.add_argument("--tfrecord_eval", help="directory (or file) of evaluation TFRecords")
    p.add_argument("--output_idx", "--tfrecord_output", dest="output_idx", required=True,
                   help="output directory; gets train/ and eval/ subdirectories")
    args = p.parse_args(argv)
    if not args.tfrecord_train and not args.tfrecord_eval:
        p.error("give --tfrecord_train and/or --tfrecord_eval")
    try:
        for split, flag, source in (("train", "--tfrecord_train", args.tfrecord_train),
                                    ("eval", "--tfrecord_eval", args.tfrecord_eval)):
            if not source:
                continue
            files = tfrecord_files(source, flag)
            records = 0
            for path in files:
                index = build_index(path)
                write_index(index, os.path.join(args.output_idx, split, os.path.basename(path) + ".idx"))
                records += len(index)
            print(f"{split}: indexed {records} records in {len(files)} files under "
                  f"{os.path.join(args.output_idx, split)}")
    except TFRecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
