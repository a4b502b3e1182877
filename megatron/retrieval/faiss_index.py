"""``FaissMIPSIndex``: maximum-inner-product search over a ``BlockData`` store with faiss.

- ``index_factory="Flat"`` (default): exact search, ``IndexFlatIP``; results equal the
  brute-force top-k of ``queries @ embeddings.T``.
- Any other faiss factory string (``"IVF1024,Flat"``, ``"HNSW32"``, ``"IVF4096,PQ64"``...):
  approximate search for large stores. The index is trained on (a sample of) the vectors of
  the first ``add_*`` call, so add the whole store at once (``add_block_data`` does).
  ``nprobe`` sets how many IVF lists a query visits (nprobe = nlist is exact over the lists);
  for HNSW the search breadth ``efSearch`` is ``max(nprobe, top_k)``.

The searchable index is always wrapped in ``IndexIDMap2`` so results carry block ids and
``reconstruct`` can return stored vectors by id. With ``use_gpu`` the inner index is
copied to every visible GPU (sharded, fp16 storage), as Megatron-LM's 2021 code does.

faiss is imported on first use (``require_faiss``): importing this module needs only NumPy.
"""

import numpy as np

__all__ = ["FaissMIPSIndex", "require_faiss", "require_sentence_transformers"]

# Rows converted fp16 -> fp32 per add: bounds the temporary fp32 copy (65536 x 768 x 4 B = 200 MB).
ADD_CHUNK_ROWS = 65536
# Cap on training vectors for factories without IVF (PQ, HNSW...): faiss subsamples too.
MAX_TRAIN_ROWS = 262144
_EXTRA_HINT = "pip install 'megatron-lite[retrieval]'"


def require_faiss():
    """The ``faiss`` module, or a one-line ImportError naming the extra that provides it."""
    try:
        import faiss
    except ImportError:
        raise ImportError(f"faiss is not installed: {_EXTRA_HINT} (or faiss-cpu / faiss-gpu)") from None
    return faiss


def require_sentence_transformers():
    """The ``sentence_transformers`` module, or a one-line ImportError naming the extra."""
    try:
        import sentence_transformers
    except ImportError:
        raise ImportError(f"sentence-transformers is not installed: {_EXTRA_HINT} "
                          "(or sentence-transformers)") from None
    return sentence_transformers


def _as_float32_matrix(x, what: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; avoids importing torch here
        x = x.detach().float().cpu().numpy()
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"FaissMIPSIndex: {what} must be 2-D [n, dim], got shape {x.shape}")
    return np.ascontiguousarray(x, dtype=np.float32)


class FaissMIPSIndex:
    """Inner-product index over block embeddings, keyed by block id."""

    def __init__(self, embed_size: int, block_data=None, use_gpu: bool = False,
                 index_factory: str = "Flat", nprobe: int = 16):
        if int(embed_size) <= 0:
            raise ValueError(f"FaissMIPSIndex: embed_size must be positive, got {embed_size}")
        if int(nprobe) < 1:
            raise ValueError(f"--faiss-nprobe must be >= 1, got {nprobe}")
        factory = (index_factory or "Flat").strip()
        if "IDMap" in factory:
            raise ValueError(f"--faiss-index-factory {index_factory!r}: leave out IDMap, "
                             "ids are attached by FaissMIPSIndex")
        self.embed_size = int(embed_size)
        self.index_factory = factory
        self.nprobe = int(nprobe)
        self.use_gpu = bool(use_gpu)
        self.faiss = require_faiss()
        if self.use_gpu:
            num_gpus = self.faiss.get_num_gpus() if hasattr(self.faiss, "get_num_gpus") else 0
            if num_gpus == 0:
                raise RuntimeError("--faiss-use-gpu was given but faiss sees no GPU "
                                   "(faiss.get_num_gpus() == 0): install faiss-gpu on a GPU "
                                   "machine or drop --faiss-use-gpu")
        self.index = None
        self._build_index()
        if block_data is not None:
            self.add_block_data(block_data)

    @property
    def is_exact(self) -> bool:
        return self.index_factory == "Flat"

    def __len__(self) -> int:
        return int(self.index.ntotal) if self.index is not None else 0

    # ---- building -------------------------------------------------------------------
    def _build_index(self) -> None:
        """An empty index; approximate ones stay untrained until the first add."""
        faiss = self.faiss
        try:
            if self.is_exact:
                self._inner = faiss.IndexFlatIP(self.embed_size)
            else:
                self._inner = faiss.index_factory(self.embed_size, self.index_factory,
                                                  faiss.METRIC_INNER_PRODUCT)
        except RuntimeError as exc:
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"--faiss-index-factory {self.index_factory!r} is not a valid "
                             f"faiss factory string for dim {self.embed_size}: {first}") from None
        self._trained = bool(self._inner.is_trained)
        self.index = None
        if self._trained:
            self._wrap()

    def _wrap(self) -> None:
        faiss = self.faiss
        inner = self._inner
        ivf = self._ivf()
        if ivf is not None:
            # IndexIDMap2 reconstructs through the inner index by position: IVF needs a direct map.
            ivf.set_direct_map_type(faiss.DirectMap.Array)
        if self.use_gpu:
            options = faiss.GpuMultipleClonerOptions()
            options.shard = True
            options.useFloat16 = True
            inner = faiss.index_cpu_to_all_gpus(inner, co=options)
        self._device_inner = inner
        self.index = faiss.IndexIDMap2(inner)

    def _ivf(self):
        return self.faiss.try_extract_index_ivf(self._inner)

    def _train(self, embeddings: np.ndarray) -> None:
        n = len(embeddings)
        ivf = self._ivf()
        if ivf is not None:
            if n < ivf.nlist:
                raise ValueError(
                    f"--faiss-index-factory {self.index_factory!r} has {ivf.nlist} IVF lists and "
                    f"needs at least {ivf.nlist} training vectors, got {n}: use fewer lists or "
                    "--faiss-index-factory Flat for a small store")
            cap = 256 * ivf.nlist  # faiss's own k-means sample cap per centroid
        else:
            cap = MAX_TRAIN_ROWS
        if n > cap:
            rows = np.sort(np.random.default_rng(0).choice(n, size=cap, replace=False))
            sample = np.asarray(embeddings[rows], dtype=np.float32)
        else:
            sample = np.asarray(embeddings, dtype=np.float32)
        try:
            self._inner.train(np.ascontiguousarray(sample))
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ValueError(f"--faiss-index-factory {self.index_factory!r}: training on {len(sample)} "
                             f"vectors failed (too few for this index?): {last}") from None
        self._trained = True
        self._wrap()

    def reset_index(self) -> None:
        """Drop every vector (and any training): the next add starts a fresh index."""
        self._build_index()

    def update_index(self, block_data) -> None:
        """Rebuild from ``block_data`` (a ``BlockData`` or a path ``BlockData.load`` reads)."""
        if isinstance(block_data, str):
            from megatron.retrieval.block_store import BlockData

            block_data = BlockData.load(block_data)
        self.reset_index()
        self.add_block_data(block_data)

    # ---- adding ---------------------------------------------------------------------
    def add_block_data(self, block_data) -> None:
        """Add every (id, embedding) of a ``BlockData`` store."""
        if len(block_data) == 0:
            return
        self.add_embed_data(block_data.ids(), block_data.embeddings())

    def add_embed_data(self, ids, embeddings) -> None:
        """Add ``embeddings[i]`` under block id ``ids[i]``; fp16 is widened chunk by chunk."""
        ids = np.asarray(ids)
        if ids.ndim != 1 or not np.issubdtype(ids.dtype, np.integer):
            raise ValueError(f"FaissMIPSIndex: ids must be a 1-D integer array, got {ids.dtype} "
                             f"{ids.shape}")
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if hasattr(embeddings, "detach"):
            embeddings = embeddings.detach().cpu().numpy()
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape != (len(ids), self.embed_size):
            raise ValueError(f"FaissMIPSIndex: embeddings must be [{len(ids)}, {self.embed_size}] "
                             f"(ids x embed size), got {embeddings.shape}")
        if len(ids) == 0:
            return
        uniq = np.sort(ids)
        repeated = np.flatnonzero(uniq[1:] == uniq[:-1])
        if len(repeated):
            raise ValueError(f"FaissMIPSIndex: block id {int(uniq[repeated[0]])} appears twice in one add")
        if self.index is not None and self.index.ntotal:
            stored = self.faiss.vector_to_array(self.index.id_map)
            clash = np.intersect1d(stored, uniq)
            if len(clash):
                raise ValueError(f"FaissMIPSIndex: block id {int(clash[0])} is already in the index "
                                 f"({len(clash)} clashing ids); reset_index() to rebuild")
        if not self._trained:
            self._train(embeddings)
        for start in range(0, len(ids), ADD_CHUNK_ROWS):
            stop = min(start + ADD_CHUNK_ROWS, len(ids))
            chunk = np.ascontiguousarray(embeddings[start:stop], dtype=np.float32)
            self.index.add_with_ids(chunk, ids[start:stop])

    # ---- searching ------------------------------------------------------------------
    def _set_search_params(self, top_k: int) -> None:
        ivf = self._ivf()
        if ivf is not None:
            ps = self.faiss.GpuParameterSpace() if self.use_gpu else self.faiss.ParameterSpace()
            ps.set_index_parameter(self._device_inner, "nprobe", min(self.nprobe, ivf.nlist))
        inner = self.faiss.downcast_index(self._inner)
        if hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = max(self.nprobe, top_k)

    def search_mips_index(self, queries, top_k: int, reconstruct: bool = False):
        """Top-``top_k`` blocks by inner product for each query row.

        Returns ``(scores float32 [q, k], ids int64 [q, k])``, best first, and with
        ``reconstruct`` also the stored vectors ``float32 [q, k, d]`` (fp16 values widened).
        An approximate index may find fewer than k blocks for a query: those slots hold
        id -1, score -inf and a zero vector.
        """
        q = _as_float32_matrix(queries, "queries")
        if q.shape[1] != self.embed_size:
            raise ValueError(f"FaissMIPSIndex: query dim {q.shape[1]} != index embed size "
                             f"{self.embed_size}")
        top_k = int(top_k)
        if top_k < 1:
            raise ValueError(f"FaissMIPSIndex: top_k must be >= 1, got {top_k}")
        if len(self) == 0:
            raise ValueError("FaissMIPSIndex: the index is empty; add block data before searching")
        if top_k > len(self):
            raise ValueError(f"FaissMIPSIndex: top_k {top_k} exceeds the {len(self)} indexed blocks "
                             "(lower --faiss-topk-retrievals)")
        self._set_search_params(top_k)
        scores, ids = self.index.search(q, top_k)
        scores = scores.astype(np.float32, copy=False)
        ids = ids.astype(np.int64, copy=False)
        missing = ids < 0
        if missing.any():
            scores[missing] = -np.inf
        if not reconstruct:
            return scores, ids
        vectors = np.zeros((q.shape[0], top_k, self.embed_size), np.float32)
        found = np.flatnonzero(~missing.reshape(-1))
        flat = vectors.reshape(-1, self.embed_size)
        try:
            flat[found] = self.index.reconstruct_batch(ids.reshape(-1)[found])
        except RuntimeError as exc:
            last = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise RuntimeError(f"FaissMIPSIndex: index {self.index_factory!r} cannot reconstruct "
                               f"vectors: {last}") from None
        return scores, ids, vectors
