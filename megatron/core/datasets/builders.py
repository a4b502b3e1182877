"""Train/valid/test datasets from ``--data-path`` (single, weighted blend, or per split)."""
from __future__ import annotations

import dataclasses
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.token_range import check_token_ids
from megatron.core.datasets.utils import log_rank_0
from megatron.core.datasets.splits import (
    DEFAULT_SPLIT,
    SPLIT_NAMES,
    blended_num_samples,
    parse_data_path,
    parse_split,
    split_boundaries,
)

DATASET_TYPES = ("gpt", "bert", "t5", "ict")


@dataclasses.dataclass
class DatasetConfig:
    """What the training layer's data flags say about building datasets."""

    dataset_type: str
    """One of gpt, bert, t5, ict."""
    seq_length: int
    """--seq-length (the encoder length for T5)."""
    seed: int = 1234
    """--seed; also the index-building seed, so it must be > 0 for BERT/T5/ICT."""
    split: str = DEFAULT_SPLIT
    """--split, as weights over documents (sequences for GPT)."""
    masked_lm_prob: float = 0.15
    """--mask-prob."""
    short_seq_prob: float = 0.1
    """--short-seq-prob."""
    binary_head: bool = True
    """False with --bert-no-binary-head."""
    decoder_seq_length: Optional[int] = None
    """--decoder-seq-length (T5)."""
    query_in_block_prob: float = 0.1
    """--query-in-block-prob (ICT)."""
    use_one_sent_docs: bool = False
    """--use-one-sent-docs (ICT)."""
    titles_data_path: Optional[str] = None
    """--titles-data-path (ICT): one title per document of the body dataset."""
    cache_dir: Optional[str] = None
    """Where index caches go; next to the data when None."""
    vocab_size: Optional[int] = None
    """The model's padded vocabulary size: every token id of the data must be below it (checked)."""

    def __post_init__(self):
        if self.dataset_type not in DATASET_TYPES:
            raise ValueError(f"dataset type must be one of {DATASET_TYPES}, got {self.dataset_type!r}")
        if self.seq_length <= 1:
            raise ValueError(f"--seq-length must be > 1, got {self.seq_length}")
        if self.dataset_type != "gpt" and self.seed <= 0:
            raise ValueError(f"--seed must be > 0 for {self.dataset_type} index building, got {self.seed}")
        parse_split(self.split)
        if self.dataset_type == "t5" and not self.decoder_seq_length:
            raise ValueError("T5 needs --decoder-seq-length")
        if self.dataset_type == "ict" and not self.titles_data_path:
            raise ValueError("ICT needs --titles-data-path")


def open_indexed_dataset(prefix: str, config: Optional[DatasetConfig] = None):
    """The indexed dataset at ``prefix``; with ``config.vocab_size``, its token ids checked to fit."""
    from megatron.core.datasets.indexed_dataset import IndexedDataset

    if not IndexedDataset.exists(prefix):
        raise FileNotFoundError(f"--data-path {prefix}: no {prefix}.bin / {prefix}.idx found")
    indexed = IndexedDataset(prefix)
    if config is not None and config.vocab_size is not None:
        check_token_ids(prefix, indexed.dtype, config.vocab_size, config.cache_dir)
    return indexed


def _build_one(config: DatasetConfig, prefix: str, indexed, name: str, bounds: Tuple[int, int],
               num_samples: int, tokenizer, barrier_groups):
    start, end = bounds
    if num_samples == 0:
        return None
    common = dict(cache_dir=config.cache_dir, barrier_groups=barrier_groups)
    if config.dataset_type == "gpt":
        from megatron.core.datasets.gpt_dataset import GPTDataset

        documents = np.arange(start, end, dtype=np.int32)
        return GPTDataset(name, prefix, documents, indexed, num_samples, config.seq_length,
                          config.seed, **common)
    if config.dataset_type == "bert":
        from megatron.core.datasets.bert_dataset import BertDataset

        return BertDataset(name, indexed, prefix, None, num_samples, config.masked_lm_prob,
                           config.seq_length, config.short_seq_prob, config.seed,
                           config.binary_head, tokenizer, document_range=bounds, **common)
    if config.dataset_type == "t5":
        from megatron.core.datasets.t5_dataset import T5Dataset

        return T5Dataset(name, indexed, prefix, None, num_samples, config.masked_lm_prob,
                         config.seq_length, config.decoder_seq_length, config.short_seq_prob,
                         config.seed, tokenizer, document_range=bounds, **common)
    from megatron.core.datasets.ict_dataset import ICTDataset

    titles = open_indexed_dataset(config.titles_data_path, config)
    return ICTDataset(name, indexed, titles, prefix, None, num_samples, config.seq_length,
                      config.query_in_block_prob, config.seed, tokenizer,
                      use_one_sent_docs=config.use_one_sent_docs, document_range=bounds, **common)


def _num_units(config: DatasetConfig, indexed) -> int:
    # GPT splits sequences (each is a document for GPT); the others split documents.
    if config.dataset_type == "gpt":
        return len(indexed.sizes)
    return len(indexed.doc_idx) - 1


def _split_bounds(config, prefix, split):
    indexed = open_indexed_dataset(prefix, config)
    return indexed, split_boundaries(split, _num_units(config, indexed))


def _empty_splits(prefix, split, bounds, nums, names, in_blend=False):
    """Indices of the held-out splits that are asked for samples but hold no document (each
    announced once); an empty training split is an error.

    Megatron-LM skips the evaluation of an empty held-out split (``--split 969,30,1`` leaves no
    test document in a corpus of a few hundred), so a run does that too: only the training
    split, which nothing could replace, must hold documents."""
    empty = set()
    for i in range(3):
        if not nums[i] or bounds[i + 1] > bounds[i]:
            continue
        if names[i] == "train":
            raise ValueError(f"{prefix}: the train split of --split {split} is empty ({bounds[-1]} documents) "
                             f"but {nums[i]} training samples are needed")
        outcome = (f"the {names[i]} blend leaves this dataset out" if in_blend
                   else f"{names[i]} evaluation is skipped")
        log_rank_0(f"WARNING: {prefix}: the {names[i]} split of --split {split} is empty (0 of {bounds[-1]} "
                   f"documents): {outcome}")
        empty.add(i)
    return empty


def _split_datasets(config, prefix, split, nums, names, tokenizer, barrier_groups):
    """The three splits of one dataset; an empty validation or test split is None (with a warning)."""
    indexed, bounds = _split_bounds(config, prefix, split)
    # Checked for every split before any index is built, so a bad --split fails fast.
    empty = _empty_splits(prefix, split, bounds, nums, names)
    return [_build_one(config, prefix, indexed, names[i], (bounds[i], bounds[i + 1]),
                       0 if i in empty else nums[i], tokenizer, barrier_groups) for i in range(3)]


def _dataset_tokens(prefix: str) -> int:
    return int(np.sum(open_indexed_dataset(prefix).sizes, dtype=np.int64))


def _blend(config, data_path, split, nums, names, tokenizer, barrier_groups):
    prefixes, weights = parse_data_path(data_path)
    if len(prefixes) == 1:
        return _split_datasets(config, prefixes[0], split, nums, names, tokenizer, barrier_groups)
    if config.dataset_type == "ict":
        raise ValueError("ICT takes a single --data-path prefix (its titles come from --titles-data-path)")
    if weights is None:
        # A bare prefix list weights each dataset by its number of tokens.
        tokens = np.array([_dataset_tokens(p) for p in prefixes], dtype=np.float64)
        weights = list(tokens / tokens.sum())
    opened = [_split_bounds(config, prefix, split) for prefix in prefixes]
    empty = [_empty_splits(prefix, split, bounds, nums, names, in_blend=True)
             for prefix, (_, bounds) in zip(prefixes, opened)]
    blends = []
    for s in range(3):
        # A dataset whose held-out split is empty gives the blend nothing: the others share its weight.
        share = [0.0 if s in empty[d] else w for d, w in enumerate(weights)]
        if nums[s] == 0 or sum(share) == 0:
            if nums[s]:
                log_rank_0(f"WARNING: no dataset of the blend has a {names[s]} split (--split {split}): "
                           f"{names[s]} evaluation is skipped")
            blends.append(None)
            continue
        if share != list(weights):
            share = [w / sum(share) for w in share]
        kept = []
        for d, (prefix, (indexed, bounds)) in enumerate(zip(prefixes, opened)):
            count = blended_num_samples(nums[s], share)[d]
            if share[d] > 0 and count > 0:
                kept.append((_build_one(config, prefix, indexed, names[s], (bounds[s], bounds[s + 1]), count,
                                        tokenizer, barrier_groups), share[d], prefix))
        blends.append(BlendedDataset(
            [k[0] for k in kept], [k[1] for k in kept], nums[s], name=names[s],
            descriptions=[f"{config.dataset_type}:{k[2]}:{names[s]}:{len(k[0])}" for k in kept],
            cache_dir=config.cache_dir or _common_dir(prefixes), barrier_groups=barrier_groups))
    return blends


def _common_dir(prefixes: Sequence[str]) -> str:
    return os.path.dirname(os.path.abspath(prefixes[0]))


def build_train_valid_test_datasets(config: DatasetConfig,
                                    train_valid_test_num_samples: Sequence[int],
                                    tokenizer=None, data_path: Optional[Sequence[str]] = None,
                                    train_data_path: Optional[Sequence[str]] = None,
                                    valid_data_path: Optional[Sequence[str]] = None,
                                    test_data_path: Optional[Sequence[str]] = None,
                                    barrier_groups: Optional[Sequence] = None) -> List:
    """[train, valid, test]; a split asked for 0 samples is None.

    Either ``data_path`` (carved by ``config.split``) or per-split paths, each used whole.
    Every path list is ``prefix``, ``w1 p1 w2 p2 ...`` or a bare prefix list.
    """
    nums = [int(n) for n in train_valid_test_num_samples]
    if len(nums) != 3 or min(nums) < 0:
        raise ValueError(f"need three non-negative sample counts, got {train_valid_test_num_samples}")
    if config.dataset_type in ("bert", "t5", "ict") and tokenizer is None:
        raise ValueError(f"{config.dataset_type} datasets need a tokenizer")
    per_split = (train_data_path, valid_data_path, test_data_path)
    if data_path:
        if any(per_split):
            raise ValueError("give either --data-path or --train/valid/test-data-path, not both")
        return _blend(config, data_path, config.split, nums, SPLIT_NAMES, tokenizer, barrier_groups)
    if not any(per_split):
        raise ValueError("no data: give --data-path or --train-data-path/--valid-data-path/--test-data-path")
    result = []
    for s, path in enumerate(per_split):
        if nums[s] and not path:
            raise ValueError(f"{nums[s]} {SPLIT_NAMES[s]} samples are needed but --{SPLIT_NAMES[s]}-data-path is missing")
        if not path or nums[s] == 0:
            result.append(None)
            continue
        only = [0, 0, 0]
        only[0] = nums[s]
        names = (SPLIT_NAMES[s],) * 3
        result.append(_blend(config, path, "1,0,0", only, names, tokenizer, barrier_groups)[0])
    return result
