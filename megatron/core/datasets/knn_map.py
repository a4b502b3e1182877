"""NeMo's RETRO neighbour map (``KNNRETM``): for each training chunk, the ids of K retrieval chunks.

Byte-compatible with NeMo v1.20's ``KNNIndex`` files:

    magic b"KNNRETM\\x00\\x00" | uint64 version 1 | uint64 K | uint64 rows n | uint64 first chunk id
    | int64 neighbours[n, K]

Row r holds the neighbours of training chunk ``first chunk id + r``; a slot with no neighbour
(after removing same-document neighbours) is -1. A file made by one shard of the map covers
a contiguous range of training chunks; ``merge_knn_files`` joins shards that tile a range.

The writer streams rows (memory bounded by one block), back-patches the row count when it
closes and publishes the file atomically (temporary name in the same directory, fsync, rename).
"""
import glob
import os
import secrets
import struct

import numpy as np

from megatron.core.fileio import fsync_dir

__all__ = ["KNN_MAGIC", "KNNMapWriter", "KNNMap", "merge_knn_files", "KNNMapError"]

KNN_MAGIC = b"KNNRETM\x00\x00"
_HEADER = struct.Struct("<9sQQQQ")  # magic, version, K, rows, first chunk id
_COPY_ROWS = 1 << 16


class KNNMapError(ValueError):
    """A KNN map file that is missing, malformed, or does not fit with others."""


class KNNMapWriter:
    """Write a KNN map block by block: ``with KNNMapWriter(path, K, start) as w: w.write(rows)``."""

    def __init__(self, path, k, chunk_start_id=0):
        if k < 1:
            raise ValueError(f"{path}: K {k} must be at least 1")
        self.path = os.fspath(path)
        self.k, self.chunk_start_id, self.rows = int(k), int(chunk_start_id), 0
        directory = os.path.dirname(os.path.abspath(self.path))
        # A dot name: a shard glob (``prefix*``) never picks up a half-written file.
        self._tmp = os.path.join(directory, f".{os.path.basename(self.path)}.tmp-{os.getpid()}-{secrets.token_hex(4)}")
        self._file = open(self._tmp, "xb")
        self._file.write(_HEADER.pack(KNN_MAGIC, 1, self.k, 0, self.chunk_start_id))
        self._done = False

    def write(self, neighbours):
        neighbours = np.asarray(neighbours)
        if neighbours.ndim != 2 or neighbours.shape[1] != self.k:
            raise ValueError(f"{self.path}: expected rows of K={self.k} neighbours, got shape {neighbours.shape}")
        self._file.write(np.ascontiguousarray(neighbours, dtype="<i8").data)
        self.rows += len(neighbours)

    def close(self):
        """Back-patch the row count and publish the file."""
        if self._done:
            return
        try:
            self._file.seek(0)
            self._file.write(_HEADER.pack(KNN_MAGIC, 1, self.k, self.rows, self.chunk_start_id))
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            os.replace(self._tmp, self.path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        fsync_dir(os.path.dirname(os.path.abspath(self.path)))

    def abort(self):
        self._done = True
        try:
            self._file.close()
        except OSError:
            pass
        if os.path.exists(self._tmp):
            os.unlink(self._tmp)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        else:
            self.abort()
        return False


class KNNMap:
    """Reader: ``knn.get_KNN_chunk_ids(chunk_id)`` -> the K neighbour chunk ids (int64, -1 = none)."""

    def __init__(self, path):
        self.path = os.fspath(path)
        try:
            size = os.path.getsize(self.path)
        except FileNotFoundError:
            raise KNNMapError(f"{self.path}: no such KNN map file") from None
        with open(self.path, "rb") as f:
            raw = f.read(_HEADER.size)
        if raw[:len(KNN_MAGIC)] != KNN_MAGIC:
            raise KNNMapError(f"{self.path}: not a KNN map (magic {raw[:9]!r}, expected {KNN_MAGIC!r})")
        if len(raw) < _HEADER.size:
            raise KNNMapError(f"{self.path}: truncated header")
        _, version, k, rows, start = _HEADER.unpack(raw)
        if version != 1:
            raise KNNMapError(f"{self.path}: unsupported version {version}, expected 1")
        expected = _HEADER.size + 8 * k * rows
        if size != expected:
            raise KNNMapError(f"{self.path}: file is {size} bytes but {rows} rows of K={k} need {expected}")
        self.K, self.len, self.chunk_start_id = int(k), int(rows), int(start)
        self.knn_map = (np.memmap(self.path, dtype="<i8", mode="r", offset=_HEADER.size, shape=(rows, k))
                        if rows else np.empty((0, k), dtype="<i8"))

    @property
    def chunk_end_id(self):
        return self.chunk_start_id + self.len

    def __len__(self):
        return self.len

    def get_KNN_chunk_ids(self, chunk_id):  # noqa: N802 (NeMo's name)
        """Neighbour chunk ids of training chunk ``chunk_id`` (an int or an array of ids)."""
        ids = np.asarray(chunk_id, dtype=np.int64)
        if ids.size and (ids.min() < self.chunk_start_id or ids.max() >= self.chunk_end_id):
            raise IndexError(f"{self.path}: chunk id outside [{self.chunk_start_id}, {self.chunk_end_id})")
        return self.knn_map[ids - self.chunk_start_id]

    neighbours = get_KNN_chunk_ids

    def __repr__(self):
        return f"KNNMap({self.path!r}, K={self.K}, chunks=[{self.chunk_start_id}, {self.chunk_end_id}))"


def merge_knn_files(shard_paths, output_path):
    """Join shard maps (a list, or a glob prefix string) into ``output_path``: sorted by first
    chunk id, contiguous, equal K. Streams the rows; returns the merged map."""
    if isinstance(shard_paths, str):
        prefix = shard_paths
        shard_paths = sorted(p for p in glob.glob(prefix + "*")
                             if os.path.abspath(p) != os.path.abspath(output_path))
        if not shard_paths:
            raise KNNMapError(f"{prefix}*: no KNN shard files match")
    maps = sorted((KNNMap(p) for p in shard_paths), key=lambda m: m.chunk_start_id)
    for before, after in zip(maps, maps[1:]):
        if after.K != before.K:
            raise KNNMapError(f"{after.path}: K={after.K} differs from K={before.K} of {before.path}")
        if after.chunk_start_id != before.chunk_end_id:
            what = "overlaps" if after.chunk_start_id < before.chunk_end_id else "leaves a gap after"
            raise KNNMapError(f"{after.path} (chunks [{after.chunk_start_id}, {after.chunk_end_id})) {what} "
                              f"{before.path} (chunks [{before.chunk_start_id}, {before.chunk_end_id}))")
    with KNNMapWriter(output_path, maps[0].K, maps[0].chunk_start_id) as writer:
        for m in maps:
            for start in range(0, m.len, _COPY_ROWS):
                writer.write(m.knn_map[start:start + _COPY_ROWS])
    return KNNMap(output_path)
