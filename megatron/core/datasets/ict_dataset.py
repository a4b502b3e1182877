"""Inverse Cloze Task samples (ORQA/REALM retriever pretraining).

Evidence blocks are runs of sentences from one document, sized by the C++
``build_blocks_mapping`` so that ``[CLS] title [SEP] block [SEP]`` fits the sequence.
A random sentence of a block is the pseudo-query; it is removed from the block unless a
coin with probability ``query_in_block_prob`` says to keep it.
"""
from __future__ import annotations

import itertools
import os
import random
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from megatron.core.datasets import helpers
from megatron.core.datasets.bert_dataset import document_bounds
from megatron.core.datasets.masking import mapping_spec, resolve_limits, NO_EPOCH_LIMIT, NO_SAMPLE_LIMIT
from megatron.core.datasets.t5_dataset import make_attention_mask
from megatron.core.datasets.utils import PicklesMappedArrays, load_or_build_cache


def blocks_mapping_path(data_prefix: str, name: str, num_epochs: int, max_num_samples: int,
                        max_seq_length: int, seed: int, use_one_sent_docs: bool,
                        cache_dir: Optional[str] = None) -> str:
    """``{prefix}_{name}_indexmap[_{E}ep][_{N}mns]_{msl}msl_{seed}s[_1sentok].npy``."""
    base = os.path.join(cache_dir, os.path.basename(data_prefix)) if cache_dir else data_prefix
    name = f"{base}_{name}_indexmap"
    if num_epochs != NO_EPOCH_LIMIT:
        name += f"_{num_epochs}ep"
    if max_num_samples != NO_SAMPLE_LIMIT:
        name += f"_{max_num_samples}mns"
    name += f"_{max_seq_length}msl_{seed}s"
    if use_one_sent_docs:
        name += "_1sentok"
    return name + ".npy"


def title_bounds(title_dataset, num_docs: int) -> np.ndarray:
    """Item range of each document's title: the titles dataset's own document index
    (titles preprocessed with --split-sentences may span several items), or one item per
    document."""
    doc_idx = np.asarray(title_dataset.doc_idx, dtype=np.int64)
    if len(doc_idx) - 1 == num_docs:
        return doc_idx
    if len(title_dataset) == num_docs:
        return np.arange(num_docs + 1, dtype=np.int64)
    raise ValueError(f"the titles dataset has {len(doc_idx) - 1} documents and {len(title_dataset)} "
                     f"items, but the body dataset has {num_docs} documents: need one title per document")


def get_block_samples_mapping(block_dataset, title_dataset, data_prefix: str, name: str,
                              num_epochs: Optional[int], max_num_samples: Optional[int],
                              max_seq_length: int, seed: int, use_one_sent_docs: bool,
                              document_range: Optional[Tuple[int, int]] = None,
                              cache_dir: Optional[str] = None, barrier_groups=None) -> Tuple[np.ndarray, str]:
    """Cached ``[n, 4]`` rows (start sentence, end sentence, document, block id), and the path.

    The document column is absolute (the split's first document added), so it indexes
    ``title_dataset`` directly in every split.
    """
    num_epochs, max_num_samples = resolve_limits(num_epochs, max_num_samples)
    docs = document_bounds(block_dataset, document_range)
    first_doc = document_range[0] if document_range is not None else 0
    num_docs = len(docs) - 1
    if num_docs == 0:
        raise ValueError(f"{data_prefix}: the {name} split has no documents to build blocks from")
    bounds = title_bounds(title_dataset, len(np.asarray(block_dataset.doc_idx)) - 1)
    title_lengths = np.concatenate([[0], np.cumsum(title_dataset.sizes, dtype=np.int64)])
    titles_sizes = (title_lengths[bounds[1:]] - title_lengths[bounds[:-1]])[first_doc:first_doc + num_docs]
    titles_sizes = titles_sizes.astype(np.int32)
    # Megatron names the file after the full sequence length but builds blocks for
    # seq_length - 3, leaving room for [CLS] title [SEP] block [SEP].
    path = blocks_mapping_path(data_prefix, name, num_epochs, max_num_samples, max_seq_length,
                               seed, use_one_sent_docs, cache_dir)

    def build():
        mapping = helpers.build_blocks_mapping(
            docs, block_dataset.sizes, titles_sizes, num_epochs, max_num_samples,
            max_seq_length - 3, seed, False, use_one_sent_docs)
        mapping[:, 2] += mapping.dtype.type(first_doc)
        return {"mapping": mapping}

    def in_bounds(arrays):
        mapping = arrays["mapping"]
        return len(mapping) > 0 and int(mapping[:, 2].max()) < first_doc + num_docs \
            and int(mapping[:, 2].min()) >= first_doc and int(mapping[:, 1].max()) <= int(docs[-1])

    arrays = load_or_build_cache({"mapping": path}, {"mapping": mapping_spec(len(block_dataset.sizes), 4)},
                                 build, validate=in_bounds, barrier_groups=barrier_groups,
                                 description=f"{name} ICT blocks mapping for {data_prefix}")
    return arrays["mapping"], path


class ICTDataset(PicklesMappedArrays, torch.utils.data.Dataset):
    """Query/context pairs for the inverse cloze task.

    Unlike Megatron, which draws from one ``random.Random(seed)`` shared by all calls
    (so a sample depended on which samples a worker had served before), sample ``i``
    draws from ``random.Random(seed + i)``: the same index gives the same sample in any
    worker, process or order.
    """

    def __init__(self, name: str, block_dataset, title_dataset, data_prefix: str,
                 num_epochs: Optional[int], max_num_samples: Optional[int], max_seq_length: int,
                 query_in_block_prob: float, seed: int, tokenizer, *, use_titles: bool = True,
                 use_one_sent_docs: bool = False, document_range: Optional[Tuple[int, int]] = None,
                 cache_dir: Optional[str] = None, barrier_groups: Optional[Sequence] = None):
        if not 0.0 <= query_in_block_prob <= 1.0:
            raise ValueError(f"--query-in-block-prob must be in [0, 1], got {query_in_block_prob}")
        self.name = name
        self.seed = seed
        self.max_seq_length = max_seq_length
        self.query_in_block_prob = query_in_block_prob
        self.block_dataset = block_dataset
        self.title_dataset = title_dataset
        self.use_titles = use_titles
        self.use_one_sent_docs = use_one_sent_docs
        self.samples_mapping, mapping_path = get_block_samples_mapping(
            block_dataset, title_dataset, data_prefix, name, num_epochs, max_num_samples,
            max_seq_length, seed, use_one_sent_docs, document_range, cache_dir, barrier_groups)
        self._mapped_arrays = {"samples_mapping": mapping_path}
        self.title_bounds = title_bounds(title_dataset, len(np.asarray(block_dataset.doc_idx)) - 1)
        self.cls_id = tokenizer.cls
        self.sep_id = tokenizer.sep
        self.mask_id = tokenizer.mask
        self.pad_id = tokenizer.pad

    def __len__(self):
        return len(self.samples_mapping)

    def _title(self, doc):
        first, last = int(self.title_bounds[doc]), int(self.title_bounds[doc + 1])
        title = [int(t) for item in self.title_dataset[first:last] for t in item]
        # A title longer than the sequence would leave no room for the block; keep at
        # least one token of body.
        return title[:max(0, self.max_seq_length - 4)]

    def __getitem__(self, idx):
        block_data = np.asarray(self.samples_mapping[idx], dtype=np.int64)
        start, end, doc, _ = (int(x) for x in block_data)
        if self.use_titles:
            title = self._title(doc)
            title_pad_offset = 3 + len(title)
        else:
            title, title_pad_offset = None, 2
        block = [list(s) for s in self.block_dataset[start:end]]
        if len(block) < 2 and not self.use_one_sent_docs and self.query_in_block_prob != 1:
            raise ValueError(f"block {idx} has one sentence; one-sentence blocks need --use-one-sent-docs")
        rng = random.Random(self.seed + idx)
        query_index = rng.randint(0, len(block) - 1)  # Python's randint is inclusive
        if rng.random() < self.query_in_block_prob:
            query = list(block[query_index])
        else:
            query = block.pop(query_index)
        # Blocks close after passing the target length, so both sides may still be long.
        query = query[:self.max_seq_length - 2]
        body = list(itertools.chain(*block))[:self.max_seq_length - title_pad_offset]
        query_tokens, query_pad_mask = self.concat_and_pad_tokens(query)
        context_tokens, context_pad_mask = self.concat_and_pad_tokens(body, title)
        return {
            "query_tokens": query_tokens,
            "query_mask": make_attention_mask(query_tokens, query_tokens, self.pad_id),
            "query_pad_mask": query_pad_mask,
            "context_tokens": context_tokens,
            "context_mask": make_attention_mask(context_tokens, context_tokens, self.pad_id),
            "context_pad_mask": context_pad_mask,
            "block_data": block_data,
        }

    def get_block(self, start_idx: int, end_idx: int, doc_idx: int):
        """(tokens, pad mask) of an evidence block with its title, for indexing."""
        title = self._title(doc_idx)
        body = list(itertools.chain(*self.block_dataset[start_idx:end_idx]))
        body = body[:self.max_seq_length - (3 + len(title))]
        return self.concat_and_pad_tokens(body, title)

    def get_null_block(self):
        """The empty block (no title, no body) REALM uses as its null document."""
        return self.concat_and_pad_tokens([], [])

    def concat_and_pad_tokens(self, tokens, title=None):
        """``[CLS] tokens [SEP]`` or ``[CLS] title [SEP] tokens [SEP]``, padded; pad mask 1 = real."""
        tokens = [int(t) for t in tokens]
        if title is None:
            tokens = [self.cls_id] + tokens + [self.sep_id]
        else:
            tokens = [self.cls_id] + [int(t) for t in title] + [self.sep_id] + tokens + [self.sep_id]
        if len(tokens) > self.max_seq_length:
            raise ValueError(f"{len(tokens)} tokens do not fit --seq-length {self.max_seq_length}")
        num_pad = self.max_seq_length - len(tokens)
        pad_mask = np.array([1] * len(tokens) + [0] * num_pad, dtype=np.int64)
        return np.array(tokens + [self.pad_id] * num_pad, dtype=np.int64), pad_mask
