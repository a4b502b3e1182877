"""Held-out inverse-cloze retrieval: does the retriever find the block a sentence was cut from?

The documents of one split (by default ``test`` of ``--split``, which ICT training never sees) are cut
into blocks exactly as for training. From every block one sentence is drawn and removed, so the
block in the index no longer contains it. Each removed sentence is a query; it is a hit at k when its
own block is among the k best-scored blocks of the whole held-out corpus. Every retriever sees the
same queries and blocks (sample ``i`` is seeded by ``seed + i``), so their numbers compare directly.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Dict, List, Sequence

import numpy as np
import torch


@dataclasses.dataclass
class HeldoutSet:
    """Queries and blocks as token arrays with pad masks; ``block_ids[i]`` is query ``i``'s block."""
    query_tokens: np.ndarray  # [n, s] int64
    query_pad_mask: np.ndarray  # [n, s]
    block_tokens: np.ndarray  # [n, s]
    block_pad_mask: np.ndarray  # [n, s]
    block_ids: np.ndarray  # [n] int64

    def __len__(self) -> int:
        return len(self.block_ids)


def build_heldout_set(dataset, max_queries: int = 0) -> HeldoutSet:
    """Read an ``ICTDataset`` built with ``query_in_block_prob=0`` over one epoch of the held-out
    documents; ``max_queries`` > 0 keeps the first that many (the mapping is shuffled)."""
    if dataset.query_in_block_prob != 0.0:
        raise ValueError("held-out evaluation removes the query from its block: build the dataset with "
                         f"query_in_block_prob=0, not {dataset.query_in_block_prob}")
    count = len(dataset) if max_queries <= 0 else min(max_queries, len(dataset))
    if count == 0:
        raise ValueError("the held-out documents make no blocks: use a larger held-out split")
    samples = [dataset[i] for i in range(count)]

    def stack(key):
        return np.stack([np.asarray(s[key], dtype=np.int64) for s in samples])

    block_ids = np.array([int(s["block_data"][3]) for s in samples], dtype=np.int64)
    if len(np.unique(block_ids)) != len(block_ids):
        raise ValueError("held-out block ids repeat: build the dataset for exactly one epoch")
    return HeldoutSet(stack("query_tokens"), stack("query_pad_mask"), stack("context_tokens"),
                      stack("context_pad_mask"), block_ids)


EmbedFn = Callable[[np.ndarray, np.ndarray], np.ndarray]


def embed_in_batches(embed: EmbedFn, tokens: np.ndarray, pad_mask: np.ndarray, batch_size: int) -> np.ndarray:
    """``embed(tokens, pad_mask) -> [b, d]`` over the rows ``batch_size`` at a time, as float32."""
    parts = [np.asarray(embed(tokens[i:i + batch_size], pad_mask[i:i + batch_size]), dtype=np.float32)
             for i in range(0, len(tokens), batch_size)]
    return np.concatenate(parts, axis=0)


def retrieval_ranks(query_embeddings: np.ndarray, block_embeddings: np.ndarray) -> np.ndarray:
    """The rank (0 = best) of each query's own block (row ``i`` of the blocks) by inner product.

    Exact: every block is scored. A tie with the own block counts against it (the pessimistic rank),
    so a retriever that scores everything equal is not credited with hits.
    """
    scores = torch.from_numpy(query_embeddings) @ torch.from_numpy(block_embeddings).T  # [n, n]
    own = scores.diagonal().unsqueeze(1)
    others = scores >= own
    others.fill_diagonal_(False)
    return others.sum(dim=1).numpy()


def topk_accuracies(ranks: np.ndarray, ks: Sequence[int]) -> Dict[int, float]:
    """Percentage of queries whose own block ranks within the first k."""
    return {k: 100.0 * float(np.mean(ranks < k)) for k in ks}


def random_topk_accuracies(num_blocks: int, ks: Sequence[int]) -> Dict[int, float]:
    """The exact expectation for a retriever that ranks blocks uniformly at random: min(k, n) / n."""
    return {k: 100.0 * min(k, num_blocks) / num_blocks for k in ks}


def format_table(rows: List[tuple], ks: Sequence[int], num_queries: int) -> str:
    """A fixed-width table of ``(name, {k: accuracy})`` rows."""
    header = f"{'retriever':<34}" + "".join(f"{'top-' + str(k):>10}" for k in ks)
    lines = [f"held-out ICT retrieval: {num_queries} queries over {num_queries} blocks (accuracy, %)",
             header, "-" * len(header)]
    for name, accuracies in rows:
        lines.append(f"{name:<34}" + "".join(f"{accuracies[k]:>10.2f}" for k in ks))
    return "\n".join(lines)
