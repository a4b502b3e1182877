"""Records/s per data-parallel rank from the index-sharded MLPerf TFRecord reader.

    nice python benchmarks/bench_tfrecord_loader.py --data-path 'tfrecord/part-*' --index-dir idx/ --seq-length 512

Rank 0 of D reads its micro-batches through ``MegatronPretrainingSampler`` and a DataLoader
(collation included), as ``pretrain_bert.py --data-impl tfrecord`` does. Without ``--data-path``
MLPerf-shaped records (512 tokens, 76 predictions) are written to a temporary directory first.
"""
import argparse
import glob
import os
import sys
import tempfile
import time

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.datasets.samplers import build_pretraining_data_loader  # noqa: E402
from megatron.core.datasets.tfrecord import TFRecordWriter, encode_example  # noqa: E402
from megatron.core.datasets.tfrecord_dataset import MLPerfBertTFRecordDataset  # noqa: E402


def write_synthetic(directory, files, records_per_file, seq, preds):
    rng = np.random.default_rng(0)
    paths = []
    for k in range(files):
        path = os.path.join(directory, f"part-{k:05d}-of-{files:05d}")
        with TFRecordWriter(path) as w:
            for _ in range(records_per_file):
                n = int(rng.integers(seq // 2, seq + 1))
                ids = np.zeros(seq, np.int64)
                ids[:n] = rng.integers(1000, 30000, n)
                weights = np.zeros(preds, np.float32)
                weights[:min(preds, n // 7)] = 1.0
                w.write(encode_example({
                    "input_ids": ids, "input_mask": (ids > 0).astype(np.int64), "segment_ids": np.zeros(seq, np.int64),
                    "masked_lm_positions": np.arange(preds) * (weights > 0), "masked_lm_ids": ids[:preds] * (weights > 0),
                    "masked_lm_weights": weights, "next_sentence_labels": np.array([n % 2])}))
        paths.append(path)
    return paths


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--data-path")
    p.add_argument("--index-dir")
    p.add_argument("--seq-length", type=int, default=512)
    p.add_argument("--micro-batch-size", type=int, default=32)
    p.add_argument("--batches", type=int, default=40, help="micro-batches read per configuration")
    p.add_argument("--dp", type=int, nargs="*", default=[1, 2, 8])
    p.add_argument("--num-workers", type=int, nargs="*", default=[0, 2])
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        files = sorted(glob.glob(args.data_path)) if args.data_path else \
            write_synthetic(tmp, 4, 2000, args.seq_length, 76)
        print(f"{len(files)} files; seq {args.seq_length}; micro-batch {args.micro_batch_size}; "
              f"{args.batches} micro-batches per row")
        print("| DP size | DataLoader workers | records/s (rank 0) | first batch s |\n|---:|---:|---:|---:|")
        for dp in args.dp:
            for workers in args.num_workers:
                samples = args.batches * args.micro_batch_size * dp
                ds = MLPerfBertTFRecordDataset(files, samples, args.seq_length, args.micro_batch_size, dp, seed=1,
                                               shuffle=True, index_dir=args.index_dir or tmp)
                loader = build_pretraining_data_loader(ds, 0, args.micro_batch_size, 0, dp, num_workers=workers)
                start = time.perf_counter()
                first = None
                count = 0
                for batch in loader:
                    count += len(batch["text"])
                    if first is None:
                        first = time.perf_counter() - start
                elapsed = time.perf_counter() - start
                print(f"| {dp} | {workers} | {count / elapsed:,.0f} | {first:.2f} |")


if __name__ == "__main__":
    main()
