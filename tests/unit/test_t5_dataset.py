"""T5Dataset: sentinel span corruption round-trips to the original text; masks."""
import numpy as np
import pytest

from megatron.core.datasets.t5_dataset import T5Dataset
from test_helpers_fixtures import FakeWordPieceTokenizer, make_sentence_corpus

ENC, DEC = 96, 48


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    tokenizer = FakeWordPieceTokenizer()
    prefix = str(tmp_path_factory.mktemp("t5") / "corpus")
    indexed, _ = make_sentence_corpus(prefix, tokenizer, num_docs=60)
    dataset = T5Dataset("train", indexed, prefix, None, 300, 0.15, ENC, DEC, 0.1, 1234, tokenizer)
    return tokenizer, indexed, dataset


def _restore(sample, tokenizer):
    """Put each decoder span back where its sentinel sits in the encoder input."""
    sentinels = set(tokenizer.additional_special_tokens_ids)
    dec = sample["labels"][sample["loss_mask"] == 1].tolist()
    assert dec[-1] == tokenizer.eos
    spans, current = {}, None
    for token in dec[:-1]:
        if token in sentinels:
            current = token
            spans[current] = []
        else:
            spans[current].append(token)
    out = []
    for token in sample["text_enc"].tolist():
        if token == tokenizer.pad:
            break
        out.extend(spans[token] if token in sentinels else [token])
    return out, list(spans)


def test_span_corruption_round_trip_and_sentinel_order(setup):
    tokenizer, indexed, dataset = setup
    n_masked = n_tokens = 0
    for i in range(200):
        sample = dataset[i]
        start, end, target = (int(x) for x in dataset.samples_mapping[i])
        original = np.concatenate(indexed[start:end]).tolist()[:target]
        restored, used = _restore(sample, tokenizer)
        assert restored == original
        assert used == tokenizer.additional_special_tokens_ids[:len(used)]
        assert sample["truncated"] == int(sum(indexed.sizes[start:end]) > target)
        n_tokens += len(original)
        n_masked += len(original) - (int((sample["text_enc"] != tokenizer.pad).sum()) - len(used))
        # Decoder input is [BOS] then the labels shifted right by one.
        dec_in = sample["text_dec"][sample["loss_mask"] == 1]
        labels = sample["labels"][sample["loss_mask"] == 1]
        assert dec_in[0] == tokenizer.bos
        np.testing.assert_array_equal(dec_in[1:], labels[:-1])
    assert abs(n_masked / n_tokens - 0.15) < 0.03


def test_attention_masks(setup):
    tokenizer, _, dataset = setup
    sample = dataset[5]
    enc_real = sample["text_enc"] != tokenizer.pad
    dec_real = sample["text_dec"] != tokenizer.pad
    assert sample["enc_mask"].shape == (ENC, ENC) and sample["enc_dec_mask"].shape == (DEC, ENC)
    np.testing.assert_array_equal(sample["enc_mask"], np.outer(enc_real, enc_real))
    np.testing.assert_array_equal(sample["enc_dec_mask"], np.outer(dec_real, enc_real))
    causal = np.tril(np.ones((DEC, DEC), dtype=np.int64))
    np.testing.assert_array_equal(sample["dec_mask"], np.outer(dec_real, dec_real) * causal)


def test_determinism_and_missing_sentinels(setup, tmp_path):
    tokenizer, indexed, dataset = setup
    for key, value in dataset[42].items():
        np.testing.assert_array_equal(value, dataset[42][key])
    no_sentinels = FakeWordPieceTokenizer(num_sentinels=0)
    with pytest.raises(ValueError, match="--vocab-extra-ids"):
        T5Dataset("train", indexed, str(tmp_path / "x"), None, 10, 0.15, ENC, DEC, 0.1, 1, no_sentinels)
