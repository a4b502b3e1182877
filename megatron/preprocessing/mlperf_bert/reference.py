"""The MLPerf BERT example algorithm (Google's ``create_pretraining_data.py``), plainly.

Written the way the reference script does it, one Python list at a time, with the draws of
one ``random.Random`` in the script's order. It is the definition the C++ core
(``instances.cpp``) is tested against record for record, the fallback when that extension is
not built, and the baseline of ``benchmarks/bench_create_pretraining_data.py``.

Tokens are ids here (the script works on token strings and converts at the end; with a
vocabulary without duplicates the two are the same thing: the random replacement token
``vocab_words[randint(0, len(vocab_words) - 1)]`` has id equal to the drawn number).
"""
from __future__ import annotations

import collections
from typing import List, Sequence

TrainingInstance = collections.namedtuple(
    "TrainingInstance", "tokens segment_ids masked_lm_positions masked_lm_labels is_random_next")


def truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng):
    """Trim the longer segment, from the front or the back at random, until the pair fits."""
    while True:
        total_length = len(tokens_a) + len(tokens_b)
        if total_length <= max_num_tokens:
            break
        trunc_tokens = tokens_a if len(tokens_a) > len(tokens_b) else tokens_b
        assert len(trunc_tokens) >= 1
        if rng.random() < 0.5:
            del trunc_tokens[0]
        else:
            trunc_tokens.pop()


def create_masked_lm_predictions(tokens, masked_lm_prob, max_predictions_per_seq, vocab_size, rng, *,
                                 cls_id, sep_id, mask_id, is_continuation=None, do_whole_word_mask=False):
    cand_indexes = []
    for i, token in enumerate(tokens):
        if token == cls_id or token == sep_id:
            continue
        if do_whole_word_mask and len(cand_indexes) >= 1 and is_continuation[token]:
            cand_indexes[-1].append(i)
        else:
            cand_indexes.append([i])
    rng.shuffle(cand_indexes)
    output_tokens = list(tokens)
    num_to_predict = min(max_predictions_per_seq, max(1, int(round(len(tokens) * masked_lm_prob))))
    masked_lms = []
    covered_indexes = set()
    for index_set in cand_indexes:
        if len(masked_lms) >= num_to_predict:
            break
        if len(masked_lms) + len(index_set) > num_to_predict:
            continue
        if any(index in covered_indexes for index in index_set):
            continue
        for index in index_set:
            covered_indexes.add(index)
            if rng.random() < 0.8:
                masked_token = mask_id
            elif rng.random() < 0.5:
                masked_token = tokens[index]
            else:
                masked_token = rng.randint(0, vocab_size - 1)
            output_tokens[index] = masked_token
            masked_lms.append((index, tokens[index]))
    masked_lms.sort(key=lambda x: x[0])
    return output_tokens, [p for p, _ in masked_lms], [label for _, label in masked_lms]


def create_instances_from_document(all_documents, document_index, max_seq_length, short_seq_prob,
                                   masked_lm_prob, max_predictions_per_seq, vocab_size, rng, **ids):
    document = all_documents[document_index]
    max_num_tokens = max_seq_length - 3
    target_seq_length = max_num_tokens
    if rng.random() < short_seq_prob:
        target_seq_length = rng.randint(2, max_num_tokens)
    instances = []
    current_chunk = []
    current_length = 0
    i = 0
    while i < len(document):
        segment = document[i]
        current_chunk.append(segment)
        current_length += len(segment)
        if i == len(document) - 1 or current_length >= target_seq_length:
            if current_chunk:
                a_end = 1
                if len(current_chunk) >= 2:
                    a_end = rng.randint(1, len(current_chunk) - 1)
                tokens_a = []
                for j in range(a_end):
                    tokens_a.extend(current_chunk[j])
                tokens_b = []
                if len(current_chunk) == 1 or rng.random() < 0.5:
                    is_random_next = True
                    target_b_length = target_seq_length - len(tokens_a)
                    for _ in range(10):
                        random_document_index = rng.randint(0, len(all_documents) - 1)
                        if random_document_index != document_index:
                            break
                    random_document = all_documents[random_document_index]
                    random_start = rng.randint(0, len(random_document) - 1)
                    for j in range(random_start, len(random_document)):
                        tokens_b.extend(random_document[j])
                        if len(tokens_b) >= target_b_length:
                            break
                    num_unused_segments = len(current_chunk) - a_end
                    i -= num_unused_segments
                else:
                    is_random_next = False
                    for j in range(a_end, len(current_chunk)):
                        tokens_b.extend(current_chunk[j])
                truncate_seq_pair(tokens_a, tokens_b, max_num_tokens, rng)
                assert len(tokens_a) >= 1 and len(tokens_b) >= 1
                tokens = [ids["cls_id"]] + tokens_a + [ids["sep_id"]] + tokens_b + [ids["sep_id"]]
                segment_ids = [0] * (len(tokens_a) + 2) + [1] * (len(tokens_b) + 1)
                tokens, positions, labels = create_masked_lm_predictions(
                    tokens, masked_lm_prob, max_predictions_per_seq, vocab_size, rng, **ids)
                instances.append(TrainingInstance(tokens, segment_ids, positions, labels, is_random_next))
            current_chunk = []
            current_length = 0
        i += 1
    return instances


def create_training_instances(all_documents: List[List[Sequence[int]]], dupe_factor, max_seq_length,
                              short_seq_prob, masked_lm_prob, max_predictions_per_seq, vocab_size, rng,
                              **ids) -> List[TrainingInstance]:
    """``all_documents``: documents as lists of tokenized sentences, empty ones already dropped.

    ``ids`` are ``cls_id``, ``sep_id``, ``mask_id`` and, for whole-word masking,
    ``is_continuation`` (per id: a ``##`` piece) and ``do_whole_word_mask``.
    """
    all_documents = list(all_documents)
    rng.shuffle(all_documents)
    instances = []
    for _ in range(dupe_factor):
        for document_index in range(len(all_documents)):
            instances.extend(create_instances_from_document(
                all_documents, document_index, max_seq_length, short_seq_prob, masked_lm_prob,
                max_predictions_per_seq, vocab_size, rng, **ids))
    rng.shuffle(instances)
    return instances


def instance_features(instance: TrainingInstance, max_seq_length, max_predictions_per_seq):
    """The seven features of the reference's ``write_instance_to_example_files``, padded."""
    input_ids = list(instance.tokens)
    input_mask = [1] * len(input_ids)
    segment_ids = list(instance.segment_ids)
    assert len(input_ids) <= max_seq_length
    while len(input_ids) < max_seq_length:
        input_ids.append(0)
        input_mask.append(0)
        segment_ids.append(0)
    masked_lm_positions = list(instance.masked_lm_positions)
    masked_lm_ids = list(instance.masked_lm_labels)
    masked_lm_weights = [1.0] * len(masked_lm_ids)
    while len(masked_lm_positions) < max_predictions_per_seq:
        masked_lm_positions.append(0)
        masked_lm_ids.append(0)
        masked_lm_weights.append(0.0)
    return collections.OrderedDict([
        ("input_ids", input_ids), ("input_mask", input_mask), ("segment_ids", segment_ids),
        ("masked_lm_positions", masked_lm_positions), ("masked_lm_ids", masked_lm_ids),
        ("masked_lm_weights", masked_lm_weights),
        ("next_sentence_labels", [1 if instance.is_random_next else 0])])
