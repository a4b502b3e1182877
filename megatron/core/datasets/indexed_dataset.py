"""The indexed dataset: token sequences in ``PREFIX.bin`` described by ``PREFIX.idx``.

Byte-compatible with Megatron-LM's memory-mapped ("MMap") format, which both the 2021
``megatron/data`` code and today's megatron-core read and write:

    .idx  = magic b"MMIDIDX\\x00\\x00" | uint64 version 1 | uint8 dtype code
            | uint64 sequence count N | uint64 document-index length D (documents + 1)
            | int32 sizes[N] | int64 byte pointers[N] | int64 document index[D]
    .bin  = every sequence's tokens, back to back, little-endian, no header

dtype codes follow megatron-core: 1 uint8, 2 int8, 3 int16, 4 int32, 5 int64, 6 float64,
7 float32, 8 uint16.  The 2021 code wrote float64 as 7 (its table mapped both 6 and 7 to
float64), so a 2021 float64 file reads here as float32 and fails the size check with a hint;
open it with ``IndexedDataset(prefix, dtype_code=6)``.  Token data only uses codes 4 and 8.

The 2021-only ``lazy``/``cached`` formats (``TNTIDX`` index, 2021 dtype table) live in
:mod:`megatron.core.datasets.legacy_indexed_dataset`, built on the reader and builder bases
here; their classes are re-exported from this module, loaded on first use.

Validation on open raises :class:`IndexedDatasetError` (a ``ValueError``) naming the file.
Opening must stay cheap for a 100 GB corpus, so the checks that touch every entry (pointers
agree with the running sum of sizes, document index non-decreasing) run only when the index
holds at most ``FULL_CHECK_LIMIT`` entries (12 MB of index); bigger files get O(1) checks of
the header, the file lengths, both ends of the document index and the first and last
pointers, and :meth:`IndexedDataset.verify` runs the full check in bounded memory on demand.

This module never imports torch: the preprocessing tools must start fast.  Builders accept
torch tensors through their ``.numpy()`` method.
"""
import operator
import os
import secrets
import struct
import weakref

import numpy as np

from megatron.core.fileio import fsync_dir

__all__ = [
    "IndexedDatasetError", "IndexedDataset", "MMapIndexedDataset", "LazyIndexedDataset",
    "IndexedCachedDataset", "IndexedDatasetBuilder", "MMapIndexedDatasetBuilder",
    "LegacyIndexedDatasetBuilder", "best_fitting_dtype", "make_builder", "make_dataset",
    "infer_dataset_impl", "get_bin_path", "get_idx_path", "dtype_code", "dtype_from_code",
]

MMAP_MAGIC = b"MMIDIDX\x00\x00"
LEGACY_MAGIC = b"TNTIDX\x00\x00"
_VERSION = 1
# magic, version, dtype code, sequence count, document-index length
_MMAP_HEADER = struct.Struct("<9sQBQQ")

_CODE_TO_DTYPE = {
    1: np.uint8, 2: np.int8, 3: np.int16, 4: np.int32,
    5: np.int64, 6: np.float64, 7: np.float32, 8: np.uint16,
}
_DTYPE_TO_CODE = {np.dtype(t): c for c, t in _CODE_TO_DTYPE.items()}

FULL_CHECK_LIMIT = 1 << 20
_INT32_MAX = np.iinfo(np.int32).max
_COPY_CHUNK = 16 << 20
_WRITE_BUFFER = 1 << 20

# The legacy module subclasses the bases defined here, so it cannot be imported at the top
# of this one; its public classes are fetched on first access instead (PEP 562).
_LEGACY_NAMES = frozenset({"LazyIndexedDataset", "IndexedCachedDataset", "LegacyIndexedDatasetBuilder"})


def __getattr__(name):
    if name in _LEGACY_NAMES:
        from megatron.core.datasets import legacy_indexed_dataset
        return getattr(legacy_indexed_dataset, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | _LEGACY_NAMES)


class IndexedDatasetError(ValueError):
    """A ``.bin``/``.idx`` pair that is missing, malformed, or inconsistent."""


def get_bin_path(path_prefix):
    return path_prefix + ".bin"


def get_idx_path(path_prefix):
    return path_prefix + ".idx"


def dtype_code(dtype):
    """The megatron-core code of ``dtype`` (e.g. 8 for uint16)."""
    code = _DTYPE_TO_CODE.get(np.dtype(dtype).newbyteorder("="))
    if code is None:
        raise IndexedDatasetError(
            f"dtype {np.dtype(dtype)} has no indexed-dataset code; "
            f"use one of {sorted(str(np.dtype(t)) for t in _CODE_TO_DTYPE.values())}"
        )
    return code


def dtype_from_code(code):
    """The numpy dtype (little-endian) that megatron-core means by ``code``."""
    if code not in _CODE_TO_DTYPE:
        raise IndexedDatasetError(f"unknown dtype code {code}; known codes are 1-8")
    return np.dtype(_CODE_TO_DTYPE[code]).newbyteorder("<")


def best_fitting_dtype(vocab_size=None):
    """uint16 when every token id of an (unpadded) vocabulary fits below 65500, else int32."""
    if vocab_size is not None and vocab_size < 65500:
        return np.uint16
    return np.int32


def infer_dataset_impl(path_prefix):
    """'mmap' or 'cached' (the 2021 lazy and cached formats share a magic), from the .idx."""
    idx_path = get_idx_path(path_prefix)
    if not os.path.isfile(idx_path):
        raise FileNotFoundError(f"{idx_path}: no such index file")
    with open(idx_path, "rb") as f:
        magic = f.read(9)
    if magic == MMAP_MAGIC:
        return "mmap"
    if magic[:8] == LEGACY_MAGIC:
        return "cached"
    raise IndexedDatasetError(f"{idx_path}: unknown magic {magic[:9]!r}, not an indexed dataset index")


def make_dataset(path_prefix, impl="infer", skip_warmup=True):
    """Open ``path_prefix`` with the reader for ``impl`` ('infer', 'mmap', 'cached', 'lazy')."""
    for path in (get_idx_path(path_prefix), get_bin_path(path_prefix)):
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no such file (dataset prefix {path_prefix!r})")
    if impl == "infer":
        impl = infer_dataset_impl(path_prefix)
    if impl == "mmap":
        return IndexedDataset(path_prefix, skip_warmup=skip_warmup)
    if impl in ("lazy", "cached"):
        from megatron.core.datasets import legacy_indexed_dataset as legacy
        reader = legacy.LazyIndexedDataset if impl == "lazy" else legacy.IndexedCachedDataset
        return reader(path_prefix)
    raise ValueError(f"unknown dataset impl {impl!r}; expected 'infer', 'mmap', 'cached' or 'lazy'")


def make_builder(bin_path, impl="mmap", vocab_size=None):
    """A builder for ``impl``; the MMap one picks its dtype from ``vocab_size``.

    The legacy builder keeps the 2021 behaviour of always writing int32.
    """
    if impl == "mmap":
        return IndexedDatasetBuilder(bin_path, dtype=best_fitting_dtype(vocab_size))
    if impl in ("lazy", "cached"):
        from megatron.core.datasets.legacy_indexed_dataset import LegacyIndexedDatasetBuilder
        return LegacyIndexedDatasetBuilder(bin_path, dtype=np.int32)
    raise ValueError(f"unknown dataset impl {impl!r}; expected 'mmap', 'cached' or 'lazy'")


def _warmup_file(path):
    """Read a file in 100 MB chunks so its pages are in the OS cache before training."""
    with open(path, "rb") as f:
        while f.read(100 << 20):
            pass


def _file_size(path):
    try:
        return os.path.getsize(path)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path}: no such file") from None


def _pread_into(fd, out, offset, path):
    """Fill ``out`` from byte ``offset`` with pread, which leaves the shared file offset
    alone and so stays correct in forked DataLoader workers."""
    view = memoryview(out).cast("B")
    done = 0
    while done < len(view):
        n = os.preadv(fd, [view[done:]], offset + done)
        if n == 0:
            raise IndexedDatasetError(f"{path}: unexpected end of file at byte {offset + done}")
        done += n


def _read_header(idx_path, header, magic, wrong_format_hint):
    """Size of ``idx_path`` and its header fields after the magic and version, checked."""
    idx_size = _file_size(idx_path)
    with open(idx_path, "rb") as f:
        raw = f.read(header.size)
    other_magic = LEGACY_MAGIC if magic == MMAP_MAGIC else MMAP_MAGIC
    if raw[:8] == other_magic[:8]:
        raise IndexedDatasetError(f"{idx_path}: {wrong_format_hint}")
    if len(raw) >= len(magic) and raw[:len(magic)] != magic:
        raise IndexedDatasetError(f"{idx_path}: unknown magic {raw[:len(magic)]!r}, expected {magic!r}")
    if len(raw) < header.size:
        raise IndexedDatasetError(
            f"{idx_path}: truncated, {idx_size} bytes is shorter than the {header.size}-byte header")
    _, version, *fields = header.unpack(raw)
    if version != _VERSION:
        raise IndexedDatasetError(f"{idx_path}: unsupported version {version}, expected {_VERSION}")
    return idx_size, fields


def _check_idx_size(idx_path, idx_size, expected, contents, extra=0):
    if idx_size not in (expected, expected + extra):
        what = "truncated" if idx_size < expected else "has trailing bytes"
        raise IndexedDatasetError(f"{idx_path}: {what}: file is {idx_size} bytes but {contents} needs {expected}")


def _scan_document_index(doc_idx, idx_path, first=0):
    """Vectorised: ``doc_idx`` (entries ``first`` onwards of the full index) never decreases."""
    steps = np.diff(doc_idx)
    if steps.size and steps.min() < 0:
        k = int(np.argmax(steps < 0))
        raise IndexedDatasetError(
            f"{idx_path}: document index decreases at entry {first + k + 1} ({doc_idx[k]} -> {doc_idx[k + 1]})"
        )


def _scan_pointers(sizes, pointers, itemsize, idx_path, first=0, start_byte=0):
    """Vectorised: sequences ``first``.. start at the running byte sum of sizes from
    ``start_byte``; returns the byte where the last of them ends."""
    if not len(sizes):
        return start_byte
    if sizes.min() < 0:
        raise IndexedDatasetError(f"{idx_path}: sequence {first + int(np.argmin(sizes))} has a negative length")
    ends = start_byte + np.cumsum(sizes, dtype=np.int64) * itemsize
    starts = np.concatenate(([start_byte], ends[:-1]))
    bad = np.flatnonzero(starts != pointers)
    if bad.size:
        _pointer_error(idx_path, first + int(bad[0]), int(pointers[bad[0]]), int(starts[bad[0]]))
    return int(ends[-1])


def _pointer_error(idx_path, i, pointer, want):
    raise IndexedDatasetError(
        f"{idx_path}: pointer of sequence {i} is {pointer} but the sequences before it end at byte {want}"
    )


def _check_index_arrays(sizes, pointers, doc_idx, itemsize, bin_size, bin_path, idx_path, full):
    """Checks run on open: O(1) ones always, the vectorised scans only when ``full``."""
    n = len(sizes)
    if len(doc_idx) == 0:
        raise IndexedDatasetError(f"{idx_path}: document index is empty; it must at least hold 0")
    if doc_idx[0] != 0:
        raise IndexedDatasetError(f"{idx_path}: document index starts at {doc_idx[0]}, expected 0")
    if doc_idx[-1] != n:
        raise IndexedDatasetError(
            f"{idx_path}: document index ends at {doc_idx[-1]} but there are {n} "
            f"sequences (was end_document() called after the last item?)"
        )
    expected = int(pointers[-1]) + int(sizes[-1]) * itemsize if n else 0
    if bin_size != expected:
        raise IndexedDatasetError(f"{bin_path}: file is {bin_size} bytes but the index expects {expected}")
    if full:
        _scan_document_index(doc_idx, idx_path)
        _scan_pointers(sizes, pointers, itemsize, idx_path)
        return
    # Only the first and last pairs, so opening stays O(1) however large the index.
    for i in (0, 1, n - 1) if n > 1 else range(n):
        if sizes[i] < 0:
            raise IndexedDatasetError(f"{idx_path}: sequence {i} has a negative length")
        want = int(pointers[i - 1]) + int(sizes[i - 1]) * itemsize if i else 0
        if int(pointers[i]) != want:
            _pointer_error(idx_path, i, int(pointers[i]), want)


class _DatasetReader:
    """Indexing, slicing, ``get`` and the document index, shared by every format.

    Subclasses set ``_prefix``, ``_dtype``, ``_sizes`` (int32), ``_pointers`` (int64 bytes)
    and ``_doc_idx`` and implement ``_read_span(byte_offset, count)``.
    """

    supports_prefetch = False
    _doc_idx_replaced = False
    _fd = None

    def __len__(self):
        return len(self._sizes)

    def __getitem__(self, idx):
        if isinstance(idx, slice):
            start, stop, step = idx.indices(len(self))
            if step != 1:
                raise ValueError(f"{self._prefix}: slices with a step ({step}) are not supported")
            return self._read_slice(start, max(start, stop))
        i = self._check_index(idx)
        return self._read_sequence(i, 0, int(self._sizes[i]))

    def get(self, idx, offset=0, length=None):
        """Tokens ``[offset, offset + length)`` of sequence ``idx`` (to its end by default)."""
        i = self._check_index(idx)
        size = int(self._sizes[i])
        if length is None:
            length = size - offset
        if offset < 0 or length < 0 or offset + length > size:
            raise IndexError(
                f"{self._prefix}: offset {offset} and length {length} fall outside "
                f"sequence {i} of {size} tokens"
            )
        return self._read_sequence(i, offset, length)

    def _check_index(self, idx):
        i = operator.index(idx)
        n = len(self)
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"{self._prefix}: sequence index {idx} out of range for {n} sequences")
        return i

    def _read_sequence(self, i, offset, length):
        return self._read_span(int(self._pointers[i]) + offset * self._dtype.itemsize, length)

    def _read_slice(self, start, stop):
        if start == stop:
            return []
        sizes = self._sizes[start:stop]
        flat = self._read_span(int(self._pointers[start]), int(sizes.sum(dtype=np.int64)))
        return np.split(flat, np.cumsum(sizes[:-1], dtype=np.int64))

    dtype = property(lambda self: self._dtype)
    sizes = sequence_lengths = property(lambda self: self._sizes, doc="Tokens per sequence, int32.")
    pointers = sequence_pointers = property(
        lambda self: self._pointers, doc="Byte offset of each sequence in .bin, int64.")
    doc_idx = document_indices = property(
        lambda self: self._doc_idx, doc="First sequence of each document, then the sequence count; int64.")

    def get_doc_idx(self):
        return self._doc_idx

    def set_doc_idx(self, doc_idx):
        """Replace the document index, e.g. to restrict BERT/T5 sampling to a split."""
        self._doc_idx = np.asarray(doc_idx, dtype=np.int64)
        self._doc_idx_replaced = True

    get_document_indices = get_doc_idx
    set_document_indices = set_doc_idx

    @staticmethod
    def exists(path_prefix):
        return os.path.isfile(get_idx_path(path_prefix)) and os.path.isfile(get_bin_path(path_prefix))

    def __repr__(self):
        return (f"{type(self).__name__}({self._prefix!r}, sequences={len(self)}, "
                f"documents={len(self._doc_idx) - 1}, dtype={self._dtype})")

    def _pread_span(self, byte_offset, count):
        out = np.empty(count, dtype=self._dtype)
        _pread_into(self._fd, out, byte_offset, get_bin_path(self._prefix))
        return out

    def close(self):
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __del__(self):
        self.close()

    def __getstate__(self):
        # The path travels, plus a set_doc_idx() restriction; the files are re-opened on arrival.
        return dict(self._open_args(), doc_idx=self._doc_idx if self._doc_idx_replaced else None)

    def __setstate__(self, state):
        state = dict(state)
        doc_idx = state.pop("doc_idx")
        self.__init__(**state)
        if doc_idx is not None:
            self.set_doc_idx(doc_idx)


class IndexedDataset(_DatasetReader):
    """Reader of the MMap format; opening costs O(1) (see the module docstring).

    ``ds[i]`` is a read-only numpy view into the memory-mapped ``.bin`` (no copy).  With
    ``mmap=False`` sequences are read with pread (a seek and read in one call, safe in
    forked workers) into fresh arrays instead.  ``skip_warmup=False`` reads both files once
    to fill the page cache (``--mmap-warmup``).  ``dtype_code``
    overrides the header's code (for 2021 float64 files written with code 7).  The object
    pickles by path and re-opens in the receiving process, so DataLoader workers work.
    """

    def __init__(self, path_prefix, *, mmap=True, skip_warmup=True, dtype_code=None):
        # Keyword-only: the second positional argument was skip_warmup in 2021 and
        # multimodal in megatron-core, so a positional call could mean either.
        self._prefix = path_prefix
        self._mmap = mmap
        self._dtype_code_override = dtype_code
        self._open()
        if not skip_warmup:
            for path in (get_idx_path(path_prefix), get_bin_path(path_prefix)):
                _warmup_file(path)


    @property
    def mmap(self):
        """True when the .bin is memory-mapped (False: read with file seeks)."""
        return self._mmap

    def _open(self):
        idx_path, bin_path = get_idx_path(self._prefix), get_bin_path(self._prefix)
        idx_size, (code, n, d) = _read_header(
            idx_path, _MMAP_HEADER, MMAP_MAGIC,
            "this is a legacy TNTIDX (lazy/cached) index; "
            "open it with make_dataset(prefix, 'infer') or LazyIndexedDataset")
        bin_size = _file_size(bin_path)
        if self._dtype_code_override is not None:
            code = self._dtype_code_override
        if code not in _CODE_TO_DTYPE:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code}; known codes are 1-8")
        self._dtype = dtype_from_code(code)
        # Multimodal core files append one int8 mode per sequence; like 2021 we ignore them.
        _check_idx_size(idx_path, idx_size, _MMAP_HEADER.size + 12 * n + 8 * d,
                        f"a header with {n} sequences and {d} document-index entries", extra=n)
        # The index arrays are views of a memory map, so opening reads only the header pages.
        self._idx_buffer = np.memmap(idx_path, dtype=np.uint8, mode="r")
        off = _MMAP_HEADER.size
        self._sizes = np.frombuffer(self._idx_buffer, dtype="<i4", count=n, offset=off)
        self._pointers = np.frombuffer(self._idx_buffer, dtype="<i8", count=n, offset=off + 4 * n)
        self._doc_idx = np.frombuffer(self._idx_buffer, dtype="<i8", count=d, offset=off + 12 * n)
        self._validate(full=max(n, d) <= FULL_CHECK_LIMIT, bin_size=bin_size)
        if not self._mmap:
            self._fd = os.open(bin_path, os.O_RDONLY)
        elif bin_size == 0:
            self._bin_buffer = np.empty(0, dtype=np.uint8)  # mmap refuses empty files
        else:
            self._bin_buffer = np.memmap(bin_path, dtype=np.uint8, mode="r")

    def _validate(self, full, bin_size):
        idx_path, bin_path = get_idx_path(self._prefix), get_bin_path(self._prefix)
        try:
            _check_index_arrays(self._sizes, self._pointers, self._doc_idx, self._dtype.itemsize,
                                bin_size, bin_path, idx_path, full)
        except IndexedDatasetError as err:
            n, code = len(self._sizes), self._dtype_code_override or dtype_code(self._dtype)
            if code == 7 and n and bin_size == int(self._pointers[-1]) + int(self._sizes[-1]) * 8:
                raise IndexedDatasetError(
                    f"{err} (dtype code 7 is float32 here but float64 in 2021 Megatron; "
                    f"for a 2021 file open it with IndexedDataset(prefix, dtype_code=6))"
                ) from None
            raise

    def verify(self, chunk=FULL_CHECK_LIMIT):
        """Check every pointer and document-index entry, ``chunk`` entries at a time."""
        idx_path = get_idx_path(self._prefix)
        self._validate(full=False, bin_size=_file_size(get_bin_path(self._prefix)))
        end = 0
        for start in range(0, len(self._sizes), chunk):
            end = _scan_pointers(self._sizes[start:start + chunk], self._pointers[start:start + chunk],
                                 self._dtype.itemsize, idx_path, first=start, start_byte=end)
        for start in range(0, len(self._doc_idx), chunk):
            _scan_document_index(self._doc_idx[start:start + chunk + 1], idx_path, first=start)

    def _read_span(self, byte_offset, count):
        if self._mmap:
            return np.frombuffer(self._bin_buffer, dtype=self._dtype, count=count, offset=byte_offset)
        return self._pread_span(byte_offset, count)

    def _open_args(self):
        return {"path_prefix": self._prefix, "mmap": self._mmap, "dtype_code": self._dtype_code_override}


MMapIndexedDataset = IndexedDataset


def _as_token_array(tokens, dtype, where):
    """``tokens`` (numpy array, list of ints, or a torch tensor via ``.numpy()``) as a 1-D
    array of ``dtype``; a token id that the cast would wrap is an error, not silent damage."""
    if not isinstance(tokens, np.ndarray):
        if hasattr(tokens, "numpy"):
            if hasattr(tokens, "detach"):
                tokens = tokens.detach()
            if hasattr(tokens, "cpu"):
                tokens = tokens.cpu()
            tokens = tokens.numpy()
        tokens = np.asarray(tokens)
    if tokens.ndim != 1:
        raise ValueError(f"{where}: expected a 1-D sequence of tokens, got shape {tokens.shape}")
    if tokens.dtype == dtype:
        return np.ascontiguousarray(tokens)
    if tokens.size == 0:
        return np.empty(0, dtype=dtype)
    if dtype.kind in "iu":
        if tokens.dtype.kind not in "iub":
            raise TypeError(f"{where}: token dtype {tokens.dtype} cannot be stored as {dtype}")
        if not np.can_cast(tokens.dtype, dtype):
            info = np.iinfo(dtype)
            lo, hi = tokens.min(), tokens.max()
            if lo < info.min or hi > info.max:
                bad = lo if lo < info.min else hi
                raise ValueError(
                    f"{where}: token id {bad} does not fit in {dtype.newbyteorder('=')} "
                    f"({info.min}..{info.max}); use a wider dtype, see best_fitting_dtype()"
                )
    return tokens.astype(dtype)


class _GrowableArray:
    """A numpy array with amortised O(1) append, so builders keep no Python int per item."""

    def __init__(self, dtype, capacity=4096):
        self._data = np.empty(capacity, dtype=dtype)
        self._len = 0

    def _reserve(self, extra):
        need = self._len + extra
        if need > len(self._data):
            grown = np.empty(max(need, 2 * len(self._data)), dtype=self._data.dtype)
            grown[:self._len] = self._data[:self._len]
            self._data = grown

    def append(self, value):
        self._reserve(1)
        self._data[self._len] = value
        self._len += 1

    def extend(self, values):
        self._reserve(len(values))
        self._data[self._len:self._len + len(values)] = values
        self._len += len(values)

    def last(self):
        return int(self._data[self._len - 1])

    def view(self):
        return self._data[:self._len]

    def __len__(self):
        return self._len


def _temp_name(final_path):
    return f"{final_path}.{os.getpid()}.{secrets.token_hex(4)}.tmp"


def _remove_quietly(*paths):
    for path in paths:
        try:
            os.remove(path)
        except FileNotFoundError:
            pass


def _close_and_remove(owner_pid, fileobj, *paths):
    if os.getpid() != owner_pid:
        return  # a forked child must neither flush its copy of the buffer nor delete our file
    try:
        fileobj.close()
    except OSError:
        pass  # the data is being thrown away; a failed flush does not matter
    _remove_quietly(*paths)


class _BuilderBase:
    """The ``.bin`` side of a builder: buffered writes to a temporary file, sizes, documents.

    Nothing appears under a final name before ``finalize``: the ``.bin`` is written as
    ``BIN.<pid>.<random>.tmp`` and ``finalize`` writes the ``.idx`` the same way, fsyncs
    both and renames them into place.  ``abort()``, leaving a ``with`` block without
    ``finalize``, or garbage collection of an unfinished builder removes the temporary files.
    """

    _dtype_to_code = _DTYPE_TO_CODE

    def __init__(self, bin_path, dtype=np.int32):
        self._bin_path = os.fspath(bin_path)
        self._dtype = np.dtype(dtype).newbyteorder("<")
        if self._dtype.newbyteorder("=") not in self._dtype_to_code:
            raise IndexedDatasetError(
                f"{self._bin_path}: dtype {np.dtype(dtype)} cannot be stored by {type(self).__name__}; "
                f"use one of {sorted(str(t) for t in self._dtype_to_code)}"
            )
        self._sizes = _GrowableArray(np.int32)
        self._doc_idx = _GrowableArray(np.int64)
        self._doc_idx.append(0)
        self._tmp_bin = _temp_name(self._bin_path)
        self._tmp_idx = None
        fd = os.open(self._tmp_bin, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        self._file = os.fdopen(fd, "wb", buffering=_WRITE_BUFFER)
        self._cleanup = weakref.finalize(self, _close_and_remove, os.getpid(), self._file, self._tmp_bin)
        self._done = False

    @property
    def dtype(self):
        return self._dtype

    def _check_open(self, action):
        if self._done:
            raise RuntimeError(f"{self._bin_path}: cannot {action}, the builder is already finalized or aborted")

    def _pending(self):
        return len(self._sizes) - self._doc_idx.last()

    def add_item(self, tokens):
        """Append one sequence (a sentence, or a whole document when not splitting)."""
        self._check_open("add_item")
        array = _as_token_array(tokens, self._dtype, self._bin_path)
        if len(array) > _INT32_MAX:
            raise ValueError(f"{self._bin_path}: a sequence of {len(array)} tokens exceeds the int32 size field")
        self._file.write(array.data)
        self._sizes.append(len(array))

    def end_document(self):
        """Close the current document: every item added since the previous boundary."""
        self._check_open("end_document")
        self._doc_idx.append(len(self._sizes))

    def add_document(self, tokens, lengths):
        """Append one whole document of ``len(lengths)`` sequences in a single write.

        ``tokens`` is 1-D and ``lengths`` (tokens per sequence) must sum to its length.
        """
        self._check_open("add_document")
        if self._pending():
            raise RuntimeError(
                f"{self._bin_path}: add_document() called with {self._pending()} add_item() "
                f"sequences not yet closed by end_document()"
            )
        array = _as_token_array(tokens, self._dtype, self._bin_path)
        lengths = np.asarray(lengths)
        if lengths.ndim != 1 or (lengths.size and lengths.dtype.kind not in "iu"):
            raise ValueError(f"{self._bin_path}: lengths must be a 1-D array of integers, got {lengths!r:.80}")
        if lengths.size and (lengths.min() < 0 or lengths.max() > _INT32_MAX):
            raise ValueError(f"{self._bin_path}: sequence lengths must lie in 0..{_INT32_MAX}")
        total = int(lengths.sum(dtype=np.int64))
        if total != len(array):
            raise ValueError(f"{self._bin_path}: lengths add up to {total} but the document has {len(array)} tokens")
        self._file.write(array.data)
        self._sizes.extend(lengths)
        self._doc_idx.append(len(self._sizes))

    def merge_file_(self, other_prefix):
        """Append every sequence and document of the dataset at ``other_prefix`` (any format)."""
        self._check_open("merge a dataset")
        if self._pending():
            raise RuntimeError(
                f"{self._bin_path}: cannot merge {other_prefix!r} with {self._pending()} "
                f"sequences not yet closed by end_document()"
            )
        other = make_dataset(other_prefix, impl="infer")
        if other.dtype != self._dtype:
            raise IndexedDatasetError(
                f"{get_idx_path(other_prefix)}: dtype {other.dtype.newbyteorder('=')} does not match "
                f"the builder's {self._dtype.newbyteorder('=')}"
            )
        expected = int(other.sizes.sum(dtype=np.int64)) * self._dtype.itemsize
        copied = 0
        with open(get_bin_path(other_prefix), "rb") as src:
            while copied < expected:
                chunk = src.read(min(_COPY_CHUNK, expected - copied))
                if not chunk:
                    break
                self._file.write(chunk)
                copied += len(chunk)
        if copied != expected:
            self.abort()  # the .bin now holds part of a dataset: nothing here can be trusted
            raise IndexedDatasetError(
                f"{get_bin_path(other_prefix)}: shrank to {copied} bytes while merging, expected {expected}"
            )
        offset = len(self._sizes)
        self._sizes.extend(other.sizes)
        self._doc_idx.extend(other.doc_idx[1:] + offset)

    add_index = merge_file_

    def finalize(self, idx_path=None):
        """Write the index and publish both files; ``idx_path`` defaults to BIN's prefix + .idx."""
        self._check_open("finalize")
        if idx_path is None:
            if not self._bin_path.endswith(".bin"):
                raise ValueError(f"{self._bin_path}: does not end in .bin; pass idx_path to finalize()")
            idx_path = self._bin_path[:-4] + ".idx"
        if self._pending():
            raise RuntimeError(
                f"{self._bin_path}: {self._pending()} sequences were added after the last "
                f"end_document(); call end_document() before finalize()"
            )
        idx_path = os.fspath(idx_path)
        self._tmp_idx = _temp_name(idx_path)
        try:
            self._file.flush()
            os.fsync(self._file.fileno())
            self._file.close()
            with open(self._tmp_idx, "xb") as f:
                self._write_index(f)
                f.flush()
                os.fsync(f.fileno())
            os.replace(self._tmp_bin, self._bin_path)
            os.replace(self._tmp_idx, idx_path)
        except BaseException:
            self.abort()
            raise
        self._done = True
        self._cleanup.detach()
        for directory in {os.path.dirname(os.path.abspath(p)) for p in (self._bin_path, idx_path)}:
            fsync_dir(directory)

    def abort(self):
        """Drop everything written so far and remove the temporary files (a no-op after a
        successful ``finalize``, so error handlers may call it on every builder)."""
        self._done = True
        self._cleanup()
        if self._tmp_idx is not None:
            _remove_quietly(self._tmp_idx)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if not self._done:
            self.abort()
        return False

    def _byte_pointers(self):
        sizes = self._sizes.view()
        pointers = np.zeros(len(sizes), dtype="<i8")
        np.cumsum(sizes[:-1], dtype=np.int64, out=pointers[1:])
        return pointers * self._dtype.itemsize


class IndexedDatasetBuilder(_BuilderBase):
    """Writer of the MMap format (megatron-core's ``IndexedDatasetBuilder``; default int32)."""

    def _write_index(self, f):
        sizes, doc_idx = self._sizes.view(), self._doc_idx.view()
        code = _DTYPE_TO_CODE[self._dtype.newbyteorder("=")]
        f.write(_MMAP_HEADER.pack(MMAP_MAGIC, _VERSION, code, len(sizes), len(doc_idx)))
        f.write(sizes.astype("<i4", copy=False).data)
        f.write(self._byte_pointers().data)
        f.write(doc_idx.astype("<i8", copy=False).data)


MMapIndexedDatasetBuilder = IndexedDatasetBuilder
