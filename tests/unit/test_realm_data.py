"""REALM data: the salient-span tagger, span lookup in token space, the three masking styles, and the
evidence index's own-document exclusion, null document and refresh sharding."""
import argparse
import json

import numpy as np
import pytest
import torch

from megatron.core.datasets.realm_dataset import REALMDataset, SalientSpanDataError, build_span_table
from megatron.preprocessing.salient_spans import SalientSpanError, SalientSpanTagger
from megatron.retrieval.realm_index import REALMIndex, REALMIndexError, embed_corpus_sync, fp16_rounded


@pytest.fixture(scope="module")
def tokenizer():
    from megatron.tokenizer import bert_uncased_vocab_path
    from megatron.tokenizer.build import build_tokenizer

    return build_tokenizer(argparse.Namespace(tokenizer_type="BertWordPieceLowerCase",
                                              vocab_file=bert_uncased_vocab_path(), rank=1,
                                              make_vocab_size_divisible_by=128, tensor_model_parallel_size=1))


def _spans(text, tagger=None):
    return [text[a:b] for a, b in (tagger or SalientSpanTagger()).tag(text)]


def test_tagger_finds_entities_dates_and_numbers():
    text = ("The Bank of England was founded on 27 July 1694. In 1991 Guido van Rossum released Python 0.9.1 "
            "at CWI in Amsterdam. See RFC 4007, since December 2018. Python is 45% faster.")
    assert _spans(text) == ["Bank of England", "27 July 1694", "1991", "Guido van Rossum", "Python", "0.9.1",
                            "CWI", "Amsterdam", "RFC", "4007", "December 2018", "45%"]


def test_tagger_skips_sentence_openers_and_identifiers():
    # "Python" opens the sentence (kept only written in capitals or with an inner capital); x86 and
    # utf_8 are identifiers, not numbers.
    assert _spans("Python runs on x86 and utf_8 text. NASA uses PyPI.") == ["NASA", "PyPI"]


def test_ner_model_that_is_not_installed_is_one_line():
    with pytest.raises(SalientSpanError, match=r"^--ner-model en_core_web_sm: spaCy is not installed"):
        SalientSpanTagger("en_core_web_sm")


class FakeBody:
    """Sentences as token lists, with Megatron's document index."""

    def __init__(self, documents):
        self.sentences = [np.asarray(s, np.int64) for doc in documents for s in doc]
        self.doc_idx = np.cumsum([0] + [len(doc) for doc in documents])
        self.sizes = np.asarray([len(s) for s in self.sentences], np.int32)

    def __getitem__(self, index):
        return self.sentences[index]


def _corpus(tmp_path, tokenizer, docs):
    """Loose JSON of ``docs`` (each a list of sentences, optionally with given spans) and the body dataset."""
    path = tmp_path / "corpus.json"
    with open(path, "w", encoding="utf-8") as handle:
        for sentences, spans in docs:
            record = {"text": " ".join(sentences)}
            if spans is not None:
                record["salient_spans"] = spans
            handle.write(json.dumps(record) + "\n")
    body = FakeBody([[tokenizer.tokenize(s) for s in sentences] for sentences, _ in docs])
    return str(path), body


def test_span_table_locates_tagged_and_given_spans_in_their_sentences(tmp_path, tokenizer):
    docs = [(["Guido van Rossum wrote it.", "It was released in 1991 by him."], None),
            (["The gamma function extends the factorial."], [[4, 9], [14, 20]])]  # "gamma", "tion e" (mid-word)
    path, body = _corpus(tmp_path, tokenizer, docs)
    table = build_span_table(path, "text", body, tokenizer, SalientSpanTagger(), log=lambda _: None)
    found = [tokenizer.detokenize(body[s][a:b].tolist()) for s, a, b in table]
    assert found == ["guido van rossum", "1991", "gamma"]
    assert table[:, 0].tolist() == [0, 1, 2]


def test_bad_corpus_spans_and_document_counts_name_the_file(tmp_path, tokenizer):
    path, body = _corpus(tmp_path, tokenizer, [(["A short text."], [[3, 99]])])
    with pytest.raises(SalientSpanDataError, match=r"corpus.json:1: salient span \[3, 99\] is not"):
        build_span_table(path, "text", body, tokenizer, SalientSpanTagger(), log=lambda _: None)
    path, _ = _corpus(tmp_path, tokenizer, [(["One."], None), (["Two."], None)])
    one_doc = FakeBody([[tokenizer.tokenize("One.")]])
    with pytest.raises(SalientSpanDataError, match="more documents than the 1 of the dataset"):
        build_span_table(path, "text", one_doc, tokenizer, SalientSpanTagger(), log=lambda _: None)


@pytest.mark.parametrize("style", ["salient", "random-span", "random-token"])
def test_masking_styles_mask_as_many_tokens(tmp_path, tokenizer, style):
    sentence = "In 1991 Guido van Rossum released the first version of the language to alt sources."
    path, body = _corpus(tmp_path, tokenizer, [([sentence], None)])
    table = build_span_table(path, "text", body, tokenizer, SalientSpanTagger(), log=lambda _: None)
    dataset = REALMDataset("train", body, table, (0, 1), 40, 32, style, 10, 1234, tokenizer)
    tokens = body[0].tolist()
    spans = {(int(a), int(b)) for _, a, b in table}
    contiguous_elsewhere = 0
    for i in range(len(dataset)):
        sample = dataset[i]
        n = int(sample["mask_valid"].sum())
        positions = sample["mask_positions"][:n] - 1
        assert n in {b - a for a, b in spans}
        assert (sample["query_tokens"][positions + 1] == tokenizer.mask).all()
        assert sample["mask_labels"][:n].tolist() == [tokens[p] for p in positions]
        assert sample["query_pad_mask"].sum() == len(tokens) + 2
        assert sample["query_doc"] == 0
        is_span = (int(positions[0]), int(positions[-1]) + 1) in spans
        if style == "salient":
            assert is_span
        elif style == "random-span":
            assert (np.diff(positions) == 1).all()
            contiguous_elsewhere += not is_span
        else:
            assert (np.diff(positions) > 0).all()
    if style == "random-span":
        assert contiguous_elsewhere > 0
    # Same index, same sample, in any order.
    assert dataset[3]["mask_positions"].tolist() == REALMDataset(
        "train", body, table, (0, 1), 40, 32, style, 10, 1234, tokenizer)[3]["mask_positions"].tolist()


class FakeCorpus:
    """Blocks of 4 documents (2, 3, 1 and 2 blocks); tokens encode the position."""

    def __init__(self):
        docs = [0, 0, 1, 1, 1, 2, 3, 3]
        self.mapping = np.array([[p, p + 1, d, 100 + p] for p, d in enumerate(docs)], np.int64)
        self.ict = self

    def __len__(self):
        return len(self.mapping)

    def __getitem__(self, p):
        return {"tokens": np.array([1, 50 + p, 2, 0]), "pad_mask": np.array([1, 1, 1, 0]),
                "row_id": np.int64(100 + p)}

    def get_null_block(self):
        return np.array([1, 2, 0, 0]), np.array([1, 1, 0, 0])


@pytest.mark.parametrize("search", ["matmul", "faiss"])
def test_index_drops_the_own_document_and_prepends_the_null_document(search):
    corpus = FakeCorpus()
    embeddings = np.eye(8, dtype=np.float32) * np.arange(1, 9, dtype=np.float32)[:, None]
    index = REALMIndex(corpus, embeddings, built_at=0, search=search)
    # Query 0 prefers blocks 1 (doc 0), 4 (doc 1), 0 (doc 0), 6 (doc 3), 7 (doc 3); it comes from doc 0.
    query = torch.zeros(2, 8)
    query[0, [1, 4, 0, 6, 7]] = torch.tensor([5.0, 4.0, 3.0, 0.5, 0.4]) / torch.arange(1, 9)[[1, 4, 0, 6, 7]]
    query[1, [5, 2]] = torch.tensor([2.0, 1.0])
    positions, own = index.search(query, torch.tensor([0, 3]), 3)
    assert positions[0].tolist() == [4, 6, 7]  # blocks 1 and 0 of its own document dropped
    assert positions[1][:2].tolist() == [5, 2]
    assert own.tolist() == [True, False]
    tokens, pad = index.candidate_tokens(positions)
    assert tokens.shape == (2, 4, 4)
    assert tokens[0, 0].tolist() == [1, 2, 0, 0] and pad[0, 0].tolist() == [1, 1, 0, 0]  # null document
    assert tokens[0, 1:, 1].tolist() == [54, 56, 57]


def test_index_refuses_more_candidates_than_other_documents_hold():
    index = REALMIndex(FakeCorpus(), np.ones((8, 4), np.float32), built_at=0, search="matmul")
    with pytest.raises(REALMIndexError, match="needs 6 blocks from other documents"):
        index.search(torch.ones(1, 4), torch.tensor([1]), 6)


def test_sync_refresh_without_data_parallelism_rounds_to_the_store_precision():
    corpus = FakeCorpus()

    def embed(tokens, pad_mask):
        return tokens[:, 1:2].float() / 3.0

    got = embed_corpus_sync(embed, corpus, 0, 1, None, batch_size=3, device=torch.device("cpu"))
    want = fp16_rounded(np.arange(50, 58, dtype=np.float32)[:, None] / 3.0)
    np.testing.assert_array_equal(got, want)
