"""The RETRO retrieval index in stages (NeMo's recipe) and the KNN neighbour map, on faiss.

- ``build_empty_index``: NeMo's default ``IVF(4*sqrt(chunks)),PQ(m)`` with an inner-product
  coarse quantizer, ``--no_pq`` IVF-Flat, or any ``--faiss_factory`` string; checked against the
  training sample *before* anything is embedded (``check_training_size``).
- stage 0 ``train_index``: train on embeddings of a sample of chunks, write the empty index.
- stage 1 ``add_to_index``: add a shard's embeddings with the chunk ids as faiss ids.
- stage 2 ``merge_index_shards``: IVF shards merge into on-disk inverted lists
  (``faiss.contrib.ondisk.merge_ondisk``); other indexes (e.g. ``Flat``) merge in memory.
- ``query_neighbours`` / ``remove_same_document``: the KNN map rows, with NeMo's dedup.

Indexes are written atomically (temporary dot-name in the same directory, fsync, rename), so a
killed job leaves no half-written file under a final name and a shard glob never sees one.
A merged IVF index keeps its lists in ``<index>.<token>.ivfdata`` next to it; read it with
``read_index`` (faiss's IO_FLAG_ONDISK_SAME_DIR), which finds that file wherever the pair is moved.
"""
import glob
import math
import os
import re
import secrets

import numpy as np

from megatron.core.fileio import fsync_dir
from megatron.retrieval.faiss_index import require_faiss

__all__ = ["IndexPlanError", "build_empty_index", "check_training_size", "index_memory_bytes", "write_index",
           "read_index", "train_index", "add_to_index", "merge_index_shards", "query_neighbours",
           "remove_same_document", "shard_range", "to_gpus"]

_IVF = re.compile(r"IVF(\d+)")


class IndexPlanError(ValueError):
    """An index that cannot be built from the given sample or dimensions (one line)."""


def default_nlist(total_chunks):
    return max(1, int(4 * math.sqrt(total_chunks)))


def factory_string(total_chunks, factory=None, no_pq=False, subquantizers=8):
    """The faiss factory string of the index the flags ask for."""
    if factory:
        return factory
    nlist = default_nlist(total_chunks)
    return f"IVF{nlist},Flat" if no_pq else f"IVF{nlist},PQ{subquantizers}"


def check_training_size(factory, train_size, dim=None):
    """One-line errors for a sample too small for the index (NeMo's ``30*nlist < train`` rule for
    IVF, 256 points for PQ codebooks) and, once ``dim`` is known, for dimensions PQ cannot split."""
    match = _IVF.search(factory)
    if match:
        nlist = int(match.group(1))
        if 30 * nlist >= train_size:
            fit = max(1, (train_size - 1) // 30)
            raise IndexPlanError(
                f"--train_index_size {train_size} is too small for {nlist} IVF lists ({factory}): it needs more "
                f"than 30 x nlist = {30 * nlist} chunks; raise --train_index_size, or use a smaller index, e.g. "
                f"--faiss_factory IVF{fit},Flat (or Flat for an exact index)")
    pq = re.search(r"PQ(\d+)", factory)
    if pq:
        m = int(pq.group(1))
        if dim is not None and dim % m:
            raise IndexPlanError(f"PQ{m} needs the embedding size {dim} to be a multiple of {m} "
                                 f"(--subquantizers or --faiss_factory)")
        if train_size < 256:
            raise IndexPlanError(f"--train_index_size {train_size} is too small for PQ codebooks (256 centroids "
                                 f"each); raise it to at least 256 or use --no_pq")


def build_empty_index(dim, factory, metric="IP"):
    """An untrained index; non-IVF indexes are wrapped in ``IndexIDMap2`` so they keep chunk ids."""
    faiss = require_faiss()
    metric_type = {"IP": faiss.METRIC_INNER_PRODUCT, "L2": faiss.METRIC_L2}[metric]
    try:
        index = faiss.index_factory(dim, factory, metric_type)
    except RuntimeError as e:
        first = str(e).strip().splitlines()[-1] if str(e).strip() else "invalid"
        raise IndexPlanError(f"--faiss_factory {factory}: faiss cannot build it ({first})") from None
    if not _is_ivf(index) and not isinstance(index, (faiss.IndexIDMap, faiss.IndexIDMap2)):
        index = faiss.IndexIDMap2(index)
    return index


def _is_ivf(index):
    faiss = require_faiss()
    try:
        faiss.extract_index_ivf(index)
        return True
    except RuntimeError:
        return False


def index_memory_bytes(index, vectors, dim):
    """Rough bytes of ``index`` holding ``vectors`` vectors: codes, ids, and IVF centroids."""
    faiss = require_faiss()
    code = index.sa_code_size() if hasattr(index, "sa_code_size") else 4 * dim
    extra = 0
    if _is_ivf(index):
        extra = faiss.extract_index_ivf(index).nlist * dim * 4
    return vectors * (code + 8) + extra


def to_gpus(index):
    """``index`` copied to every GPU when faiss has GPU support and sees a GPU, else unchanged."""
    faiss = require_faiss()
    if not hasattr(faiss, "get_num_gpus") or faiss.get_num_gpus() == 0:
        return index
    options = faiss.GpuMultipleClonerOptions()
    options.shard, options.useFloat16 = True, True
    return faiss.index_cpu_to_all_gpus(index, co=options)


def to_cpu(index):
    faiss = require_faiss()
    return faiss.index_gpu_to_cpu(index) if hasattr(faiss, "index_gpu_to_cpu") and "Gpu" in type(index).__name__ \
        else index


def _temp_path(path):
    directory = os.path.dirname(os.path.abspath(path))
    return os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")


def write_index(index, path):
    """``faiss.write_index`` published atomically."""
    faiss = require_faiss()
    tmp = _temp_path(path)
    try:
        faiss.write_index(to_cpu(index), tmp)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    fsync_dir(os.path.dirname(os.path.abspath(path)))


def read_index(path, mmap=False):
    """``mmap`` is for shards only: faiss crashes searching an on-disk-lists index opened with IO_FLAG_MMAP."""
    faiss = require_faiss()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such faiss index")
    flags = faiss.IO_FLAG_ONDISK_SAME_DIR | (faiss.IO_FLAG_MMAP if mmap else 0)
    return faiss.read_index(path, flags)


def train_index(index, embeddings):
    if not index.is_trained:
        index.train(np.ascontiguousarray(embeddings, dtype=np.float32))
    return index


def add_to_index(index, blocks):
    """Add ``(chunk ids, embeddings)`` blocks with the chunk ids as faiss ids; returns vectors added."""
    added = 0
    for ids, embeddings in blocks:
        index.add_with_ids(np.ascontiguousarray(embeddings, dtype=np.float32), ids.astype(np.int64))
        added += len(ids)
    return added


def merge_index_shards(trained_index_path, shard_prefix, output_path, log=print):
    """Stage 2: every ``<shard_prefix>*`` shard index into ``output_path``; returns its size."""
    shards = sorted(p for p in glob.glob(shard_prefix + "*")
                    if os.path.abspath(p) != os.path.abspath(output_path) and not p.endswith(".ivfdata"))
    if not shards:
        raise FileNotFoundError(f"--shard_index_input {shard_prefix}: no shard index matches {shard_prefix}*")
    index = read_index(trained_index_path)
    if index.ntotal:
        raise IndexPlanError(f"--learned_index {trained_index_path}: holds {index.ntotal} vectors; stage 2 "
                             f"needs the empty trained index of stage 0")
    for path in shards:
        shard = read_index(path, mmap=True)
        if shard.d != index.d or type(shard) is not type(index):
            raise IndexPlanError(f"{path}: a {type(shard).__name__} of dimension {shard.d} does not match the "
                                 f"trained {type(index).__name__} of dimension {index.d}")
    log(f" > merging {len(shards)} shards: {', '.join(os.path.basename(p) for p in shards)}")
    if _is_ivf(index):
        from faiss.contrib.ondisk import merge_ondisk

        # A fresh lists file per merge: the published index names it, and an older pair stays valid
        # until the rename below replaces the index.
        ivfdata = f"{os.path.abspath(output_path)}.{secrets.token_hex(4)}.ivfdata"
        try:
            merge_ondisk(index, shards, ivfdata)
            with open(ivfdata, "rb+") as f:
                os.fsync(f.fileno())
            write_index(index, output_path)
        except BaseException:
            if os.path.exists(ivfdata):
                os.unlink(ivfdata)
            raise
        for stale in glob.glob(f"{glob.escape(os.path.abspath(output_path))}.*.ivfdata"):
            if stale != ivfdata:
                os.unlink(stale)
    else:
        for path in shards:
            index.merge_from(read_index(path))
        write_index(index, output_path)
    return index.ntotal


def shard_range(total, shard_id, total_shards):
    """NeMo's split: equal shards of ``total // total_shards``, the last takes the remainder."""
    if total_shards < 1 or not 0 <= shard_id < total_shards:
        raise ValueError(f"--shard_id {shard_id} must lie in [0, --total_shards {total_shards})")
    size = total // total_shards
    start = shard_id * size
    return start, total if shard_id == total_shards - 1 else start + size


def query_neighbours(index, embeddings, k, nprobe=None):
    """Top-``k`` chunk ids per query (−1 where the index has fewer)."""
    faiss = require_faiss()
    if nprobe is not None and _is_ivf(index):
        faiss.extract_index_ivf(index).nprobe = nprobe
    _, ids = index.search(np.ascontiguousarray(embeddings, dtype=np.float32), k)
    return ids


def remove_same_document(neighbours, first, end, k):
    """Drop neighbours inside each query's own document ``[first, end)``, keep order, the first ``k``;
    unfilled slots are −1 (NeMo's ``--remove_duplicate``)."""
    neighbours = np.asarray(neighbours, dtype=np.int64)
    drop = ((neighbours >= np.asarray(first)[:, None]) & (neighbours < np.asarray(end)[:, None])) | (neighbours < 0)
    order = np.argsort(drop, axis=1, kind="stable")  # kept neighbours first, in rank order
    kept = np.take_along_axis(neighbours, order, axis=1)
    kept[np.arange(kept.shape[1])[None, :] >= (~drop).sum(axis=1)[:, None]] = -1
    if kept.shape[1] < k:
        kept = np.pad(kept, ((0, 0), (0, k - kept.shape[1])), constant_values=-1)
    return kept[:, :k]
