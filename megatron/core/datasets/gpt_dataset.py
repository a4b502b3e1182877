"""GPT pretraining samples: fixed-length windows over documents laid end to end.

Three index arrays, built as Megatron-LM builds them so the same seed gives the same
samples: ``doc_idx`` (document order over the epochs, shuffled), ``sample_idx`` (where
each sample starts in that order, from the C++ helper) and ``shuffle_idx`` (sample order).
"""
from __future__ import annotations

import os
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from megatron.core.datasets import helpers
from megatron.core.datasets.utils import PicklesMappedArrays, load_or_build_cache

# A last epoch that yields fewer samples than this share of a full epoch is shuffled on
# its own, so its few samples are not spread thinly over the whole run.
LAST_EPOCH_SHARE = 0.80


def num_epochs_needed(tokens_per_epoch: int, seq_length: int, num_samples: int) -> int:
    """Smallest E with ``(E * tokens_per_epoch - 1) // seq_length >= num_samples``.

    The -1: each sample reads seq_length + 1 tokens but shares its last with the next.
    """
    if tokens_per_epoch <= 1:
        raise ValueError(
            f"a GPT split needs more than one token to build samples, got {tokens_per_epoch} "
            f"tokens while {num_samples} samples were asked for"
        )
    epochs = max(1, -(-(num_samples * seq_length + 1) // tokens_per_epoch))
    while (epochs * tokens_per_epoch - 1) // seq_length < num_samples:
        epochs += 1
    while epochs > 1 and ((epochs - 1) * tokens_per_epoch - 1) // seq_length >= num_samples:
        epochs -= 1
    return epochs


def _separate_last_epoch(num_epochs, tokens_per_epoch, seq_length, num_samples):
    if num_epochs == 1:
        return False, None
    samples_before_last = ((num_epochs - 1) * tokens_per_epoch - 1) // seq_length
    last_epoch_samples = num_samples - samples_before_last
    samples_per_epoch = (tokens_per_epoch - 1) // seq_length
    return last_epoch_samples < int(LAST_EPOCH_SHARE * samples_per_epoch), samples_before_last


def _build_doc_idx(documents, num_epochs, rng, separate_last_epoch):
    if not separate_last_epoch or num_epochs == 1:
        doc_idx = np.tile(np.asarray(documents, dtype=np.int32), num_epochs)
        rng.shuffle(doc_idx)
        return doc_idx
    first = _build_doc_idx(documents, num_epochs - 1, rng, False)
    last = _build_doc_idx(documents, 1, rng, False)
    return np.concatenate((first, last))


def shuffle_idx_dtype(total_samples: int):
    return np.int64 if total_samples >= np.iinfo(np.uint32).max - 1 else np.uint32


def _build_shuffle_idx(num_samples, total_samples, rng):
    dtype = shuffle_idx_dtype(total_samples)
    first = np.arange(num_samples, dtype=dtype)
    rng.shuffle(first)
    if num_samples == total_samples:
        return first
    last = np.arange(num_samples, total_samples, dtype=dtype)
    rng.shuffle(last)
    return np.concatenate((first, last))


def build_gpt_index(documents: np.ndarray, sizes: np.ndarray, num_samples: int, seq_length: int,
                    seed: int) -> Dict[str, np.ndarray]:
    """The three index arrays, in memory (no cache). One RandomState(seed) stream drives
    the document shuffle and then the sample shuffle, in that order."""
    documents = np.asarray(documents)
    sizes = np.asarray(sizes, dtype=np.int32)
    tokens_per_epoch = int(np.sum(sizes[documents], dtype=np.int64))
    num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
    separate, samples_before_last = _separate_last_epoch(
        num_epochs, tokens_per_epoch, seq_length, num_samples)
    rng = np.random.RandomState(seed=seed)
    doc_idx = _build_doc_idx(documents, num_epochs, rng, separate)
    sample_idx = helpers.build_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch)
    total = sample_idx.shape[0] - 1
    shuffle_idx = _build_shuffle_idx(samples_before_last if separate else total, total, rng)
    return {"doc_idx": doc_idx, "sample_idx": sample_idx, "shuffle_idx": shuffle_idx}


def gpt_index_paths(data_prefix: str, name: str, num_samples: int, seq_length: int, seed: int,
                    cache_dir: Optional[str] = None) -> Dict[str, str]:
    """Megatron's cache names: ``{prefix}_{name}_indexmap_{n}ns_{sl}sl_{seed}s_{kind}.npy``."""
    base = data_prefix
    if cache_dir is not None:
        base = os.path.join(cache_dir, os.path.basename(data_prefix))
    stem = f"{base}_{name}_indexmap_{num_samples}ns_{seq_length}sl_{seed}s"
    return {kind: f"{stem}_{kind}.npy" for kind in ("doc_idx", "sample_idx", "shuffle_idx")}


class GPTDataset(PicklesMappedArrays, torch.utils.data.Dataset):
    """``dataset[i] -> {"text": int64 array of seq_length + 1 tokens}``.

    ``documents`` are the indices of the sequences of ``indexed_dataset`` that form this
    split (each sequence is a document for GPT). ``len`` can exceed ``num_samples``: the
    last epoch is used whole.
    """

    def __init__(self, name: str, data_prefix: str, documents: np.ndarray, indexed_dataset,
                 num_samples: int, seq_length: int, seed: int, *,
                 cache_dir: Optional[str] = None, barrier_groups: Optional[Sequence] = None):
        documents = np.asarray(documents)
        if len(documents) == 0 and num_samples > 0:
            raise ValueError(f"{data_prefix}: the {name} split has no documents but {num_samples} samples were asked for")
        if seq_length <= 1:
            raise ValueError(f"seq_length must be > 1, got {seq_length}")
        if len(documents) and (documents.min() < 0 or documents.max() >= len(indexed_dataset)):
            raise ValueError(f"{data_prefix}: {name} documents fall outside the {len(indexed_dataset)} sequences")
        self.name = name
        self.indexed_dataset = indexed_dataset
        self.seq_length = seq_length
        sizes = indexed_dataset.sizes
        tokens_per_epoch = int(np.sum(sizes[documents], dtype=np.int64))
        num_epochs = num_epochs_needed(tokens_per_epoch, seq_length, num_samples)
        total = (num_epochs * tokens_per_epoch - 1) // seq_length
        doc_len = num_epochs * len(documents)
        sample_dtype = np.int32 if doc_len < np.iinfo(np.int32).max and (
            len(sizes) == 0 or int(sizes.max()) < np.iinfo(np.int32).max) else np.int64
        spec = {
            "doc_idx": ((doc_len,), np.int32),
            "sample_idx": ((total + 1, 2), sample_dtype),
            "shuffle_idx": ((total,), shuffle_idx_dtype(total)),
        }

        def in_bounds(arrays):
            # A cache built from other data can have the right shapes: spot-check values.
            last = arrays["sample_idx"][-1]
            return 0 <= int(last[0]) < doc_len and int(arrays["doc_idx"].max(initial=0)) < len(sizes)

        paths = gpt_index_paths(data_prefix, name, num_samples, seq_length, seed, cache_dir)
        arrays = load_or_build_cache(
            paths, spec, lambda: build_gpt_index(documents, sizes, num_samples, seq_length, seed),
            validate=in_bounds, barrier_groups=barrier_groups,
            description=f"GPT {name} index for {data_prefix}")
        self._data_prefix = data_prefix
        self._mapped_arrays = dict(paths)
        self.doc_idx = arrays["doc_idx"]
        self.sample_idx = arrays["sample_idx"]
        self.shuffle_idx = arrays["shuffle_idx"]
        self._tokens, self._starts = _flat_token_view(self.indexed_dataset, data_prefix)

    def __getstate__(self):
        state = super().__getstate__()
        state.pop("_tokens", None)  # a view of the whole .bin: re-mapped on arrival
        state.pop("_starts", None)
        return state

    def __setstate__(self, state):
        super().__setstate__(state)
        self._tokens, self._starts = _flat_token_view(self.indexed_dataset, self._data_prefix)

    def __len__(self):
        return self.sample_idx.shape[0] - 1

    def __getitem__(self, idx):
        # Kept lean: this runs once per sample in every data-loader worker.
        idx = int(self.shuffle_idx[idx])
        (doc_f, offset_f), (doc_l, offset_l) = self.sample_idx[idx:idx + 2].tolist()
        docs = self.doc_idx[doc_f:doc_l + 1].tolist()
        if self._tokens is None:
            return {"text": self._read_with_get(docs, offset_f, offset_l)}
        tokens, starts = self._tokens, self._starts
        if len(docs) == 1:
            first = int(starts[docs[0]]) + offset_f
            return {"text": tokens[first:first + offset_l - offset_f + 1].astype(np.int64)}
        out = np.empty(self.seq_length + 1, dtype=np.int64)
        piece = tokens[int(starts[docs[0]]) + offset_f:int(starts[docs[0] + 1])]
        pos = len(piece)
        out[:pos] = piece
        for doc in docs[1:-1]:
            piece = tokens[int(starts[doc]):int(starts[doc + 1])]
            out[pos:pos + len(piece)] = piece
            pos += len(piece)
        first = int(starts[docs[-1]])
        out[pos:] = tokens[first:first + offset_l + 1]
        return {"text": out}

    def _read_with_get(self, docs, offset_f, offset_l):
        get = self.indexed_dataset.get
        if len(docs) == 1:
            return get(docs[0], offset=offset_f, length=offset_l - offset_f + 1).astype(np.int64)
        parts = [get(docs[0], offset=offset_f)]
        parts.extend(get(doc) for doc in docs[1:-1])
        parts.append(get(docs[-1], length=offset_l + 1))
        return np.concatenate(parts).astype(np.int64)


def _flat_token_view(indexed_dataset, data_prefix):
    """(all tokens of the .bin as one read-only array, element offset of each sequence,
    plus a final end offset), or (None, None) to read through ``indexed_dataset.get``.

    Slicing one mapped array is several times cheaper than a ``get`` call per document,
    which matters at tens of thousands of samples per second. Only for memory-mapped
    MMap-format datasets whose .bin has exactly the bytes the index describes.
    """
    from megatron.core.datasets.indexed_dataset import IndexedDataset, get_bin_path

    if type(indexed_dataset) is not IndexedDataset or not indexed_dataset.mmap:
        return None, None
    path = get_bin_path(data_prefix)
    dtype = np.dtype(indexed_dataset.dtype)
    sizes, pointers = indexed_dataset.sizes, indexed_dataset.pointers
    if len(sizes) == 0 or not os.path.isfile(path):
        return None, None
    # Sequences must lie back to back, so that a document ends where the next begins.
    starts = np.zeros(len(sizes) + 1, dtype=np.int64)
    np.cumsum(sizes, out=starts[1:])
    total = int(starts[-1])
    if os.path.getsize(path) != total * dtype.itemsize or \
            not np.array_equal(starts[:-1] * dtype.itemsize, pointers):
        return None, None
    tokens = np.memmap(path, dtype=dtype, mode="r", shape=(total,)).view(np.ndarray)
    return tokens, starts
