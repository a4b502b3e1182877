"""RETRO training samples: GPT-style windows over a retmmap dataset, plus each chunk's neighbours.

The sample order is ``GPTDataset``'s (same ``doc_idx`` / ``sample_idx`` / ``shuffle_idx`` and
seed semantics) over the *padded* documents of the retmmap training data: every document is
padded to a multiple of the chunk size and ``seq_length`` is a multiple of it, so every sample
starts at a chunk boundary and each of its ``seq_length / m`` chunks is one chunk of the training
data, whose id the KNN map is indexed by. Each neighbour is ``2m`` tokens of the retrieval
database (the chunk and its continuation); a missing neighbour (-1 in the map) is all padding.

A sample is ``{"text": [seq_length + 1], "retrieved_ids": [seq_length / m, k, 2m]}`` (int64).
"""
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.knn_map import KNNMap
from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset
from megatron.core.datasets.splits import split_boundaries


class RetroDatasetError(ValueError):
    """Inconsistent RETRO inputs; the message names the file and the numbers."""


def check_retro_inputs(train: RetrievalIndexedDataset, db: RetrievalIndexedDataset, knn: KNNMap,
                       seq_length: int, chunk_size: int, num_neighbors: int, pad_id: int,
                       names: Tuple[str, str, str]) -> None:
    """Every consistency check between the three files and the flags, before any sample is built."""
    train_path, db_path, knn_path = names
    if train.chunk_size != chunk_size:
        raise RetroDatasetError(f"{train_path}: chunk size {train.chunk_size} differs from --retro-chunk-size {chunk_size}")
    if train.retrieval_db:
        raise RetroDatasetError(f"{train_path}: is a retrieval database (chunks with continuations), not training data")
    if train.stride != chunk_size:
        raise RetroDatasetError(f"{train_path}: stride {train.stride} must equal the chunk size {chunk_size} for "
                                "training data (each sample chunk is one data chunk)")
    if not db.retrieval_db:
        raise RetroDatasetError(f"{db_path}: is not a retrieval database (built without --retrieval-db)")
    if db.chunk_size != chunk_size:
        raise RetroDatasetError(f"{db_path}: chunk size {db.chunk_size} differs from --retro-chunk-size {chunk_size}")
    if seq_length % chunk_size != 0:
        raise RetroDatasetError(f"--seq-length {seq_length} is not a multiple of --retro-chunk-size {chunk_size}")
    if not 1 <= num_neighbors <= knn.K:
        raise RetroDatasetError(f"--retro-num-neighbors {num_neighbors} must lie in [1, K={knn.K}] of {knn_path}")
    if knn.chunk_start_id != 0 or knn.len != train.chunks:
        raise RetroDatasetError(f"{knn_path}: covers chunks [{knn.chunk_start_id}, {knn.chunk_end_id}) but "
                                f"{train_path} has {train.chunks} chunks")
    for what, ds, path in (("training data", train, train_path), ("retrieval DB", db, db_path)):
        if ds.pad_id is not None and len(ds) and int(ds.pad_id) != int(pad_id):
            raise RetroDatasetError(f"{path}: the {what} is padded with id {ds.pad_id} but the tokenizer's pad id is "
                                    f"{pad_id} (preprocess with the same tokenizer and --need-pad-id)")
    if len(knn) and knn.knn_map.max(initial=-1) >= db.chunks:
        raise RetroDatasetError(f"{knn_path}: neighbour ids reach {int(knn.knn_map.max())} but {db_path} has "
                                f"{db.chunks} chunks")


class RETRODataset:
    """GPT sample order over a retmmap split, with the KNN neighbours of each chunk."""

    def __init__(self, name: str, data_prefix: str, documents: np.ndarray, train: RetrievalIndexedDataset,
                 db: RetrievalIndexedDataset, knn: KNNMap, num_samples: int, seq_length: int, seed: int,
                 num_neighbors: int, pad_id: int, cache_dir: Optional[str] = None,
                 barrier_groups: Optional[Sequence] = None):
        self.name = name
        self.train, self.db, self.knn = train, db, knn
        self.seq_length = seq_length
        self.chunk_size = train.chunk_size
        self.num_neighbors = num_neighbors
        self.pad_id = int(pad_id)
        self.gpt = GPTDataset(name, data_prefix, documents, train, num_samples, seq_length, seed,
                              cache_dir=cache_dir, barrier_groups=barrier_groups)

    def __len__(self):
        return len(self.gpt)

    def __getstate__(self):
        # DataLoader workers started by spawn get the map's path, not a copy of its rows.
        state = dict(self.__dict__)
        state["knn"] = self.knn.path
        return state

    def __setstate__(self, state):
        state["knn"] = KNNMap(state["knn"])
        self.__dict__.update(state)

    def chunk_ids(self, idx: int) -> np.ndarray:
        """Training-data chunk ids of sample ``idx``'s ``seq_length / m`` chunks."""
        gpt, m = self.gpt, self.chunk_size
        sample = int(gpt.shuffle_idx[idx])
        doc_pos, offset = (int(v) for v in gpt.sample_idx[sample])
        ids = []
        sizes = self.train.sizes
        while len(ids) < self.seq_length // m:
            doc = int(gpt.doc_idx[doc_pos])
            if offset >= int(sizes[doc]):
                doc_pos, offset = doc_pos + 1, 0
                continue
            ids.append(self.train.get_chunk_id(doc, offset))
            offset += m
        return np.asarray(ids, dtype=np.int64)

    def neighbours(self, chunk_ids: np.ndarray) -> np.ndarray:
        """``[len(chunk_ids), k, 2m]`` neighbour tokens; -1 neighbours are all padding."""
        ids = np.asarray(self.knn.get_KNN_chunk_ids(chunk_ids))[:, :self.num_neighbors]  # [l, k]
        out = np.full(ids.shape + (2 * self.chunk_size,), self.pad_id, dtype=np.int64)
        found = ids >= 0
        if found.any():
            out[found] = self.db.get_chunks(ids[found]).astype(np.int64)
        return out

    def __getitem__(self, idx):
        text = self.gpt[idx]["text"]
        return {"text": text, "retrieved_ids": self.neighbours(self.chunk_ids(idx))}


def build_retro_datasets(data_prefix: str, db_prefix: str, knn_path: str, split: str,
                         num_samples: Sequence[int], seq_length: int, seed: int, chunk_size: int,
                         num_neighbors: int, pad_id: int, cache_dir: Optional[str] = None,
                         barrier_groups: Optional[Sequence] = None) -> List[Optional[RETRODataset]]:
    """Train/valid/test ``RETRODataset``s over ``--split`` of the training data's documents (None
    for a split with no samples asked for)."""
    train = RetrievalIndexedDataset(data_prefix)
    db = RetrievalIndexedDataset(db_prefix)
    knn = KNNMap(knn_path)
    check_retro_inputs(train, db, knn, seq_length, chunk_size, num_neighbors, pad_id,
                       (data_prefix, db_prefix, knn_path))
    bounds = split_boundaries(split, len(train))
    datasets = []
    for i, name in enumerate(("train", "valid", "test")):
        documents = np.arange(bounds[i], bounds[i + 1], dtype=np.int32)
        if num_samples[i] <= 0 or len(documents) == 0:
            if num_samples[i] > 0 and name == "train":
                raise RetroDatasetError(f"{data_prefix}: --split {split} leaves the {name} split no documents "
                                        f"but {num_samples[i]} samples were asked for")
            datasets.append(None)
            continue
        datasets.append(RETRODataset(name, data_prefix, documents, train, db, knn, num_samples[i], seq_length, seed,
                                     num_neighbors, pad_id, cache_dir=cache_dir, barrier_groups=barrier_groups))
    return datasets
