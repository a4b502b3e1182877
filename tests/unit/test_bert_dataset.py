"""BertDataset: layout, sentence order, truncation, masking statistics, determinism."""
import os

import numpy as np
import pytest

from megatron.core.datasets.bert_dataset import BertDataset
from megatron.core.datasets.masking import create_masked_lm_predictions, samples_mapping_path
from test_helpers_fixtures import FakeWordPieceTokenizer, make_sentence_corpus

SEQ = 64


@pytest.fixture(scope="module")
def tokenizer():
    return FakeWordPieceTokenizer()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory, tokenizer):
    prefix = str(tmp_path_factory.mktemp("bert") / "corpus")
    indexed, documents = make_sentence_corpus(prefix, tokenizer, num_docs=80)
    return prefix, indexed, documents


def _dataset(corpus, tokenizer, binary_head=True, num_samples=400, **kwargs):
    prefix, indexed, _ = corpus
    return BertDataset("train", indexed, prefix, None, num_samples, 0.15, SEQ, 0.1, 1234,
                       binary_head, tokenizer, **kwargs)


def _unmasked(sample):
    text = sample["text"].copy()
    masked = sample["loss_mask"] == 1
    text[masked] = sample["labels"][masked]
    return text


def test_layout_types_and_sentence_order(corpus, tokenizer):
    prefix, indexed, _ = corpus
    dataset = _dataset(corpus, tokenizer)
    flat = np.concatenate([indexed[i] for i in range(len(indexed))]).astype(np.int64)
    seen_random = set()
    for i in range(200):
        sample = dataset[i]
        start, end, target = (int(x) for x in dataset.samples_mapping[i])
        n = int(sample["padding_mask"].sum())
        assert sample["padding_mask"][:n].all() and not sample["padding_mask"][n:].any()
        assert (sample["text"][n:] == tokenizer.pad).all()
        text = _unmasked(sample)[:n]
        assert text[0] == tokenizer.cls and text[-1] == tokenizer.sep
        seps = np.flatnonzero(text == tokenizer.sep)
        assert len(seps) == 2, "binary head samples are [CLS] A [SEP] B [SEP]"
        types = sample["types"][:n]
        assert (types[:seps[0] + 1] == 0).all() and (types[seps[0] + 1:] == 1).all()
        assert n - 3 <= target
        a, b = text[1:seps[0]], text[seps[0] + 1:-1]
        first, second = (b, a) if sample["is_random"] else (a, b)
        seen_random.add(sample["is_random"])
        # Unswapped, A then B is a (possibly trimmed) contiguous run of the sentences.
        sentences = flat[_sentence_offset(indexed, start):_sentence_offset(indexed, end)]
        assert _is_subsequence_with_one_gap(sentences, first, second)
        assert sample["truncated"] == int(len(sentences) > n - 3)
    assert seen_random == {0, 1}


def _sentence_offset(indexed, sentence):
    return int(indexed.sizes[:sentence].sum())


def _occurrences(haystack, needle):
    n = len(needle)
    return [p for p in range(len(haystack) - n + 1) if haystack[p:p + n] == needle]


def _is_subsequence_with_one_gap(sentences, first, second):
    """Truncation trims A and B only at their ends, so (unswapped) A is a run of the
    sentences that ends before B's run starts."""
    s, f, g = sentences.tolist(), first.tolist(), second.tolist()
    return any(p + len(f) <= q for p in _occurrences(s, f) for q in _occurrences(s, g))


def test_masking_statistics_and_whole_words(corpus, tokenizer):
    dataset = _dataset(corpus, tokenizer, num_samples=2000)
    n_masked = n_mask_token = n_kept = n_tokens = 0
    for i in range(min(len(dataset), 1500)):
        sample = dataset[i]
        n = int(sample["padding_mask"].sum())
        masked = np.flatnonzero(sample["loss_mask"])
        assert (sample["labels"][sample["loss_mask"] == 0] == -1).all()
        assert tokenizer.cls not in sample["labels"][masked] and tokenizer.sep not in sample["labels"][masked]
        original = _unmasked(sample)
        n_tokens += n
        n_masked += len(masked)
        n_mask_token += int((sample["text"][masked] == tokenizer.mask).sum())
        n_kept += int((sample["text"][masked] == original[masked]).sum())
        # Whole-word masking: a masked "##" piece's word is masked with it. Like
        # Megatron, a piece left at a segment's start by truncation joins the word
        # before the [SEP].
        for pos in masked:
            if tokenizer.inv_vocab[int(original[pos])].startswith("##"):
                j = pos - 1
                while original[j] == tokenizer.sep:
                    j -= 1
                assert original[j] == tokenizer.cls or sample["loss_mask"][j] == 1
        assert len(masked) <= max(1, round(0.15 * (n - 3))) + 1
    assert abs(n_masked / n_tokens - 0.15) < 0.02
    assert abs(n_mask_token / n_masked - 0.8) < 0.03
    # Kept-as-is is 10%, plus the random replacements that drew the original token.
    assert abs(n_kept / n_masked - 0.1) < 0.03


def test_no_binary_head_puts_everything_in_segment_a(corpus, tokenizer):
    dataset = _dataset(corpus, tokenizer, binary_head=False)
    for i in range(100):
        sample = dataset[i]
        n = int(sample["padding_mask"].sum())
        text = _unmasked(sample)[:n]
        assert sample["is_random"] == 0 and not sample["types"].any()
        assert np.flatnonzero(text == tokenizer.sep).tolist() == [n - 1]


def test_deterministic_per_index_and_cached_mapping(corpus, tokenizer):
    prefix, _, _ = corpus
    first = _dataset(corpus, tokenizer, num_samples=300)
    path = samples_mapping_path(prefix, "train", np.iinfo(np.int32).max - 1, 300, SEQ - 3, 0.1, 1234)
    assert path.endswith("corpus_train_indexmap_300mns_61msl_0.10ssp_1234s.npy")
    assert os.path.isfile(path)
    second = _dataset(corpus, tokenizer, num_samples=300)
    for i in (299, 0, 17, 17):
        for key, value in first[i].items():
            np.testing.assert_array_equal(value, second[i][key])


def test_masked_lm_prediction_rng_order_matches_reference_draws(tokenizer):
    """The n-gram choice uses 1/n weights; with n=1 forced, positions follow the shuffle."""
    tokens = [tokenizer.cls] + list(range(5, 25)) + [tokenizer.sep]
    vocab_ids = list(tokenizer.inv_vocab.keys())
    rng = np.random.RandomState(3)
    out, positions, labels, boundary, spans = create_masked_lm_predictions(
        tokens, vocab_ids, tokenizer.inv_vocab, 0.15, tokenizer.cls, tokenizer.sep,
        tokenizer.mask, 0.15 * 20, rng, max_ngrams=1)
    # Replay the same draws by hand: shuffle the candidates, then per position one draw
    # for [MASK] (and more for keep/random).
    replay = np.random.RandomState(3)
    candidates = [[[i]] for i in range(1, 21)]
    replay.shuffle(candidates)
    expected = []
    for cand in candidates:
        if len(expected) >= 3:
            break
        replay.choice(np.array([1]), p=np.array([1.0]))
        expected.append(cand[0][0])
        if replay.random() >= 0.8:
            if replay.random() >= 0.5:
                replay.randint(0, len(vocab_ids))
    assert positions == sorted(expected)
    assert labels == [tokens[p] for p in positions]
    assert boundary[0] == 1 and boundary[-1] == 1


def test_same_samples_with_workers_and_after_pickling(corpus, tokenizer):
    import pickle

    import torch

    from megatron.core.datasets.samplers import build_pretraining_data_loader

    dataset = _dataset(corpus, tokenizer, num_samples=300)
    payload = pickle.dumps(dataset)
    assert "samples_mapping" not in dataset.__getstate__(), "the mapping travels as its path"
    copy = pickle.loads(payload)
    np.testing.assert_array_equal(copy.samples_mapping, dataset.samples_mapping)
    expected = np.stack([dataset[i]["text"] for i in range(120)])
    loader = build_pretraining_data_loader(dataset, 0, 40, 0, 1, num_workers=2)
    got = []
    for batch in loader:
        got.append(batch["text"])
        if len(got) == 3:
            break
    np.testing.assert_array_equal(torch.cat(got).numpy(), expected)
