#!/usr/bin/env python
"""Pick MLPerf's eval_10k from the eval TFRecord, as the reference ``pick_eval_samples.py``.

    python tools/pick_eval_samples.py --input_tfrecord=eval_intermediate --output_tfrecord=eval_10k \\
        --num_examples_to_pick=10000

Record ``floor(i * N / num_examples_to_pick)`` of the N input records, for i = 0 .. num-1, is
re-serialised with the seven MLPerf features in the reference's order; every record must have
the fixed lengths ``--max_seq_length`` / ``--max_predictions_per_seq``.
"""
import argparse
import collections
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402

from megatron.core.datasets.tfrecord import (  # noqa: E402
    TFRecordError, TFRecordWriter, decode_example, encode_example, scan_records)

SEQ_FEATURES = ("input_ids", "input_mask", "segment_ids")
PRED_FEATURES = ("masked_lm_positions", "masked_lm_ids", "masked_lm_weights")


def pick_indices(num_records: int, num_to_pick: int):
    return [i * num_records // num_to_pick for i in range(num_to_pick)]


def mlperf_features(features, where, max_seq_length, max_predictions_per_seq):
    """The seven features in the reference's order, lengths checked."""
    out = collections.OrderedDict()
    lengths = dict.fromkeys(SEQ_FEATURES, max_seq_length)
    lengths.update(dict.fromkeys(PRED_FEATURES, max_predictions_per_seq), next_sentence_labels=1)
    for name, length in lengths.items():
        if name not in features:
            raise TFRecordError(f"{where}: no feature {name!r}")
        value = features[name]
        if len(value) != length:
            raise TFRecordError(f"{where}: feature {name!r} has {len(value)} values, expected {length}")
        out[name] = value.astype(np.float32 if name == "masked_lm_weights" else np.int64)
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_tfrecord", required=True)
    p.add_argument("--output_tfrecord", required=True)
    p.add_argument("--num_examples_to_pick", type=int, default=10000)
    p.add_argument("--max_seq_length", type=int, default=512)
    p.add_argument("--max_predictions_per_seq", type=int, default=76)
    args = p.parse_args(argv)
    try:
        if args.num_examples_to_pick < 1:
            raise TFRecordError(f"--num_examples_to_pick={args.num_examples_to_pick}: must be >= 1")
        if not os.path.isfile(args.input_tfrecord):
            raise TFRecordError(f"--input_tfrecord {args.input_tfrecord}: no such file")
        records = [(offset, payload) for offset, _, payload in scan_records(args.input_tfrecord)]
        if len(records) < args.num_examples_to_pick:
            raise TFRecordError(f"--input_tfrecord {args.input_tfrecord}: holds {len(records)} records, fewer than "
                                f"--num_examples_to_pick={args.num_examples_to_pick}")
        with TFRecordWriter(args.output_tfrecord) as writer:
            for index in pick_indices(len(records), args.num_examples_to_pick):
                offset, payload = records[index]
                where = f"{args.input_tfrecord}: record {index} (byte offset {offset})"
                features = mlperf_features(decode_example(payload, where), where, args.max_seq_length,
                                           args.max_predictions_per_seq)
                writer.write(encode_example(features))
    except TFRecordError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(f"Picked {args.num_examples_to_pick} of {len(records)} records into {args.output_tfrecord}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
