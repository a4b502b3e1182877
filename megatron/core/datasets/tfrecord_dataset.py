"""MLPerf BERT examples read from TFRecord files (``pretrain_bert.py --data-impl tfrecord``).

The examples are already masked (``tools/create_pretraining_data.py``), so a sample is a
record as it is. Records are found through DALI's index files (built on the fly when absent)
and split among data-parallel ranks by record ranges: rank r of D owns records
``[r*N//D, (r+1)*N//D)`` of the N records of all files in order, and reads only those. Within
its range a rank walks epochs; a training epoch is the range passed through a seeded shuffle
buffer (DALI's ``random_shuffle`` with ``initial_fill``), an evaluation epoch is the range in
order.

The dataset is map-style so that it resumes from ``consumed_samples`` like the other
datasets: ``MegatronPretrainingSampler`` hands rank r the r-th micro-batch slice of each global
batch of consecutive indices, and index g is mapped back to (rank, position in that rank's
stream). Sample g therefore depends only on (seed, g, micro-batch size, data-parallel size).
"""
from __future__ import annotations

import glob
import os
from typing import Dict, List, Optional, Sequence

import numpy as np
import torch

from megatron.core.datasets.tfrecord import TFRecordError, build_index, decode_example, read_index, \
    read_record_at, write_index

MLPERF_FEATURES = ("input_ids", "input_mask", "segment_ids", "masked_lm_positions", "masked_lm_ids",
                   "masked_lm_weights", "next_sentence_labels")


def expand_tfrecord_paths(patterns: Sequence[str], flag: str = "--data-path") -> List[str]:
    """Files of comma-separated paths and globs, in the given order, each glob sorted."""
    files = []
    for entry in patterns:
        for pattern in str(entry).split(","):
            if not pattern:
                continue
            matched = sorted(p for p in glob.glob(pattern) if os.path.isfile(p) and not p.endswith(".idx"))
            if not matched:
                raise FileNotFoundError(f"{flag} {pattern}: matches no TFRecord file")
            files.extend(matched)
    if not files:
        raise FileNotFoundError(f"{flag}: no TFRecord files given")
    return files


def find_or_build_index(path: str, index_dir: Optional[str] = None, cache_dir: Optional[str] = None) -> np.ndarray:
    """The (offset, size) rows of ``path`` from ``<index_dir>/[train/|eval/]<name>.idx`` or
    ``<path>.idx``; built by scanning the file when none exists and saved where possible."""
    name = os.path.basename(path) + ".idx"
    candidates = []
    if index_dir:
        candidates += [os.path.join(index_dir, name), os.path.join(index_dir, "train", name),
                       os.path.join(index_dir, "eval", name)]
    if cache_dir:
        candidates.append(os.path.join(cache_dir, name))
    candidates.append(path + ".idx")
    for idx_path in candidates:
        if os.path.isfile(idx_path):
            return read_index(idx_path, path)
    index = build_index(path)
    target = os.path.join(index_dir or cache_dir, name) if (index_dir or cache_dir) else path + ".idx"
    try:
        write_index(index, target)
    except OSError:
        pass  # a read-only data directory: the index lives in memory only
    return index


def shuffle_buffer_order(n: int, buffer_size: int, seed: int) -> np.ndarray:
    """The order in which a shuffle buffer of ``buffer_size`` emits items 0..n-1: fill the
    buffer, then repeatedly emit a uniformly chosen slot and refill it with the next item."""
    rng = np.random.default_rng(seed)
    size = min(buffer_size, n)
    buffer = list(range(size))
    draws = rng.random(n)
    out = np.empty(n, dtype=np.int64)
    next_item = size
    for t in range(n):
        slot = int(draws[t] * len(buffer))
        out[t] = buffer[slot]
        if next_item < n:
            buffer[slot] = next_item
            next_item += 1
        else:
            buffer[slot] = buffer[-1]
            buffer.pop()
    return out


class MLPerfBertTFRecordDataset(torch.utils.data.Dataset):
    """``num_samples`` BERT samples (keys as ``BertDataset``: text, types, labels, is_random,
    loss_mask, padding_mask) from MLPerf TFRecords, sharded over data-parallel ranks."""

    def __init__(self, files: Sequence[str], num_samples: int, seq_length: int, micro_batch_size: int,
                 data_parallel_size: int, seed: int, shuffle: bool, shuffle_buffer: int = 10000,
                 index_dir: Optional[str] = None, cache_dir: Optional[str] = None, name: str = "train"):
        if micro_batch_size < 1 or data_parallel_size < 1:
            raise ValueError("micro_batch_size and data_parallel_size must be >= 1")
        self.files = list(files)
        self.name = name
        self.num_samples = num_samples
        self.seq_length = seq_length
        self.micro_batch_size = micro_batch_size
        self.data_parallel_size = data_parallel_size
        self.seed = seed
        self.shuffle = shuffle
        self.shuffle_buffer = shuffle_buffer
        indexes = [find_or_build_index(f, index_dir, cache_dir) for f in self.files]
        self.file_of_record = np.concatenate([np.full(len(ix), i, dtype=np.int32) for i, ix in enumerate(indexes)])
        self.records = np.concatenate(indexes) if indexes else np.zeros((0, 2), dtype=np.int64)
        total = len(self.records)
        if total < data_parallel_size:
            raise ValueError(f"{name} TFRecords {', '.join(self.files)}: {total} records, fewer than the "
                             f"{data_parallel_size} data-parallel ranks")
        self.shard_bounds = [(r * total // data_parallel_size, (r + 1) * total // data_parallel_size)
                             for r in range(data_parallel_size)]
        self._orders: Dict[tuple, np.ndarray] = {}
        self._handles: Dict[int, object] = {}
        first = self._read_record(0)
        self.max_predictions_per_seq = len(first["masked_lm_positions"])

    @property
    def num_records(self) -> int:
        return len(self.records)

    def __len__(self):
        return self.num_samples

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_handles"] = {}  # descriptors stay in the process that opened them
        return state

    def __del__(self):
        if getattr(self, "_handles_pid", None) == os.getpid():
            for fd in self._handles.values():
                os.close(fd)

    # -- index arithmetic ---------------------------------------------------------------------
    def rank_and_position(self, index: int):
        """(data-parallel rank, position in its stream) of global sample ``index``."""
        per_step = self.micro_batch_size * self.data_parallel_size
        step, within = divmod(index, per_step)
        rank, offset = divmod(within, self.micro_batch_size)
        return rank, step * self.micro_batch_size + offset

    def record_of(self, index: int) -> int:
        rank, position = self.rank_and_position(index)
        start, stop = self.shard_bounds[rank]
        epoch, offset = divmod(position, stop - start)
        if not self.shuffle:
            return start + offset
        key = (rank, epoch)
        if key not in self._orders:
            self._orders.clear()  # one epoch at a time per rank
            self._orders[key] = shuffle_buffer_order(stop - start, self.shuffle_buffer,
                                                     seed=(self.seed, rank, epoch))
        return start + int(self._orders[key][offset])

    # -- reading -------------------------------------------------------------------------------
    def _read_record(self, record: int) -> Dict[str, np.ndarray]:
        file_id = int(self.file_of_record[record])
        path = self.files[file_id]
        if getattr(self, "_handles_pid", None) != os.getpid():
            # A forked DataLoader worker opens its own descriptors.
            self._handles, self._handles_pid = {}, os.getpid()
        handle = self._handles.get(file_id)
        if handle is None:
            handle = self._handles[file_id] = os.open(path, os.O_RDONLY)
        offset, size = (int(v) for v in self.records[record])
        where = f"{path}: record at byte offset {offset}"
        features = decode_example(read_record_at(handle, offset, size, path), where)
        missing = [k for k in MLPERF_FEATURES if k not in features]
        if missing:
            raise TFRecordError(f"{where}: lacks the MLPerf feature(s) {', '.join(missing)}")
        if len(features["input_ids"]) != self.seq_length:
            raise TFRecordError(f"{where}: {len(features['input_ids'])} tokens, but --seq-length is "
                                f"{self.seq_length}")
        return features

    def __getitem__(self, index: int) -> Dict[str, np.ndarray]:
        if not 0 <= index < self.num_samples:
            raise IndexError(f"sample {index} outside [0, {self.num_samples})")
        features = self._read_record(self.record_of(index))
        return mlperf_sample(features, self.seq_length)


def mlperf_sample(features: Dict[str, np.ndarray], seq_length: int) -> Dict[str, np.ndarray]:
    """BertDataset's sample layout from the seven MLPerf features."""
    positions = features["masked_lm_positions"]
    real = features["masked_lm_weights"] > 0
    labels = np.full(seq_length, -1, dtype=np.int64)
    loss_mask = np.zeros(seq_length, dtype=np.int64)
    labels[positions[real]] = features["masked_lm_ids"][real]
    loss_mask[positions[real]] = 1
    return {
        "text": features["input_ids"].astype(np.int64),
        "types": features["segment_ids"].astype(np.int64),
        "labels": labels,
        "is_random": int(features["next_sentence_labels"][0]),
        "loss_mask": loss_mask,
        "padding_mask": features["input_mask"].astype(np.int64),
        "truncated": 0,
    }
