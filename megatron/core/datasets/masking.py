"""Sentence-pair building and masked-LM corruption shared by BERT and T5.

Each function draws from the ``np.random.RandomState`` it is given in exactly the order
Megatron-LM draws, so a sample index and seed give Megatron's sample.
"""
from __future__ import annotations

import collections
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from megatron.core.datasets import helpers
from megatron.core.datasets.utils import load_or_build_cache

MaskedLmInstance = collections.namedtuple("MaskedLmInstance", ["index", "label"])

# "No limit" as Megatron spells it, so cache names match when a limit is not given.
NO_EPOCH_LIMIT = np.iinfo(np.int32).max - 1
NO_SAMPLE_LIMIT = np.iinfo(np.int64).max - 1


def get_a_and_b_segments(sample: Sequence[np.ndarray], rng) -> Tuple[list, list, bool]:
    """Split the sentences at a random point into A and B; swap them with probability 0.5
    (sentence-order prediction: ``is_random`` means B comes first in the document)."""
    n_sentences = len(sample)
    if n_sentences < 2:
        raise ValueError(f"a binary-head sample needs at least two sentences, got {n_sentences}")
    a_end = 1
    if n_sentences >= 3:
        a_end = rng.randint(1, n_sentences)
    tokens_a = [int(t) for sentence in sample[:a_end] for t in sentence]
    tokens_b = [int(t) for sentence in sample[a_end:] for t in sentence]
    is_random = False
    if rng.random() < 0.5:
        is_random = True
        tokens_a, tokens_b = tokens_b, tokens_a
    return tokens_a, tokens_b, is_random


def truncate_segments(tokens_a: list, tokens_b: list, max_num_tokens: int, rng) -> bool:
    """Trim the longer segment, one token at a time from a random end, until both fit."""
    len_a, len_b = len(tokens_a), len(tokens_b)
    if len_a == 0:
        raise ValueError("segment A is empty: a sample must hold at least one token")
    if len_a + len_b <= max_num_tokens:
        return False
    while len_a + len_b > max_num_tokens:
        if len_a > len_b:
            len_a -= 1
            tokens = tokens_a
        else:
            len_b -= 1
            tokens = tokens_b
        if rng.random() < 0.5:
            del tokens[0]
        else:
            tokens.pop()
    return True


def create_tokens_and_tokentypes(tokens_a, tokens_b, cls_id, sep_id):
    """``[CLS] A [SEP] B [SEP]`` with token types 0 up to the first SEP and 1 after it."""
    tokens = [cls_id] + list(tokens_a) + [sep_id]
    tokentypes = [0] * len(tokens)
    if tokens_b:
        tokens += list(tokens_b) + [sep_id]
        tokentypes += [1] * (len(tokens_b) + 1)
    return tokens, tokentypes


def _is_start_piece(piece: str) -> bool:
    # WordPiece marks a word's continuation pieces with a leading "##".
    return not piece.startswith("##")


def create_masked_lm_predictions(tokens, vocab_id_list, vocab_id_to_token_dict, masked_lm_prob,
                                 cls_id, sep_id, mask_id, max_predictions_per_seq, rng,
                                 max_ngrams=3, do_whole_word_mask=True, favor_longer_ngram=False,
                                 geometric_dist=False, masking_style="bert"):
    """Choose whole-word n-gram spans and corrupt them.

    Returns (output_tokens, masked_positions, masked_labels, token_boundary, masked_spans),
    positions sorted, spans sorted by first position. ``masking_style`` "bert" replaces a
    chosen token by [MASK] 80%, keeps it 10% and puts a random vocabulary id 10% of the
    time; "t5" always writes [MASK] (T5 replaces the spans by sentinels afterwards).
    """
    if masking_style not in ("bert", "t5"):
        raise ValueError(f"masking_style must be 'bert' or 't5', got {masking_style!r}")
    cand_indexes: List[List[int]] = []
    token_boundary = [0] * len(tokens)
    for i, token in enumerate(tokens):
        if token == cls_id or token == sep_id:
            token_boundary[i] = 1
            continue
        start_piece = _is_start_piece(vocab_id_to_token_dict[token])
        if do_whole_word_mask and cand_indexes and not start_piece:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
            if start_piece:
                token_boundary[i] = 1

    output_tokens = list(tokens)
    if masked_lm_prob == 0:
        return output_tokens, [], [], token_boundary, []

    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    ngrams = np.arange(1, max_ngrams + 1, dtype=np.int64)
    pvals = None
    if not geometric_dist:
        # Shorter n-grams are favoured, p(n) proportional to 1/n.
        pvals = 1.0 / np.arange(1, max_ngrams + 1)
        pvals /= pvals.sum(keepdims=True)
        if favor_longer_ngram:
            pvals = pvals[::-1]

    ngram_indexes = []
    for idx in range(len(cand_indexes)):
        ngram_indexes.append([cand_indexes[idx:idx + n] for n in ngrams])
    rng.shuffle(ngram_indexes)

    masked_lms, masked_spans = [], []
    covered = set()
    for cand_index_set in ngram_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if not cand_index_set:
            continue
        if not geometric_dist:
            p = pvals[:len(cand_index_set)]
            n = rng.choice(ngrams[:len(cand_index_set)], p=p / p.sum(keepdims=True))
        else:
            # SpanBERT's span lengths: geometric with p = 0.2, clipped to max_ngrams.
            n = min(rng.geometric(0.2), max_ngrams)
        index_set = sum(cand_index_set[n - 1], [])
        n -= 1
        # Fall back to shorter n-grams while this one would overshoot the budget.
        while len(masked_lms) + len(index_set) > num_to_predict:
            if n == 0:
                break
            index_set = sum(cand_index_set[n - 1], [])
            n -= 1
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered for index in index_set):
            continue
        for index in index_set:
            covered.add(index)
            if masking_style == "bert":
                if rng.random() < 0.8:
                    masked_token = mask_id
                elif rng.random() < 0.5:
                    masked_token = tokens[index]
                else:
                    masked_token = vocab_id_list[rng.randint(0, len(vocab_id_list))]
            else:
                masked_token = mask_id
            output_tokens[index] = masked_token
            masked_lms.append(MaskedLmInstance(index=index, label=tokens[index]))
        masked_spans.append(MaskedLmInstance(index=index_set, label=[tokens[i] for i in index_set]))

    masked_lms.sort(key=lambda x: x.index)
    masked_spans.sort(key=lambda x: x.index[0])
    positions = [p.index for p in masked_lms]
    labels = [p.label for p in masked_lms]
    return output_tokens, positions, labels, token_boundary, masked_spans


def pad_and_convert_to_numpy(tokens, tokentypes, masked_positions, masked_labels, pad_id,
                             max_seq_length):
    """BERT arrays padded to ``max_seq_length``: (text, types, labels, padding_mask, loss_mask)."""
    num_tokens = len(tokens)
    padding_length = max_seq_length - num_tokens
    if padding_length < 0:
        raise ValueError(f"sample of {num_tokens} tokens does not fit seq_length {max_seq_length}")
    filler = [pad_id] * padding_length
    tokens_np = np.array(list(tokens) + filler, dtype=np.int64)
    # Megatron pads the token types with the pad id too (0 for WordPiece vocabularies).
    tokentypes_np = np.array(list(tokentypes) + filler, dtype=np.int64)
    padding_mask_np = np.array([1] * num_tokens + [0] * padding_length, dtype=np.int64)
    labels_np = np.full(max_seq_length, -1, dtype=np.int64)
    loss_mask_np = np.zeros(max_seq_length, dtype=np.int64)
    if masked_positions:
        labels_np[masked_positions] = masked_labels
        loss_mask_np[masked_positions] = 1
    return tokens_np, tokentypes_np, labels_np, padding_mask_np, loss_mask_np


def samples_mapping_path(data_prefix: str, name: str, num_epochs: int, max_num_samples: int,
                         max_seq_length: int, short_seq_prob: float, seed: int,
                         cache_dir: Optional[str] = None) -> str:
    """``{prefix}_{name}_indexmap[_{E}ep][_{N}mns]_{msl}msl_{ssp:.2f}ssp_{seed}s.npy``."""
    base = os.path.join(cache_dir, os.path.basename(data_prefix)) if cache_dir else data_prefix
    name = f"{base}_{name}_indexmap"
    if num_epochs != NO_EPOCH_LIMIT:
        name += f"_{num_epochs}ep"
    if max_num_samples != NO_SAMPLE_LIMIT:
        name += f"_{max_num_samples}mns"
    return name + f"_{max_seq_length}msl_{short_seq_prob:0.2f}ssp_{seed}s.npy"


def resolve_limits(num_epochs: Optional[int], max_num_samples: Optional[int]) -> Tuple[int, int]:
    if not num_epochs and not max_num_samples:
        raise ValueError("need either num_epochs or max_num_samples for a samples mapping")
    return (num_epochs or NO_EPOCH_LIMIT), (max_num_samples or NO_SAMPLE_LIMIT)


def mapping_spec(num_sentences: int, width: int):
    dtype = np.uint64 if num_sentences > np.iinfo(np.uint32).max else np.uint32
    return ((None, width), dtype)


def get_samples_mapping(indexed_dataset, docs: np.ndarray, data_prefix: str, name: str,
                        num_epochs: Optional[int], max_num_samples: Optional[int],
                        max_seq_length: int, short_seq_prob: float, seed: int,
                        min_num_sent: int, cache_dir: Optional[str] = None,
                        barrier_groups=None) -> Tuple[np.ndarray, str]:
    """The cached BERT/T5 samples mapping over the documents bounded by ``docs``, and its path.

    ``docs`` is the slice of the dataset's document index for this split (sentence
    boundaries, one more entry than documents); rows hold absolute sentence indices.
    """
    num_epochs, max_num_samples = resolve_limits(num_epochs, max_num_samples)
    if len(docs) < 2:
        raise ValueError(f"{data_prefix}: the {name} split has no documents to build samples from")
    sizes = indexed_dataset.sizes
    path = samples_mapping_path(data_prefix, name, num_epochs, max_num_samples, max_seq_length,
                                short_seq_prob, seed, cache_dir)

    def build():
        return {"mapping": helpers.build_mapping(
            docs, sizes, num_epochs, max_num_samples, max_seq_length, short_seq_prob, seed,
            False, min_num_sent)}

    def in_bounds(arrays):
        mapping = arrays["mapping"]
        return len(mapping) > 0 and int(mapping[:, 1].max()) <= int(docs[-1]) \
            and int(mapping[:, 0].min()) >= int(docs[0])

    arrays = load_or_build_cache({"mapping": path}, {"mapping": mapping_spec(len(sizes), 3)},
                                 build, validate=in_bounds, barrier_groups=barrier_groups,
                                 description=f"{name} samples mapping for {data_prefix}")
    return arrays["mapping"], path


def vocab_lists(tokenizer):
    """(id list, id -> token) as Megatron takes them from ``tokenizer.inv_vocab``."""
    inv_vocab = tokenizer.inv_vocab
    return list(inv_vocab.keys()), inv_vocab
