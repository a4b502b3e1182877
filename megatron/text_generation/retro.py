"""Retrieval-augmented generation with a RETRO model (NeMo's retro strategy: re-query every chunk).

Each time a chunk of ``m`` tokens is complete (prompt tokens included), its text is embedded with
the sentence-transformers encoder the faiss index was built with, the index returns its ``k``
nearest database chunks, and their ``2m`` tokens (chunk and continuation) condition every later
position through CCA. Without a retriever every neighbour is blank (all padding), which is what
validation without retrieval feeds, so greedy decoding then equals a forward with blanked
neighbours. Decoding recomputes the whole prefix at every step (CCA's neighbours change the
encoder's inputs chunk by chunk, so there is no KV cache here).
"""
from typing import Callable, List, Optional, Sequence

import numpy as np
import torch
import torch.distributed as dist

from megatron.text_generation.sampling import SamplingParams, sample


class FaissRetriever:
    """Chunk token ids -> ``[k, 2m]`` neighbour tokens from the retrieval database."""

    def __init__(self, db, index, encoder, tokenizer, num_neighbors: int, nprobe: Optional[int] = None):
        self.db, self.index, self.encoder, self.tokenizer = db, index, encoder, tokenizer
        self.num_neighbors, self.nprobe = num_neighbors, nprobe
        if index.ntotal != db.chunks:
            raise ValueError(f"the faiss index holds {index.ntotal} vectors but the retrieval DB has {db.chunks} chunks")

    def __call__(self, chunk_tokens: Sequence[int]) -> np.ndarray:
        from megatron.retrieval.retro_index import query_neighbours

        pad = self.db.pad_id
        text = self.tokenizer.detokenize([int(t) for t in chunk_tokens if int(t) != pad])
        embedding = self.encoder.encode([text], convert_to_numpy=True).astype(np.float32)
        ids = query_neighbours(self.index, embedding, self.num_neighbors, self.nprobe)[0]
        return neighbour_rows(self.db, ids, 2 * self.db.chunk_size, pad)


def neighbour_rows(db, ids: np.ndarray, width: int, pad_id: int) -> np.ndarray:
    """DB rows ``[len(ids), width]`` for chunk ids, all padding where an id is -1."""
    ids = np.asarray(ids, dtype=np.int64)
    out = np.full((len(ids), width), pad_id, dtype=np.int64)
    found = ids >= 0
    if found.any():
        out[found] = db.get_chunks(ids[found]).astype(np.int64)
    return out


def _agree(token: torch.Tensor, pg) -> torch.Tensor:
    """Tensor-parallel ranks keep the token their first rank sampled (sampling draws may differ)."""
    if pg is not None and pg.tensor_model_parallel_size > 1:
        dist.broadcast(token, src=pg.tp_src_rank, group=pg.tp)
    return token


@torch.no_grad()
def generate_retro(model: torch.nn.Module, prompt: Sequence[int], tokens_to_generate: int,
                   params: SamplingParams, retriever: Optional[Callable[[Sequence[int]], np.ndarray]],
                   max_length: int, eod: Optional[int] = None, vocab_size: Optional[int] = None,
                   generator: Optional[torch.Generator] = None, pg=None) -> List[int]:
    """The prompt followed by up to ``tokens_to_generate`` tokens (stopping after ``eod``).

    ``model`` is a ``RetroModel`` (unwrapped or wrapped) returning full-vocabulary logits;
    ``retriever`` maps a completed chunk's tokens to ``[k, 2m]`` neighbours, None for retrieval off.
    """
    core = model
    while not hasattr(core, "retro") and hasattr(core, "module"):
        core = core.module
    m, k, pad = core.retro.chunk_size, core.retro.num_neighbors, core.retro.pad_id
    device = next(core.parameters()).device
    tokens = [int(t) for t in prompt]
    if not tokens:
        raise ValueError("an empty prompt: give at least one token (unconditional samples start from eod)")
    neighbours: List[np.ndarray] = []
    blank = np.full((k, 2 * m), pad, dtype=np.int64)
    for _ in range(tokens_to_generate):
        if len(tokens) >= max_length:
            break
        while len(neighbours) < len(tokens) // m:
            u = len(neighbours)
            neighbours.append(retriever(tokens[u * m:(u + 1) * m]) if retriever is not None else blank)
        ids = torch.tensor([tokens], dtype=torch.long, device=device)
        retrieved = torch.from_numpy(np.stack(neighbours)[None] if neighbours else
                                     np.zeros((1, 0, k, 2 * m), dtype=np.int64)).to(device)
        logits = model(ids, retrieved_ids=retrieved)[:, -1, :]  # [1, v]
        token = _agree(sample(logits, params, vocab_size, generator), pg)
        tokens.append(int(token.item()))
        if eod is not None and tokens[-1] == eod:
            break
    return tokens
