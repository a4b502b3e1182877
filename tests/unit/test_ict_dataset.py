"""ICTDataset: query/context layout, query-in-block rule, titles, blocks for indexing."""
import os

import numpy as np
import pytest

from megatron.core.datasets.ict_dataset import ICTDataset, blocks_mapping_path
from test_helpers_fixtures import (
    FakeWordPieceTokenizer,
    make_sentence_corpus,
    make_titles,
    write_sentence_corpus,
)

SEQ = 48


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    tokenizer = FakeWordPieceTokenizer()
    root = tmp_path_factory.mktemp("ict")
    body, _ = make_sentence_corpus(str(root / "body"), tokenizer, num_docs=50, max_sentences=6)
    titles = make_titles(str(root / "titles"), tokenizer, 50)
    return tokenizer, str(root / "body"), body, titles


def _ict(data, prob, **kwargs):
    tokenizer, prefix, body, titles = data
    return ICTDataset("train", body, titles, prefix, None, 200, SEQ, prob, 1234, tokenizer, **kwargs)


def _real(tokens, pad_mask):
    return tokens[pad_mask == 1].tolist()


def test_layout_and_query_removed_from_block(data):
    tokenizer, _, body, titles = data
    dataset = _ict(data, 0.0)
    for i in range(len(dataset)):
        sample = dataset[i]
        start, end, doc, _ = sample["block_data"].tolist()
        query = _real(sample["query_tokens"], sample["query_pad_mask"])
        context = _real(sample["context_tokens"], sample["context_pad_mask"])
        title = titles[doc].tolist()
        assert query[0] == tokenizer.cls and query[-1] == tokenizer.sep
        assert context[:len(title) + 2] == [tokenizer.cls] + title + [tokenizer.sep]
        assert context[-1] == tokenizer.sep and len(context) <= SEQ
        sentences = [body[s].tolist() for s in range(start, end)]
        assert query[1:-1] in [s[:SEQ - 2] for s in sentences]
        rest = sentences.copy()
        rest.remove(query[1:-1])
        expected_body = [t for s in rest for t in s][:SEQ - 3 - len(title)]
        assert context[len(title) + 2:-1] == expected_body
        np.testing.assert_array_equal(sample["query_mask"],
                                      np.outer(sample["query_pad_mask"], sample["query_pad_mask"]))


def test_query_kept_in_block_with_probability_one(data):
    dataset = _ict(data, 1.0)
    for i in range(50):
        sample = dataset[i]
        start, end, doc, _ = sample["block_data"].tolist()
        _, _, body, titles = data
        title_len = len(titles[doc])
        context = _real(sample["context_tokens"], sample["context_pad_mask"])
        expected = np.concatenate(body[start:end]).tolist()[:SEQ - 3 - title_len]
        assert context[title_len + 2:-1] == expected


def test_query_in_block_rate(data):
    _, _, body, titles = data
    dataset = _ict(data, 0.3)
    kept = decided = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        start, end, doc, _ = sample["block_data"].tolist()
        budget = SEQ - 3 - len(titles[doc])
        total = int(body.sizes[start:end].sum())
        query_len = int(sample["query_pad_mask"].sum()) - 2
        if total - query_len >= budget:
            continue  # truncation hides whether the query was removed
        body_len = int(sample["context_pad_mask"].sum()) - 3 - len(titles[doc])
        decided += 1
        kept += body_len == min(total, budget)
    assert decided > 100
    assert 0.15 < kept / decided < 0.45


def test_get_block_and_null_block(data):
    tokenizer, _, body, titles = data
    dataset = _ict(data, 0.1)
    tokens, pad_mask = dataset.get_block(0, 2, 0)
    title = titles[0].tolist()
    real = _real(tokens, pad_mask)
    assert real[:len(title) + 2] == [tokenizer.cls] + title + [tokenizer.sep]
    assert real[len(title) + 2:-1] == np.concatenate(body[0:2]).tolist()[:SEQ - 3 - len(title)]
    null_tokens, null_mask = dataset.get_null_block()
    assert _real(null_tokens, null_mask) == [tokenizer.cls, tokenizer.sep, tokenizer.sep]


def test_validation_split_uses_absolute_documents_and_cache_name(data):
    tokenizer, prefix, body, titles = data
    dataset = ICTDataset("valid", body, titles, prefix, None, 20, SEQ, 0.1, 1234, tokenizer,
                         document_range=(40, 50))
    docs = body.doc_idx
    for row in dataset.samples_mapping.tolist():
        start, end, doc, _ = row
        assert 40 <= doc < 50 and docs[doc] <= start < end <= docs[doc + 1]
    assert blocks_mapping_path(prefix, "valid", np.iinfo(np.int32).max - 1, 20, SEQ, 1234, True) \
        == f"{prefix}_valid_indexmap_20mns_{SEQ}msl_1234s_1sentok.npy"
    assert os.path.isfile(f"{prefix}_valid_indexmap_20mns_{SEQ}msl_1234s.npy")


def test_one_sentence_documents(tmp_path):
    tokenizer = FakeWordPieceTokenizer()
    docs = [[[5 + d, 6, 7]] for d in range(10)]
    body = write_sentence_corpus(str(tmp_path / "one"), docs)
    titles = write_sentence_corpus(str(tmp_path / "one_titles"), [[[9]] for _ in range(10)])
    with pytest.raises(ValueError, match="--use-one-sent-docs"):
        ICTDataset("train", body, titles, str(tmp_path / "one"), None, 5, SEQ, 0.1, 1, tokenizer)
    dataset = ICTDataset("train", body, titles, str(tmp_path / "one"), None, 5, SEQ, 0.1, 1,
                         tokenizer, use_one_sent_docs=True)
    sample = dataset[0]
    assert _real(sample["query_tokens"], sample["query_pad_mask"])[1:-1] == \
        body[int(sample["block_data"][0])].tolist()
