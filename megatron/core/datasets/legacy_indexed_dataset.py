"""The 2021 non-mmap indexed dataset: a ``TNTIDX`` index next to the usual ``.bin``.

Megatron-LM's 2021 ``megatron/data`` code wrote and read this format when preprocessing or
training ran with ``--dataset-impl lazy`` or ``--dataset-impl cached``; ``mmap`` (see
:mod:`megatron.core.datasets.indexed_dataset`) replaced it and megatron-core dropped it.  It
is kept so corpora preprocessed that way still train and merge without re-tokenizing.

    .idx  = magic b"TNTIDX\\x00\\x00" | uint64 version 1 | uint64 dtype code
            | uint64 element size | uint64 item count N | uint64 shape-entry count S
            | uint64 document-index length D
            | int64 dim offsets[N + 1] | int64 data offsets[N + 1] (in elements, not bytes)
            | int64 shapes[S] | int64 document index[D]
    .bin  = every sequence's tokens, back to back, little-endian, no header

Token sequences are 1-D, so S equals N and the dim offsets are ``0..N``; anything else is
rejected.  The dtype codes are the 2021 table, not megatron-core's: 6 and 7 both mean
float64, float64 is written as 7, and float32 has no code.

:class:`LazyIndexedDataset` reads a sequence per access, :class:`IndexedCachedDataset`
keeps what it has read in RAM, :class:`LegacyIndexedDatasetBuilder` writes the format.  All
three share their indexing, validation and temporary-file handling with the MMap classes,
and every name here is also importable from ``indexed_dataset``.
"""
import os
import struct

import numpy as np

from megatron.core.datasets.indexed_dataset import (
    _CODE_TO_DTYPE,
    _INT32_MAX,
    _VERSION,
    LEGACY_MAGIC,
    IndexedDatasetError,
    _BuilderBase,
    _DatasetReader,
    _check_idx_size,
    _check_index_arrays,
    _file_size,
    _read_header,
    get_bin_path,
    get_idx_path,
)

__all__ = ["LazyIndexedDataset", "IndexedCachedDataset", "LegacyIndexedDatasetBuilder"]

# magic, version, dtype code, element size, item count, shape-entry count, doc-index length
_LEGACY_HEADER = struct.Struct("<8sQQQQQQ")
# The 2021 table, the only one that ever described TNTIDX files: 6 and 7 both mean float64
# and float64 is written as 7; float32 has no code there.
_LEGACY_CODE_TO_DTYPE = {**_CODE_TO_DTYPE, 7: np.float64}
_LEGACY_DTYPE_TO_CODE = {np.dtype(t): c for c, t in _LEGACY_CODE_TO_DTYPE.items() if c != 6}


class LazyIndexedDataset(_DatasetReader):
    """Reader of the 2021 ``lazy`` format (TNTIDX index): one pread per access.

    The index is small in these files and is read into memory; sizes are exposed as int32
    like the MMap reader's, so downstream code does not care which format it got.
    """

    def __init__(self, path_prefix):
        self._prefix = path_prefix
        self._read_index()
        self._fd = os.open(get_bin_path(path_prefix), os.O_RDONLY)

    def _read_index(self):
        idx_path, bin_path = get_idx_path(self._prefix), get_bin_path(self._prefix)
        idx_size, (code, element_size, n, s, d) = _read_header(
            idx_path, _LEGACY_HEADER, LEGACY_MAGIC, "this is an MMap index; open it with IndexedDataset")
        bin_size = _file_size(bin_path)
        if code not in _LEGACY_CODE_TO_DTYPE:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code}; known codes are 1-8")
        self._dtype = np.dtype(_LEGACY_CODE_TO_DTYPE[code]).newbyteorder("<")
        if element_size != self._dtype.itemsize:
            raise IndexedDatasetError(
                f"{idx_path}: element size {element_size} does not match dtype code {code} "
                f"({self._dtype}, {self._dtype.itemsize} bytes)"
            )
        _check_idx_size(idx_path, idx_size, _LEGACY_HEADER.size + 8 * (2 * (n + 1) + s + d),
                        f"a header with {n} items, {s} shape entries and {d} document-index entries")
        arrays = np.fromfile(idx_path, dtype="<i8", offset=_LEGACY_HEADER.size)
        dim_offsets, data_offsets = arrays[:n + 1], arrays[n + 1:2 * n + 2]
        shapes, doc_idx = arrays[2 * n + 2:2 * n + 2 + s], arrays[2 * n + 2 + s:]
        if s != n or not np.array_equal(dim_offsets, np.arange(n + 1)):
            raise IndexedDatasetError(f"{idx_path}: items with more than one dimension are not supported")
        if n and (shapes.min() < 0 or shapes.max() > _INT32_MAX):
            raise IndexedDatasetError(f"{idx_path}: sequence length outside 0..{_INT32_MAX}")
        if data_offsets[0] != 0 or not np.array_equal(np.diff(data_offsets), shapes):
            raise IndexedDatasetError(f"{idx_path}: data offsets disagree with the sequence sizes")
        _check_index_arrays(shapes, data_offsets[:-1] * element_size, doc_idx, element_size,
                            bin_size, bin_path, idx_path, full=True)
        self._sizes = shapes.astype(np.int32)
        self._pointers = data_offsets[:-1] * element_size
        self._doc_idx = doc_idx.copy()

    _read_span = _DatasetReader._pread_span

    def _open_args(self):
        return {"path_prefix": self._prefix}


class IndexedCachedDataset(LazyIndexedDataset):
    """Reader of the 2021 ``cached`` format: sequences are kept in RAM once read.

    ``prefetch(indices)`` loads many at once; any other access loads its sequence on demand.
    Returned arrays are read-only views of the cache.  Meant for small legacy files: the
    cache grows to the size of whatever has been read.
    """

    supports_prefetch = True

    def __init__(self, path_prefix):
        super().__init__(path_prefix)
        self._cache = {}

    def prefetch(self, indices):
        for i in sorted(set(int(i) for i in indices)):
            self._cached(self._check_index(i))

    def _cached(self, i):
        tokens = self._cache.get(i)
        if tokens is None:
            tokens = super()._read_sequence(i, 0, int(self._sizes[i]))
            tokens.flags.writeable = False
            self._cache[i] = tokens
        return tokens

    def _read_sequence(self, i, offset, length):
        return self._cached(i)[offset:offset + length]

    def _read_slice(self, start, stop):
        return [self._cached(i) for i in range(start, stop)]


class LegacyIndexedDatasetBuilder(_BuilderBase):
    """Writer of the 2021 ``lazy``/``cached`` format (TNTIDX), with the 2021 dtype codes.

    Data offsets are counted in elements and the element size is the dtype's true one
    (the 2021 table listed float as 4 bytes).  float32 has no code in that table.
    """

    _dtype_to_code = _LEGACY_DTYPE_TO_CODE

    def _write_index(self, f):
        sizes, doc_idx = self._sizes.view(), self._doc_idx.view()
        n = len(sizes)
        code = _LEGACY_DTYPE_TO_CODE[self._dtype.newbyteorder("=")]
        f.write(_LEGACY_HEADER.pack(LEGACY_MAGIC, _VERSION, code, self._dtype.itemsize, n, n, len(doc_idx)))
        f.write(np.arange(n + 1, dtype="<i8").data)  # one shape entry per 1-D item
        data_offsets = np.zeros(n + 1, dtype="<i8")
        np.cumsum(sizes, dtype=np.int64, out=data_offsets[1:])
        f.write(data_offsets.data)
        f.write(sizes.astype("<i8").data)
        f.write(doc_idx.astype("<i8", copy=False).data)
