"""Shared builders for the dataset tests: a small WordPiece-like tokenizer and tiny corpora.

Imported by the dataset test modules; it holds no tests of its own.
"""
from __future__ import annotations

import os

import numpy as np

from megatron.core.datasets.indexed_dataset import IndexedDataset, IndexedDatasetBuilder

NUM_WORDS = 120
NUM_SENTINELS = 100


class FakeWordPieceTokenizer:
    """Ids 0-4 are [PAD] [UNK] [CLS] [SEP] [MASK]; then whole words, then ``##`` pieces,
    then [BOS] [EOS] and the T5 sentinels ``<extra_id_N>``."""

    def __init__(self, num_sentinels=NUM_SENTINELS):
        tokens = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        tokens += [f"w{i}" for i in range(NUM_WORDS)]
        tokens += [f"##p{i}" for i in range(NUM_WORDS // 2)]
        tokens += ["[BOS]", "[EOS]"]
        tokens += [f"<extra_id_{i}>" for i in range(num_sentinels)]
        self.vocab = {t: i for i, t in enumerate(tokens)}
        self.inv_vocab = {i: t for t, i in self.vocab.items()}
        self.vocab_size = len(tokens)
        self.pad, self.cls, self.sep, self.mask = 0, 2, 3, 4
        self.bos, self.eos = self.vocab["[BOS]"], self.vocab["[EOS]"]
        self.additional_special_tokens_ids = [self.vocab[f"<extra_id_{i}>"] for i in range(num_sentinels)]
        self.word_ids = np.arange(5, 5 + NUM_WORDS)
        self.piece_ids = np.arange(5 + NUM_WORDS, 5 + NUM_WORDS + NUM_WORDS // 2)


def random_sentence(rng, tokenizer, length):
    """Words, each followed by 0-2 ``##`` pieces, cut to ``length`` tokens (>= 1)."""
    out = []
    while len(out) < length:
        out.append(int(rng.choice(tokenizer.word_ids)))
        out.extend(int(x) for x in rng.choice(tokenizer.piece_ids, size=rng.integers(0, 3)))
    return out[:length]


def write_sentence_corpus(prefix, documents, dtype=np.uint16):
    """``documents`` is a list of documents, each a list of sentences (token lists)."""
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=dtype)
    for doc in documents:
        tokens = np.array([t for sentence in doc for t in sentence], dtype=np.int64)
        builder.add_document(tokens, [len(s) for s in doc])
    builder.finalize(prefix + ".idx")
    return IndexedDataset(prefix)


def make_sentence_corpus(prefix, tokenizer, num_docs=60, seed=0, max_sentences=8,
                         sentence_length=(3, 30)):
    rng = np.random.default_rng(seed)
    documents = []
    for _ in range(num_docs):
        n = int(rng.integers(1, max_sentences + 1))
        documents.append([random_sentence(rng, tokenizer, int(rng.integers(*sentence_length)))
                          for _ in range(n)])
    return write_sentence_corpus(prefix, documents), documents


def make_titles(prefix, tokenizer, num_docs, seed=1):
    rng = np.random.default_rng(seed)
    titles = [[random_sentence(rng, tokenizer, int(rng.integers(1, 6)))] for _ in range(num_docs)]
    return write_sentence_corpus(prefix, titles)


def make_document_corpus(prefix, num_docs=50, seed=0, length=(1, 200), vocab=1000):
    """GPT-style data: one sequence per document of random int32 tokens."""
    rng = np.random.default_rng(seed)
    docs = [rng.integers(0, vocab, size=int(rng.integers(*length))) for _ in range(num_docs)]
    os.makedirs(os.path.dirname(prefix), exist_ok=True)
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    for doc in docs:
        builder.add_document(doc, [len(doc)])
    builder.finalize(prefix + ".idx")
    return IndexedDataset(prefix), docs
