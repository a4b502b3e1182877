"""ORQA data: NQ-open question files tokenised for the query tower and the reader, and the frozen
evidence (corpus + block-embedding store + faiss index) that retrieval reads.

The evidence embeddings are the store ``tools/create_doc_index.py`` wrote (``--block-data-path``);
they are memory-mapped read-only and never re-embedded, as in ORQA and REALM fine-tuning.
"""
import os
from functools import lru_cache
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron.retrieval.evidence import question_tokens, read_qa_file


class QAExamples:
    """Questions with their answers: ``[CLS] question [SEP]`` tokens (``--question-seq-length``) and
    each answer's WordPiece ids (the gold spans are looked up by these)."""

    def __init__(self, paths: Sequence[str], tokenizer, seq_length: int, flag: str):
        self.questions: List[str] = []
        self.answers: List[List[str]] = []
        for path in paths:
            if not os.path.isfile(path):
                raise ValueError(f"{flag} {path}: file not found")
            questions, answers = read_qa_file(path)
            self.questions += questions
            self.answers += answers
        if not self.questions:
            raise ValueError(f"{flag} {' '.join(paths)}: holds no questions")
        pairs = [question_tokens(tokenizer, q, seq_length) for q in self.questions]
        self.tokens = np.stack([t for t, _ in pairs])  # [n, sq]
        self.pad_mask = np.stack([m for _, m in pairs])
        self.answer_ids = [[tokenizer.tokenize(a) for a in answers] for answers in self.answers]

    def __len__(self) -> int:
        return len(self.questions)

    def batch(self, indices: Sequence[int]) -> dict:
        indices = np.asarray(indices, dtype=np.int64)
        return {"index": torch.from_numpy(indices), "tokens": torch.from_numpy(self.tokens[indices]),
                "pad_mask": torch.from_numpy(self.pad_mask[indices])}


class FrozenEvidence:
    """The corpus, its frozen embeddings and a faiss index over them; ``retrieve`` gives the
    top-k blocks (ids, embeddings, tokens) of query embeddings, or k random blocks."""

    def __init__(self, corpus, store_path: str, index_factory: str = "Flat", nprobe: int = 16,
                 use_gpu: bool = False, cache_blocks: int = 100_000):
        from megatron.retrieval.block_store import BlockData
        from megatron.retrieval.faiss_index import FaissMIPSIndex

        from tasks.orqa.evaluate import _store_matches

        if not store_path:
            raise ValueError("--block-data-path is required: the frozen evidence embeddings "
                             "(build them with tools/create_doc_index.py)")
        matches, reason = _store_matches(store_path, corpus.all_row_ids())
        if not matches:
            raise ValueError(f"--block-data-path {store_path}: "
                             + (reason or "no block store there (build it with tools/create_doc_index.py)"))
        self.corpus = corpus
        self.store_path = store_path
        self.store = BlockData.load(store_path, mmap=True)
        ids = np.asarray(self.store.ids(), dtype=np.int64)
        self._store_order = np.argsort(ids, kind="stable")
        self._store_sorted = ids[self._store_order]
        self._embeddings = self.store.embeddings()  # read-only memory map: never written
        corpus_ids = np.asarray(corpus.all_row_ids(), dtype=np.int64)
        self._corpus_order = np.argsort(corpus_ids, kind="stable")
        self._corpus_sorted = corpus_ids[self._corpus_order]
        self.index = FaissMIPSIndex(self.store.embedding_dim, block_data=self.store, use_gpu=use_gpu,
                                    index_factory=index_factory, nprobe=nprobe)
        self._tokens = lru_cache(maxsize=cache_blocks)(self._block_tokens)

    def __len__(self) -> int:
        return len(self._store_sorted)

    def _block_tokens(self, row_id: int) -> Tuple[np.ndarray, np.ndarray]:
        position = int(self._corpus_order[np.searchsorted(self._corpus_sorted, row_id)])
        item = self.corpus[position]
        return item["tokens"], item["pad_mask"]

    def embeddings_of(self, ids: np.ndarray) -> np.ndarray:
        rows = self._store_order[np.searchsorted(self._store_sorted, ids.reshape(-1))]
        return np.asarray(self._embeddings[rows], dtype=np.float32).reshape(*ids.shape, -1)

    def tokens_of(self, ids: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        pairs = [self._tokens(int(i)) for i in ids.reshape(-1)]
        tokens = np.stack([t for t, _ in pairs]).reshape(*ids.shape, -1)
        pad_mask = np.stack([m for _, m in pairs]).reshape(*ids.shape, -1)
        return tokens, pad_mask

    def passage_text(self, row_id: int) -> str:
        return self.corpus.passage(int(row_id))[0]

    def top_k(self, query_embeddings: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search_mips_index(np.asarray(query_embeddings, dtype=np.float32), k)
        if (ids < 0).any():
            raise ValueError(f"the faiss index returned fewer than {k} blocks for a question (an approximate "
                             f"--faiss-index-factory with too few lists probed? raise --faiss-nprobe)")
        return ids.astype(np.int64)

    def random_k(self, question_indices: Sequence[int], k: int, seed: int, epoch: int) -> np.ndarray:
        """k distinct random blocks per question, the same on every rank for a question and epoch."""
        out = []
        for q in question_indices:
            rng = np.random.RandomState((seed * 1_000_003 + int(q) * 7919 + epoch) % (2 ** 32))
            out.append(self._store_sorted[rng.choice(len(self._store_sorted), size=k, replace=False)])
        return np.stack(out)

    def retriever(self, k: int, device, random_retrieval: bool = False, question_indices: Optional[Sequence[int]] = None,
                  seed: int = 0, epoch: int = 0):
        """The ``retrieve`` callable ``ORQAModel.forward`` takes."""

        def retrieve(query_embeddings: torch.Tensor):
            if random_retrieval:
                ids = self.random_k(question_indices, k, seed, epoch)
                block_embeddings = None
            else:
                ids = self.top_k(query_embeddings.float().cpu().numpy(), k)
                block_embeddings = torch.from_numpy(self.embeddings_of(ids)).to(device)
            tokens, pad_mask = self.tokens_of(ids)
            return (torch.from_numpy(ids), block_embeddings, torch.from_numpy(tokens).long().to(device),
                    torch.from_numpy(pad_mask).long().to(device))

        return retrieve
