"""``BlockData``: block id -> fp16 embedding, with optional (start, end, doc) metadata.

The indexer embeds every block of a corpus with the context tower; each data-parallel rank
adds its blocks here, saves a shard, and rank 0 merges the shards into one store that the
MIPS index (``faiss_index.FaissMIPSIndex``) loads.

On-disk formats (chosen by the path; ``BlockData.load`` reads both):

1. **Store directory** (preferred; any path not ending in ``.pkl``), format
   ``megatron-lite-block-store`` version 1::

       PATH/manifest.json    {"format": "megatron-lite-block-store", "version": 1,
                              "count": N, "dim": D, "dtype": "float16", "has_meta": bool}
       PATH/ids.npy          int64 [N], strictly increasing (sorted, no duplicates)
       PATH/embeddings.npy   float16 [N, D], row i is the embedding of ids[i]
       PATH/meta.npy         int64 [N, 3], row i is (start, end, doc) of ids[i]; only if has_meta

   Plain ``.npy`` files, so a 21M x 768 store (32 GB) is memory-mapped rather than read.
   The directory is written under a temporary name beside ``PATH`` and renamed into place
   (an existing store is renamed away first and deleted after), so ``PATH`` is either the
   old complete store or the new complete one.

2. **Megatron-compatible pickle** (``PATH`` ends in ``.pkl``): a pickled dict
   ``{"embed_data": {id: float16 vector}, "meta_data": {id: [start, end, doc]}}``, the state
   Megatron-LM's 2020 ``BlockData`` pickled (``meta_data`` is ``{}`` without metadata).
   Loading never unpickles arbitrary classes: only the numpy array/scalar/dtype constructors
   needed for those dicts are allowed, so a hostile pickle cannot run code.

Shards: ``save_shard(path, rank)`` writes a store directory ``shard_dir(path)/rank{rank:05d}``;
``BlockData.merge_shards_and_save(path, world_size)`` (rank 0, after a barrier) loads them all,
refuses overlapping ids, optionally checks that the union is exactly the expected ids, saves
the merged store to ``path`` and removes the shard directory.

No torch import: merging and inspecting stores works in a bare NumPy environment.
"""
import itertools
import json
import os
import pickle
import shutil
import threading
from typing import List, Optional, Tuple

import numpy as np

from megatron.core.fileio import fsync_dir

__all__ = ["BlockData", "BlockStoreError", "shard_dir", "FORMAT_NAME", "FORMAT_VERSION"]

FORMAT_NAME = "megatron-lite-block-store"
FORMAT_VERSION = 1
_MANIFEST = "manifest.json"
_COUNTER = itertools.count()


class BlockStoreError(ValueError):
    """A store on disk is missing, malformed or inconsistent; the message names the path."""


def shard_dir(path: str) -> str:
    """The directory holding per-rank shards of the store that will be saved at ``path``."""
    base = path[:-4] if path.endswith(".pkl") else path.rstrip(os.sep)
    return base + "_tmp"


def _shard_path(path: str, rank: int) -> str:
    return os.path.join(shard_dir(path), f"rank{rank:05d}")


# A "run" is (ids sorted ascending, embeddings fp16 [n, d], meta int64 [n, 3] or None).
_Run = Tuple[np.ndarray, np.ndarray, Optional[np.ndarray]]


def _merge_runs(runs: List[_Run]) -> _Run:
    """Merge id-disjoint sorted runs into one sorted run, copying every row once."""
    if len(runs) == 1:
        return runs[0]
    ids = np.concatenate([r[0] for r in runs])
    order = np.argsort(ids, kind="stable")
    emb = np.concatenate([r[1] for r in runs])[order]
    meta = None if runs[0][2] is None else np.concatenate([r[2] for r in runs])[order]
    return ids[order], emb, meta


def _first_duplicate(sorted_ids: np.ndarray) -> Optional[int]:
    if len(sorted_ids) < 2:
        return None
    dup = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
    return int(sorted_ids[dup[0]]) if len(dup) else None


class BlockData:
    """Block id -> float16 embedding (+ optional int64 (start, end, doc) metadata).

    Rows are kept as a few sorted, id-disjoint runs that are merged when a new run is about
    as large as the one before it (a log-structured merge), so adding a batch at a time costs
    O(log n) duplicate checks per id and every row is copied O(log n) times in total, rather
    than re-sorting the whole store on every batch.
    """

    def __init__(self, embedding_dim: Optional[int] = None):
        if embedding_dim is not None and int(embedding_dim) <= 0:
            raise ValueError(f"BlockData embedding_dim must be positive, got {embedding_dim}")
        self._dim = None if embedding_dim is None else int(embedding_dim)
        self._runs: List[_Run] = []
        self._has_meta: Optional[bool] = None
        self._cleared = False

    # ---- contents -------------------------------------------------------------------
    @property
    def embedding_dim(self) -> Optional[int]:
        return self._dim

    @property
    def has_meta(self) -> bool:
        return bool(self._has_meta)

    @property
    def cleared(self) -> bool:
        """True after ``clear()``: ids and metadata remain, embeddings are gone."""
        return self._cleared

    def __len__(self) -> int:
        return sum(len(r[0]) for r in self._runs)

    def __repr__(self) -> str:
        return (f"BlockData(count={len(self)}, dim={self._dim}, has_meta={self.has_meta}, "
                f"cleared={self._cleared})")

    def _consolidated(self) -> _Run:
        if not self._runs:
            dim = self._dim or 0
            meta = np.zeros((0, 3), np.int64) if self._has_meta else None
            return np.zeros(0, np.int64), np.zeros((0, dim), np.float16), meta
        if len(self._runs) > 1:
            self._runs = [_merge_runs(self._runs)]
        return self._runs[0]

    def ids(self) -> np.ndarray:
        """All block ids, int64, sorted ascending."""
        return self._consolidated()[0]

    def embeddings(self) -> np.ndarray:
        """float16 [n, d], row i belongs to ``ids()[i]``."""
        if self._cleared:
            raise ValueError("BlockData.embeddings(): the embeddings were dropped by clear(); "
                             "load the store again to search it")
        return self._consolidated()[1]

    def meta(self) -> Optional[np.ndarray]:
        """int64 [n, 3] (start, end, doc) rows aligned with ``ids()``, or None without metadata."""
        return self._consolidated()[2]

    def clear(self) -> None:
        """Drop the embeddings (e.g. once they are in a faiss index), keep ids and metadata."""
        self._consolidated()
        self._runs = [(r[0], np.zeros((len(r[0]), 0), np.float16), r[2]) for r in self._runs]
        self._cleared = True

    # ---- adding ---------------------------------------------------------------------
    def add_block_data(self, ids, embeddings, meta=None, allow_overwrite: bool = False) -> None:
        """Add ``embeddings[i]`` (stored as fp16) under ``ids[i]``, with optional ``meta[i]``.

        A repeated id (inside the call or against stored ids) is an error naming the id,
        unless ``allow_overwrite``: then the last value given wins.
        """
        if self._cleared:
            raise ValueError("BlockData.add_block_data: this store was clear()ed; "
                             "start a new BlockData")
        ids = np.asarray(ids)
        if ids.ndim != 1 or not (np.issubdtype(ids.dtype, np.integer) or ids.size == 0):
            raise ValueError(f"BlockData ids must be a 1-D integer array, got shape {ids.shape} "
                             f"dtype {ids.dtype}")
        ids = ids.astype(np.int64, copy=False)
        embeddings = np.asarray(embeddings)
        if embeddings.ndim != 2 or embeddings.shape[0] != len(ids):
            raise ValueError(f"BlockData embeddings must be [{len(ids)}, dim] to match the ids, "
                             f"got shape {embeddings.shape}")
        if not np.issubdtype(embeddings.dtype, np.floating):
            raise ValueError(f"BlockData embeddings must be floating point, got {embeddings.dtype}")
        if self._dim is None:
            self._dim = int(embeddings.shape[1])
        elif embeddings.shape[1] != self._dim:
            raise ValueError(f"BlockData embedding dim {embeddings.shape[1]} does not match "
                             f"the store's dim {self._dim}")
        if meta is not None:
            meta = np.asarray(meta)
            if meta.shape != (len(ids), 3):
                raise ValueError(f"BlockData meta must be [{len(ids)}, 3] (start, end, doc), "
                                 f"got shape {meta.shape}")
            meta = meta.astype(np.int64)
        if self._has_meta is None:
            self._has_meta = meta is not None
        elif self._has_meta != (meta is not None):
            raise ValueError("BlockData.add_block_data: every batch must "
                             + ("carry meta (the store has metadata)" if self._has_meta
                                else "omit meta (the store has no metadata)"))
        if len(ids) == 0:
            return

        order = np.argsort(ids, kind="stable")
        s_ids = ids[order]
        if allow_overwrite:
            # Keep the last occurrence of each id inside the call.
            last = np.ones(len(s_ids), bool)
            last[:-1] = s_ids[1:] != s_ids[:-1]
            order, s_ids = order[last], s_ids[last]
        else:
            dup = _first_duplicate(s_ids)
            if dup is not None:
                raise ValueError(f"BlockData.add_block_data: block id {dup} appears twice in "
                                 "this batch (pass allow_overwrite=True to replace)")
        new_runs = []
        for run in self._runs:
            pos = np.searchsorted(run[0], s_ids)
            pos_ok = pos < len(run[0])
            hit = np.zeros(len(s_ids), bool)
            hit[pos_ok] = run[0][pos[pos_ok]] == s_ids[pos_ok]
            if hit.any():
                if not allow_overwrite:
                    raise ValueError(f"BlockData.add_block_data: block id {int(s_ids[hit][0])} "
                                     "is already stored (pass allow_overwrite=True to replace)")
                keep = np.ones(len(run[0]), bool)
                keep[pos[hit]] = False
                run = (run[0][keep], run[1][keep], None if run[2] is None else run[2][keep])
            if len(run[0]):
                new_runs.append(run)
        emb = embeddings[order].astype(np.float16, copy=False)
        new_runs.append((s_ids, emb, None if meta is None else meta[order]))
        while len(new_runs) >= 2 and len(new_runs[-2][0]) <= 2 * len(new_runs[-1][0]):
            new_runs[-2:] = [_merge_runs(new_runs[-2:])]
        self._runs = new_runs

    # ---- saving ---------------------------------------------------------------------
    def save(self, path: str) -> None:
        """Save atomically: a ``.pkl`` path gets the Megatron pickle, any other a store dir."""
        if self._cleared:
            raise ValueError(f"BlockData.save({path}): the embeddings were dropped by clear()")
        if path.endswith(".pkl"):
            self._save_pickle(path)
        else:
            self._save_dir(path)

    def _save_pickle(self, path: str) -> None:
        from megatron.core.fileio import atomic_open

        ids, emb, meta = self._consolidated()
        id_list = ids.tolist()
        # Row copies, so each pickled vector holds only its own bytes, not a view of the matrix.
        state = {"embed_data": {i: np.array(row) for i, row in zip(id_list, emb)},
                 "meta_data": ({} if meta is None else dict(zip(id_list, meta.tolist())))}
        with atomic_open(path, "wb") as f:
            pickle.dump(state, f, protocol=4)

    def _save_dir(self, path: str) -> None:
        ids, emb, meta = self._consolidated()
        path = path.rstrip(os.sep) or path
        if os.path.isfile(path):
            raise BlockStoreError(f"{path}: exists and is a file, not a block store directory; "
                                  "use a .pkl path for the pickle format or remove it")
        if os.path.isdir(path) and os.listdir(path) and not os.path.exists(
                os.path.join(path, _MANIFEST)):
            raise BlockStoreError(f"{path}: exists and is not a block store (no {_MANIFEST}); "
                                  "refusing to replace it")
        parent = os.path.dirname(os.path.abspath(path))
        os.makedirs(parent, exist_ok=True)
        tag = f"{os.getpid()}-{threading.get_ident()}-{next(_COUNTER)}"
        tmp = os.path.join(parent, f".{os.path.basename(path)}.tmp-{tag}")
        old = os.path.join(parent, f".{os.path.basename(path)}.old-{tag}")
        os.makedirs(tmp)
        try:
            _write_npy(os.path.join(tmp, "ids.npy"), ids)
            _write_npy(os.path.join(tmp, "embeddings.npy"), emb)
            if meta is not None:
                _write_npy(os.path.join(tmp, "meta.npy"), meta)
            manifest = {"format": FORMAT_NAME, "version": FORMAT_VERSION, "count": int(len(ids)),
                        "dim": int(emb.shape[1]), "dtype": "float16", "has_meta": meta is not None}
            # The manifest goes last: a directory without one was never completed.
            with open(os.path.join(tmp, _MANIFEST), "w", encoding="utf-8") as f:
                json.dump(manifest, f, indent=1)
                f.write("\n")
                f.flush()
                os.fsync(f.fileno())
            fsync_dir(tmp)
            if os.path.exists(path):
                os.rename(path, old)
            os.rename(tmp, path)
            fsync_dir(parent)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
            shutil.rmtree(old, ignore_errors=True)

    def save_shard(self, path: str, rank: int) -> None:
        """Write this rank's part to ``shard_dir(path)/rank{rank:05d}`` (store dir, atomic)."""
        if int(rank) < 0:
            raise ValueError(f"BlockData.save_shard: rank must be >= 0, got {rank}")
        os.makedirs(shard_dir(path), exist_ok=True)
        self._save_dir(_shard_path(path, int(rank)))

    # ---- loading --------------------------------------------------------------------
    @classmethod
    def load(cls, path: str, mmap: bool = True) -> "BlockData":
        """Load either format; a store directory is memory-mapped (read-only) when ``mmap``."""
        if not os.path.exists(path):
            raise BlockStoreError(f"{path}: block store not found")
        if os.path.isdir(path):
            ids, emb, meta = _read_dir(path, mmap)
        else:
            ids, emb, meta = _read_pickle(path)
        store = cls(embedding_dim=emb.shape[1] if emb.shape[1] else None)
        store._has_meta = meta is not None
        if len(ids):
            store._runs = [(ids, emb, meta)]
        return store

    @classmethod
    def merge_shards_and_save(cls, path: str, world_size: int,
                              expected_ids: Optional[np.ndarray] = None) -> "BlockData":
        """Merge the ``world_size`` rank shards of ``path``, check them, save, drop the shards.

        Overlapping ids between shards, a missing shard, or (with ``expected_ids``) any id
        missing from or extra to the expected set is an error; the shards are then kept so
        the run can be inspected or resumed.
        """
        if int(world_size) < 1:
            raise ValueError(f"merge_shards_and_save: world_size must be >= 1, got {world_size}")
        shards = []
        for rank in range(int(world_size)):
            spath = _shard_path(path, rank)
            if not os.path.isdir(spath):
                raise BlockStoreError(f"{spath}: shard of rank {rank} (of {world_size}) is missing;"
                                      " did every rank finish save_shard before the merge?")
            shards.append(_read_dir(spath, mmap=True))
        dims = {s[1].shape[1] for s in shards if len(s[0])}
        if len(dims) > 1:
            raise BlockStoreError(f"{shard_dir(path)}: shards disagree on embedding dim {sorted(dims)}")
        metas = {s[2] is not None for s in shards}
        if len(metas) > 1:
            raise BlockStoreError(f"{shard_dir(path)}: some shards have metadata and some do not")

        all_ids = np.concatenate([s[0] for s in shards])
        owner = np.repeat(np.arange(len(shards)), [len(s[0]) for s in shards])
        order = np.argsort(all_ids, kind="stable")
        sorted_ids = all_ids[order]
        same = np.flatnonzero(sorted_ids[1:] == sorted_ids[:-1])
        if len(same):
            i = same[0]
            raise BlockStoreError(
                f"{shard_dir(path)}: {len(same)} block id(s) appear in more than one shard, e.g. "
                f"id {int(sorted_ids[i])} in rank {owner[order[i]]} and rank {owner[order[i + 1]]}")
        if expected_ids is not None:
            _check_coverage(path, sorted_ids, np.asarray(expected_ids, dtype=np.int64))

        dim = dims.pop() if dims else (shards[0][1].shape[1] if shards else 0)
        has_meta = metas.pop()
        emb = np.empty((len(sorted_ids), dim), np.float16)
        meta = np.empty((len(sorted_ids), 3), np.int64) if has_meta else None
        # Place each shard's rows straight into their final positions: one copy, no concat.
        for s_ids, s_emb, s_meta in shards:
            pos = np.searchsorted(sorted_ids, s_ids)
            emb[pos] = s_emb
            if meta is not None:
                meta[pos] = s_meta
        merged = cls(embedding_dim=dim or None)
        merged._has_meta = has_meta
        if len(sorted_ids):
            merged._runs = [(sorted_ids, emb, meta)]
        merged.save(path)
        shutil.rmtree(shard_dir(path))
        return merged


def _check_coverage(path: str, got: np.ndarray, expected: np.ndarray) -> None:
    expected = np.unique(expected)
    missing = np.setdiff1d(expected, got, assume_unique=True)
    extra = np.setdiff1d(got, expected, assume_unique=True)
    if len(missing) or len(extra):
        raise BlockStoreError(
            f"{shard_dir(path)}: shards cover {len(got)} blocks, expected {len(expected)}: "
            f"{len(missing)} missing (e.g. {missing[:5].tolist()}), "
            f"{len(extra)} unexpected (e.g. {extra[:5].tolist()})")


def _write_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())


def _read_dir(path: str, mmap: bool) -> _Run:
    mpath = os.path.join(path, _MANIFEST)
    if not os.path.isfile(mpath):
        raise BlockStoreError(f"{path}: not a block store directory ({_MANIFEST} is missing)")
    try:
        with open(mpath, encoding="utf-8") as f:
            manifest = json.load(f)
    except (OSError, ValueError) as exc:
        raise BlockStoreError(f"{mpath}: unreadable manifest ({exc})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT_NAME:
        found = manifest.get("format") if isinstance(manifest, dict) else None
        raise BlockStoreError(f"{mpath}: format is {found!r}, expected {FORMAT_NAME!r}")
    if manifest.get("version") != FORMAT_VERSION:
        raise BlockStoreError(f"{mpath}: version {manifest.get('version')!r} is not supported "
                              f"(this code reads version {FORMAT_VERSION})")
    if manifest.get("dtype") != "float16":
        raise BlockStoreError(f"{mpath}: dtype {manifest.get('dtype')!r}, expected 'float16'")
    try:
        count, dim, has_meta = int(manifest["count"]), int(manifest["dim"]), bool(manifest["has_meta"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BlockStoreError(f"{mpath}: bad or missing field ({exc})") from None

    def read(name, dtype, shape):
        fpath = os.path.join(path, name)
        if not os.path.isfile(fpath):
            raise BlockStoreError(f"{fpath}: missing (listed by {_MANIFEST})")
        try:
            arr = np.load(fpath, mmap_mode="r" if mmap else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise BlockStoreError(f"{fpath}: unreadable .npy ({exc})") from None
        if arr.dtype != np.dtype(dtype) or arr.shape != shape:
            raise BlockStoreError(f"{fpath}: {arr.dtype} {list(arr.shape)}, expected {np.dtype(dtype)} "
                                  f"{list(shape)} (ids/embeddings length mismatch or corrupt store)")
        return arr

    ids = read("ids.npy", np.int64, (count,))
    emb = read("embeddings.npy", np.float16, (count, dim))
    meta = read("meta.npy", np.int64, (count, 3)) if has_meta else None
    if count > 1:
        steps = np.diff(ids)
        if (steps <= 0).any():
            i = int(np.flatnonzero(steps <= 0)[0])
            what = "duplicate id" if steps[i] == 0 else "ids not sorted at id"
            raise BlockStoreError(f"{os.path.join(path, 'ids.npy')}: {what} {int(ids[i + 1])} "
                                  f"(row {i + 1})")
    return ids, emb, meta


# ---- Megatron pickle ----------------------------------------------------------------
def _numpy_attr(modules, name):
    import importlib

    for mod in modules:
        try:
            return getattr(importlib.import_module(mod), name)
        except (ImportError, AttributeError):
            continue
    return None


class _RestrictedUnpickler(pickle.Unpickler):
    """Resolves only the globals a pickled dict of numpy arrays/scalars needs."""

    _ALLOWED = {
        ("numpy", "ndarray"), ("numpy", "dtype"),
        ("numpy.core.multiarray", "_reconstruct"), ("numpy._core.multiarray", "_reconstruct"),
        ("numpy.core.multiarray", "scalar"), ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"), ("numpy._core.numeric", "_frombuffer"),
        ("_codecs", "encode"),
    }

    def find_class(self, module, name):
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"global {module}.{name} is not allowed in a block store")
        if module == "_codecs":
            import _codecs
            return _codecs.encode
        if module == "numpy":
            return getattr(np, name)
        # numpy 2 moved numpy.core to numpy._core; accept pickles written by either.
        tail = module.split(".", 2)[-1]
        obj = _numpy_attr([f"numpy._core.{tail}", f"numpy.core.{tail}"], name)
        if obj is None:
            raise pickle.UnpicklingError(f"numpy has no {module}.{name}")
        return obj


def _read_pickle(path: str) -> _Run:
    try:
        with open(path, "rb") as f:
            state = _RestrictedUnpickler(f).load()
    except pickle.UnpicklingError as exc:
        raise BlockStoreError(f"{path}: refused to load pickle: {exc}") from None
    except (OSError, EOFError, ValueError, TypeError) as exc:
        raise BlockStoreError(f"{path}: unreadable pickle ({type(exc).__name__}: {exc})") from None
    if not isinstance(state, dict) or not isinstance(state.get("embed_data"), dict):
        raise BlockStoreError(f"{path}: expected a pickled dict with an 'embed_data' dict "
                              "(Megatron BlockData state)")
    embed_data = state["embed_data"]
    meta_data = state.get("meta_data") or {}
    if not isinstance(meta_data, dict):
        raise BlockStoreError(f"{path}: 'meta_data' is {type(meta_data).__name__}, expected a dict")
    try:
        keys = [int(k) for k in embed_data]
        ids = np.array(keys, dtype=np.int64)
        vectors = [np.asarray(v) for v in embed_data.values()]
    except (TypeError, ValueError) as exc:
        raise BlockStoreError(f"{path}: embed_data keys must be integer ids ({exc})") from None
    dims = {v.shape for v in vectors}
    if len(dims) > 1 or any(len(d) != 1 for d in dims):
        raise BlockStoreError(f"{path}: embed_data vectors must be 1-D of one length, "
                              f"found shapes {sorted(dims)[:4]}")
    kinds = {v.dtype.kind for v in vectors}
    if kinds - {"f"}:
        raise BlockStoreError(f"{path}: embed_data vectors have dtype kinds {sorted(kinds)}, "
                              "expected floating point")
    dim = dims.pop()[0] if dims else 0
    emb = np.stack(vectors).astype(np.float16) if vectors else np.zeros((0, dim), np.float16)
    meta = None
    if meta_data:
        try:
            meta_keys = {int(k) for k in meta_data}
        except (TypeError, ValueError) as exc:
            raise BlockStoreError(f"{path}: meta_data keys must be integer ids ({exc})") from None
        if meta_keys != set(keys):
            raise BlockStoreError(f"{path}: meta_data covers {len(meta_keys)} ids but embed_data "
                                  f"{len(keys)}; they must hold the same ids")
        by_id = {int(k): v for k, v in meta_data.items()}
        try:
            meta = np.array([np.asarray(by_id[k], dtype=np.int64).reshape(3) for k in keys],
                            dtype=np.int64).reshape(-1, 3)
        except (TypeError, ValueError) as exc:
            raise BlockStoreError(f"{path}: meta_data values must be [start, end, doc] ({exc})") from None
    order = np.argsort(ids, kind="stable")
    ids = ids[order]
    dup = _first_duplicate(ids)
    if dup is not None:
        raise BlockStoreError(f"{path}: duplicate block id {dup}")
    return ids, emb[order], None if meta is None else meta[order]
