"""BERT pretraining samples: sentence pairs with sentence-order prediction and masked LM."""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from megatron.core.datasets.utils import PicklesMappedArrays
from megatron.core.datasets.masking import (
    create_masked_lm_predictions,
    create_tokens_and_tokentypes,
    get_a_and_b_segments,
    get_samples_mapping,
    pad_and_convert_to_numpy,
    truncate_segments,
    vocab_lists,
)


def document_bounds(indexed_dataset, document_range: Optional[Tuple[int, int]]) -> np.ndarray:
    """The slice of the document index (sentence boundaries) for documents [start, end)."""
    doc_idx = np.asarray(indexed_dataset.doc_idx)
    num_docs = len(doc_idx) - 1
    start, end = document_range if document_range is not None else (0, num_docs)
    if not 0 <= start <= end <= num_docs:
        raise ValueError(f"document range {start}:{end} is outside the {num_docs} documents")
    return np.ascontiguousarray(doc_idx[start:end + 1], dtype=np.int64)


def build_bert_sample(sample, target_seq_length, max_seq_length, vocab_id_list,
                      vocab_id_to_token_dict, cls_id, sep_id, mask_id, pad_id, masked_lm_prob,
                      rng, binary_head, max_ngrams=3, do_whole_word_mask=True,
                      favor_longer_ngram=False):
    """One BERT training sample from a list of sentences (numpy token arrays)."""
    if target_seq_length > max_seq_length:
        raise ValueError(f"target length {target_seq_length} exceeds seq_length {max_seq_length}")
    if binary_head:
        tokens_a, tokens_b, is_random = get_a_and_b_segments(sample, rng)
    else:
        tokens_a = [int(t) for sentence in sample for t in sentence]
        tokens_b, is_random = [], False
    max_num_tokens = target_seq_length
    truncated = truncate_segments(tokens_a, tokens_b, max_num_tokens, rng)
    tokens, tokentypes = create_tokens_and_tokentypes(tokens_a, tokens_b, cls_id, sep_id)
    max_predictions_per_seq = masked_lm_prob * max_num_tokens
    tokens, positions, labels, _, _ = create_masked_lm_predictions(
        tokens, vocab_id_list, vocab_id_to_token_dict, masked_lm_prob, cls_id, sep_id, mask_id,
        max_predictions_per_seq, rng, max_ngrams=max_ngrams, do_whole_word_mask=do_whole_word_mask,
        favor_longer_ngram=favor_longer_ngram)
    text, types, labels_np, padding_mask, loss_mask = pad_and_convert_to_numpy(
        tokens, tokentypes, positions, labels, pad_id, max_seq_length)
    return {
        "text": text,
        "types": types,
        "labels": labels_np,
        "is_random": int(is_random),
        "loss_mask": loss_mask,
        "padding_mask": padding_mask,
        "truncated": int(truncated),
    }


class BertDataset(PicklesMappedArrays, torch.utils.data.Dataset):
    """BERT samples over the documents ``document_range`` of a sentence-level dataset.

    Sample ``i`` depends only on ``seed`` and ``i`` (its RNG is RandomState(seed + i)), so
    any worker or process produces the same sample. ``tokenizer`` supplies ``inv_vocab``,
    ``cls``, ``sep``, ``mask`` and ``pad``.
    """

    def __init__(self, name: str, indexed_dataset, data_prefix: str, num_epochs: Optional[int],
                 max_num_samples: Optional[int], masked_lm_prob: float, max_seq_length: int,
                 short_seq_prob: float, seed: int, binary_head: bool, tokenizer, *,
                 document_range: Optional[Tuple[int, int]] = None, max_ngrams: int = 3,
                 do_whole_word_mask: bool = True, favor_longer_ngram: bool = False,
                 cache_dir: Optional[str] = None, barrier_groups: Optional[Sequence] = None):
        if not 0.0 <= masked_lm_prob <= 1.0:
            raise ValueError(f"--mask-prob must be in [0, 1], got {masked_lm_prob}")
        if max_seq_length < 5:
            raise ValueError(f"--seq-length {max_seq_length} leaves no room for [CLS] A [SEP] B [SEP]")
        self.name = name
        self.seed = seed
        self.masked_lm_prob = masked_lm_prob
        self.max_seq_length = max_seq_length
        self.binary_head = binary_head
        self.max_ngrams = max_ngrams
        self.do_whole_word_mask = do_whole_word_mask
        self.favor_longer_ngram = favor_longer_ngram
        self.indexed_dataset = indexed_dataset
        docs = document_bounds(indexed_dataset, document_range)
        # seq_length - 3 leaves room for [CLS] and the two [SEP].
        self.samples_mapping, mapping_path = get_samples_mapping(
            indexed_dataset, docs, data_prefix, name, num_epochs, max_num_samples,
            max_seq_length - 3, short_seq_prob, seed, 2 if binary_head else 1,
            cache_dir=cache_dir, barrier_groups=barrier_groups)
        self._mapped_arrays = {"samples_mapping": mapping_path}
        self.vocab_id_list, self.vocab_id_to_token_dict = vocab_lists(tokenizer)
        self.cls_id = tokenizer.cls
        self.sep_id = tokenizer.sep
        self.mask_id = tokenizer.mask
        self.pad_id = tokenizer.pad

    def __len__(self):
        return self.samples_mapping.shape[0]

    def __getitem__(self, idx):
        start, end, target_seq_length = (int(x) for x in self.samples_mapping[idx])
        sample = self.indexed_dataset[start:end]
        # Python's randint is inclusive and NumPy's exclusive: Megatron uses NumPy here.
        rng = np.random.RandomState(seed=(self.seed + idx) % 2**32)
        return build_bert_sample(
            sample, target_seq_length, self.max_seq_length, self.vocab_id_list,
            self.vocab_id_to_token_dict, self.cls_id, self.sep_id, self.mask_id, self.pad_id,
            self.masked_lm_prob, rng, self.binary_head, max_ngrams=self.max_ngrams,
            do_whole_word_mask=self.do_whole_word_mask, favor_longer_ngram=self.favor_longer_ngram)
