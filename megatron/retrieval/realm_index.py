"""REALM's evidence index: block embeddings of the whole corpus, searched by maximum inner product,
refreshed with the current context tower.

* ``REALMIndex``: the embeddings ``[N, d]`` of a ``BlockCorpus`` (kept in corpus order, values
  rounded to float16 as the block store keeps them, so a reloaded index equals the live one), the
  document of every block, and the iteration of the weights that built it (``built_at``).
  ``retrieve`` takes the top blocks for each query, drops the blocks of the query's own document
  (REALM drops the source; with it the reader would only copy the answer), and prepends the null
  document. Search is one matrix product for small stores and faiss (``FaissMIPSIndex``) above
  ``matmul_max_blocks`` (or as chosen).
* ``embed_corpus_sync``: the synchronous refresh. Each data-parallel rank embeds a contiguous share
  of the blocks (``indexer.shard_range``), then the shares are all-gathered over the data-parallel
  group; tensor-parallel peers compute the same embeddings. Training pauses meanwhile.
* Snapshots: after every refresh of a run with ``--save``, global rank 0 writes the index as a
  block store ``<save>/realm_index/built_at_<iteration>`` (the newest two are kept), so a resumed
  run searches exactly the index the uninterrupted run searched.
"""
import os
import re
import shutil
import time
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megatron.retrieval.indexer import shard_range

SNAPSHOT_DIR = "realm_index"
SNAPSHOTS_KEPT = 2
_SNAPSHOT_RE = re.compile(r"^built_at_(\d{7,})$")


class REALMIndexError(ValueError):
    """An index that does not fit its corpus or the requested search; the message names the path or flag."""


def fp16_rounded(embeddings: np.ndarray) -> np.ndarray:
    """float32 values of the float16 a block store keeps."""
    return np.asarray(embeddings, dtype=np.float32).astype(np.float16).astype(np.float32)


class REALMIndex:
    """Block embeddings of ``corpus`` (a ``BlockCorpus``) in corpus order, searchable by MIPS."""

    def __init__(self, corpus, embeddings: np.ndarray, built_at: int, search: str = "auto",
                 matmul_max_blocks: int = 65536, faiss_index_factory: str = "Flat", faiss_nprobe: int = 16):
        if embeddings.ndim != 2 or embeddings.shape[0] != len(corpus):
            raise REALMIndexError(f"the index has {embeddings.shape[0]} embeddings but the corpus {len(corpus)} blocks")
        if search not in ("auto", "matmul", "faiss"):
            raise REALMIndexError(f"--realm-mips {search}: expected auto, matmul or faiss")
        self.corpus = corpus
        self.embeddings = fp16_rounded(embeddings)
        self.built_at = int(built_at)
        mapping = np.asarray(corpus.mapping, dtype=np.int64)
        self.block_docs = mapping[:, 2].copy()
        self.block_ids = mapping[:, 3].copy()
        self.max_blocks_per_doc = int(np.bincount(self.block_docs).max())
        self.use_faiss = search == "faiss" or (search == "auto" and len(corpus) > matmul_max_blocks)
        self._matrix = torch.from_numpy(self.embeddings)
        self._faiss = None
        if self.use_faiss:
            from megatron.retrieval.faiss_index import FaissMIPSIndex

            self._faiss = FaissMIPSIndex(self.embeddings.shape[1], index_factory=faiss_index_factory,
                                         nprobe=faiss_nprobe)
            # Faiss ids are corpus positions, so results index the corpus directly.
            self._faiss.add_embed_data(np.arange(len(corpus), dtype=np.int64), self.embeddings)
        null_tokens, null_pad = corpus.ict.get_null_block()
        self.null_tokens = torch.from_numpy(np.asarray(null_tokens, dtype=np.int64))
        self.null_pad_mask = torch.from_numpy(np.asarray(null_pad, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.block_docs)

    def _top(self, queries: np.ndarray, n: int) -> Tuple[np.ndarray, np.ndarray]:
        """(corpus positions [b, n], scores [b, n]), best first."""
        if self._faiss is not None:
            scores, positions = self._faiss.search_mips_index(queries, n)
            return positions, scores
        scores = torch.from_numpy(queries) @ self._matrix.t()  # [b, N]
        top = torch.topk(scores, n, dim=1)
        return top.indices.numpy(), top.values.numpy()

    def search(self, queries: torch.Tensor, query_docs: torch.Tensor, num_retrieved: int):
        """Top ``num_retrieved`` corpus positions per query, blocks of the query's own document left
        out; and, per query, whether a block of its own document was in the top ``num_retrieved``
        before the exclusion. ``queries [b, d]``, ``query_docs [b]`` (absolute document indices)."""
        q = queries.detach().float().cpu().numpy()
        docs = query_docs.detach().cpu().numpy().astype(np.int64)
        wanted = num_retrieved + self.max_blocks_per_doc
        if num_retrieved + self.max_blocks_per_doc > len(self):
            if num_retrieved > len(self) - self.max_blocks_per_doc:
                raise REALMIndexError(f"--realm-num-candidates {num_retrieved + 1} needs {num_retrieved} blocks from "
                                      f"other documents, but the corpus has {len(self)} blocks and up to "
                                      f"{self.max_blocks_per_doc} in one document")
            wanted = len(self)
        positions, _ = self._top(q, wanted)
        own = self.block_docs[np.clip(positions, 0, None)] == docs[:, None]  # [b, wanted]
        own_in_topk = own[:, :num_retrieved].any(axis=1)
        kept = np.empty((len(q), num_retrieved), dtype=np.int64)
        for row in range(len(q)):
            others = positions[row][~own[row] & (positions[row] >= 0)]
            if len(others) < num_retrieved:
                raise REALMIndexError(f"the index returned {len(others)} blocks outside the query's document, "
                                      f"fewer than {num_retrieved} (an approximate --faiss-index-factory with too "
                                      f"small --faiss-nprobe?)")
            kept[row] = others[:num_retrieved]
        return kept, own_in_topk

    def candidate_tokens(self, positions: np.ndarray) -> Tuple[torch.Tensor, torch.Tensor]:
        """``[b, 1 + n, s]`` tokens and pad masks of the null document followed by ``positions [b, n]``."""
        b, n = positions.shape
        s = self.null_tokens.shape[0]
        tokens = torch.empty((b, n + 1, s), dtype=torch.long)
        pad = torch.empty((b, n + 1, s), dtype=torch.long)
        tokens[:, 0] = self.null_tokens
        pad[:, 0] = self.null_pad_mask
        for row in range(b):
            for slot in range(n):
                item = self.corpus[int(positions[row, slot])]
                tokens[row, slot + 1] = torch.from_numpy(np.asarray(item["tokens"], dtype=np.int64))
                pad[row, slot + 1] = torch.from_numpy(np.asarray(item["pad_mask"], dtype=np.int64))
        return tokens, pad


# -- building the embeddings ------------------------------------------------------------------------
EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def embed_positions(embed_fn: EmbedFn, corpus, first: int, last: int, batch_size: int,
                    device: torch.device) -> np.ndarray:
    """float32 ``[last - first, d]`` embeddings of corpus positions ``[first, last)``."""
    parts = []
    with torch.no_grad():
        for start in range(first, last, batch_size):
            items = [corpus[i] for i in range(start, min(last, start + batch_size))]
            tokens = torch.from_numpy(np.stack([np.asarray(it["tokens"], dtype=np.int64) for it in items]))
            pad = torch.from_numpy(np.stack([np.asarray(it["pad_mask"], dtype=np.int64) for it in items]))
            parts.append(embed_fn(tokens.to(device), pad.to(device)).detach().float().cpu().numpy())
    if not parts:
        return np.zeros((0, 0), np.float32)
    return np.concatenate(parts)


def embed_corpus_sync(embed_fn: EmbedFn, corpus, dp_rank: int, dp_size: int, dp_group, batch_size: int,
                      device: torch.device) -> np.ndarray:
    """Every block's embedding ``[N, d]`` on every rank: a contiguous share per data-parallel rank,
    then an all-gather over ``dp_group`` (shares padded to the largest)."""
    first, last = shard_range(len(corpus), dp_rank, dp_size)
    mine = fp16_rounded(embed_positions(embed_fn, corpus, first, last, batch_size, device))
    if dp_size == 1:
        return mine
    dim = torch.tensor([mine.shape[1] if len(mine) else 0], dtype=torch.long, device=device)
    dist.all_reduce(dim, op=dist.ReduceOp.MAX, group=dp_group)
    largest = max(shard_range(len(corpus), r, dp_size)[1] - shard_range(len(corpus), r, dp_size)[0]
                  for r in range(dp_size))
    local = torch.zeros((largest, int(dim.item())), dtype=torch.float32, device=device)
    if len(mine):
        local[:len(mine)] = torch.from_numpy(mine).to(device)
    gathered = [torch.empty_like(local) for _ in range(dp_size)]
    dist.all_gather(gathered, local, group=dp_group)
    shares = []
    for rank, tensor in enumerate(gathered):
        lo, hi = shard_range(len(corpus), rank, dp_size)
        shares.append(tensor[:hi - lo].cpu().numpy())
    return np.concatenate(shares)


# -- stores and snapshots ---------------------------------------------------------------------------
def embeddings_from_store(path: str, corpus) -> np.ndarray:
    """The embeddings of a ``BlockData`` store (``tools/create_doc_index.py`` output) in corpus order;
    the store must hold exactly the corpus's block ids."""
    from megatron.retrieval.block_store import BlockData, BlockStoreError

    try:
        store = BlockData.load(path)
    except (BlockStoreError, OSError) as error:
        raise REALMIndexError(f"--block-data-path {path}: {error}") from None
    ids = store.ids()
    wanted = np.asarray(corpus.all_row_ids(), dtype=np.int64)
    if len(ids) != len(wanted) or not np.array_equal(ids, np.sort(wanted)):
        raise REALMIndexError(f"--block-data-path {path}: the store holds {len(ids)} blocks, not the {len(wanted)} "
                              f"blocks of the corpus (index it again with tools/create_doc_index.py and the same "
                              f"--data-path, --titles-data-path, --seq-length and --seed)")
    return np.asarray(store.embeddings(), dtype=np.float32)[np.searchsorted(ids, wanted)]


def snapshot_path(checkpoint_dir: str, built_at: int) -> str:
    return os.path.join(checkpoint_dir, SNAPSHOT_DIR, f"built_at_{built_at:07d}")


def save_snapshot(checkpoint_dir: str, index: REALMIndex) -> str:
    """Write ``index`` as a block store under ``checkpoint_dir`` (atomic); drop all but the newest kept."""
    from megatron.retrieval.block_store import BlockData

    path = snapshot_path(checkpoint_dir, index.built_at)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    store = BlockData(index.embeddings.shape[1])
    mapping = np.asarray(index.corpus.mapping, dtype=np.int64)
    store.add_block_data(index.block_ids, index.embeddings.astype(np.float16), mapping[:, :3])
    store.save(path)
    parent = os.path.dirname(path)
    built = sorted((int(m.group(1)), name) for name in os.listdir(parent) if (m := _SNAPSHOT_RE.match(name)))
    for _, name in built[:-SNAPSHOTS_KEPT]:
        shutil.rmtree(os.path.join(parent, name), ignore_errors=True)
    return path


def newest_snapshot_at_or_before(checkpoint_dir: str, iteration: int) -> Optional[int]:
    """``built_at`` of the newest snapshot under ``checkpoint_dir`` built at or before ``iteration``."""
    parent = os.path.join(checkpoint_dir, SNAPSHOT_DIR)
    if not os.path.isdir(parent):
        return None
    built = [int(m.group(1)) for name in os.listdir(parent) if (m := _SNAPSHOT_RE.match(name))]
    built = [b for b in built if b <= iteration]
    return max(built) if built else None


def load_snapshot(checkpoint_dir: str, built_at: int, corpus) -> Optional[np.ndarray]:
    path = snapshot_path(checkpoint_dir, built_at)
    if not os.path.isdir(path):
        return None
    try:
        return embeddings_from_store(path, corpus)
    except REALMIndexError:
        return None


class RefreshTimer:
    """Seconds of the last refresh, for the iteration lines."""

    def __init__(self):
        self.last_seconds = 0.0
        self._start = None

    def __enter__(self):
        self._start = time.time()
        return self

    def __exit__(self, *exc):
        self.last_seconds = time.time() - self._start
        return False
