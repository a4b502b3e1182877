"""T5 pretraining samples: span corruption with sentinel tokens."""
from __future__ import annotations

import collections
from typing import Optional, Sequence, Tuple

import numpy as np
import torch

from megatron.core.datasets.utils import PicklesMappedArrays
from megatron.core.datasets.bert_dataset import document_bounds
from megatron.core.datasets.masking import (
    create_masked_lm_predictions,
    get_samples_mapping,
    vocab_lists,
)

# SpanBERT-style span lengths, clipped at this many words.
T5_MAX_NGRAMS = 10


def make_attention_mask(source: np.ndarray, target: np.ndarray, pad_id: int = 0) -> np.ndarray:
    """``[len(source), len(target)]`` int64 mask: 1 where neither token is padding."""
    return ((source[:, None] != pad_id) & (target[None, :] != pad_id)).astype(np.int64)


def make_history_mask(block: np.ndarray) -> np.ndarray:
    """Causal ``[n, n]`` int64 mask: position i sees positions <= i."""
    arange = np.arange(block.shape[0])
    return (arange[None, :] <= arange[:, None]).astype(np.int64)


def build_t5_sample(sample, target_seq_length, max_seq_length, max_seq_length_dec,
                    vocab_id_list, vocab_id_to_token_dict, cls_id, sep_id, mask_id, pad_id,
                    masked_lm_prob, rng, bos_id, eos_id, sentinel_tokens):
    """One T5 sample: the sentences flattened, truncated, span-masked and sentinel-coded."""
    if target_seq_length > max_seq_length:
        raise ValueError(f"target length {target_seq_length} exceeds encoder length {max_seq_length}")
    tokens = [int(t) for sentence in sample for t in sentence]
    truncated = len(tokens) > target_seq_length
    tokens = tokens[:target_seq_length]
    max_predictions_per_seq = masked_lm_prob * target_seq_length
    tokens, positions, labels, _, spans = create_masked_lm_predictions(
        tokens, vocab_id_list, vocab_id_to_token_dict, masked_lm_prob, cls_id, sep_id, mask_id,
        max_predictions_per_seq, rng, max_ngrams=T5_MAX_NGRAMS, geometric_dist=True,
        masking_style="t5")
    if len(spans) > len(sentinel_tokens):
        raise ValueError(f"a sample has {len(spans)} masked spans but only {len(sentinel_tokens)} "
                         "sentinel tokens exist: raise --vocab-extra-ids")

    sentinels = collections.deque(sentinel_tokens)
    encoder, decoder_in, decoder_out = [], [bos_id], []
    start = 0
    for span in spans:
        sentinel = sentinels.popleft()
        decoder_in.append(sentinel)
        decoder_in.extend(span.label)
        decoder_out.append(sentinel)
        decoder_out.extend(span.label)
        encoder.extend(tokens[start:span.index[0]])
        encoder.append(sentinel)
        start = span.index[-1] + 1
    decoder_out.append(eos_id)
    encoder.extend(tokens[start:])

    if len(encoder) > max_seq_length or len(decoder_in) > max_seq_length_dec:
        raise ValueError(
            f"T5 sample needs encoder {len(encoder)} / decoder {len(decoder_in)} tokens but "
            f"--encoder-seq-length is {max_seq_length} and --decoder-seq-length {max_seq_length_dec}")
    num_dec = len(decoder_in)
    text_enc = np.array(encoder + [pad_id] * (max_seq_length - len(encoder)), dtype=np.int64)
    text_dec = np.array(decoder_in + [pad_id] * (max_seq_length_dec - num_dec), dtype=np.int64)
    # Masks are built from the pad id, which is what Megatron's "id >= 1" test means for
    # its vocabularies (pad = 0).
    enc_mask = make_attention_mask(text_enc, text_enc, pad_id)
    enc_dec_mask = make_attention_mask(text_dec, text_enc, pad_id)
    dec_mask = make_attention_mask(text_dec, text_dec, pad_id) * make_history_mask(text_dec)
    labels = np.array(decoder_out + [-1] * (max_seq_length_dec - num_dec), dtype=np.int64)
    loss_mask = np.array([1] * num_dec + [0] * (max_seq_length_dec - num_dec), dtype=np.int64)
    return {
        "text_enc": text_enc,
        "text_dec": text_dec,
        "labels": labels,
        "loss_mask": loss_mask,
        "truncated": int(truncated),
        "enc_mask": enc_mask,
        "dec_mask": dec_mask,
        "enc_dec_mask": enc_dec_mask,
    }


class T5Dataset(PicklesMappedArrays, torch.utils.data.Dataset):
    """T5 samples over the documents ``document_range`` of a sentence-level dataset.

    ``tokenizer`` supplies ``inv_vocab``, ``cls``, ``sep``, ``mask``, ``pad``, ``bos``,
    ``eos`` and ``additional_special_tokens_ids`` (the ``<extra_id_N>`` sentinels).
    """

    def __init__(self, name: str, indexed_dataset, data_prefix: str, num_epochs: Optional[int],
                 max_num_samples: Optional[int], masked_lm_prob: float, max_seq_length: int,
                 max_seq_length_dec: int, short_seq_prob: float, seed: int, tokenizer, *,
                 document_range: Optional[Tuple[int, int]] = None,
                 cache_dir: Optional[str] = None, barrier_groups: Optional[Sequence] = None):
        sentinels = list(getattr(tokenizer, "additional_special_tokens_ids", None) or [])
        if not sentinels:
            raise ValueError("T5 needs sentinel tokens: give --vocab-extra-ids 100")
        for attr in ("bos", "eos"):
            if getattr(tokenizer, attr, None) is None:
                raise ValueError(f"T5 needs a tokenizer with a {attr} token")
        self.name = name
        self.seed = seed
        self.masked_lm_prob = masked_lm_prob
        self.max_seq_length = max_seq_length
        self.max_seq_length_dec = max_seq_length_dec
        self.indexed_dataset = indexed_dataset
        docs = document_bounds(indexed_dataset, document_range)
        # seq_length - 2 as in Megatron (room kept for special tokens).
        self.samples_mapping, mapping_path = get_samples_mapping(
            indexed_dataset, docs, data_prefix, name, num_epochs, max_num_samples,
            max_seq_length - 2, short_seq_prob, seed, 1,
            cache_dir=cache_dir, barrier_groups=barrier_groups)
        self._mapped_arrays = {"samples_mapping": mapping_path}
        self.vocab_id_list, self.vocab_id_to_token_dict = vocab_lists(tokenizer)
        self.cls_id = tokenizer.cls
        self.sep_id = tokenizer.sep
        self.mask_id = tokenizer.mask
        self.pad_id = tokenizer.pad
        self.bos_id = tokenizer.bos
        self.eos_id = tokenizer.eos
        self.sentinel_tokens = sentinels

    def __len__(self):
        return self.samples_mapping.shape[0]

    def __getitem__(self, idx):
        start, end, target_seq_length = (int(x) for x in self.samples_mapping[idx])
        sample = self.indexed_dataset[start:end]
        rng = np.random.RandomState(seed=(self.seed + idx) % 2**32)
        return build_t5_sample(
            sample, target_seq_length, self.max_seq_length, self.max_seq_length_dec,
            self.vocab_id_list, self.vocab_id_to_token_dict, self.cls_id, self.sep_id,
            self.mask_id, self.pad_id, self.masked_lm_prob, rng, self.bos_id, self.eos_id,
            self.sentinel_tokens)
