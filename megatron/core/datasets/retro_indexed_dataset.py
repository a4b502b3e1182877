"""NeMo's retrieval memory-map dataset (``--dataset-impl retmmap``): documents cut into chunks.

Byte-compatible with NeMo v1.20's ``MMapRetrievalIndexedDataset``:

    .idx  = magic b"MMIDRET\\x00\\x00" | uint32 version 1 | uint32 chunk stride | uint8 dtype code
            | uint64 documents N | uint64 chunk_size | uint64 chunks C | uint8 retrieval-db flag
            | int32 sizes[N] | int64 byte pointers[N] | int64 chunk_id_start[N]
            | int64 chunk byte addresses[C]
    .bin  = the documents back to back, each padded with pad ids

Padding rule (NeMo's, quirk included): a document of L tokens gets ``chunk_size - L %
chunk_size`` pad tokens, so a document whose length is already a multiple of ``chunk_size``
still gets a whole pad chunk; ``sizes`` count these. A retrieval database (``retrieval_db``)
gets one more pad chunk per document that ``sizes`` do not count, so reading a chunk plus its
continuation (``2 * chunk_size`` tokens) never leaves the document's bytes. The pointers step
over that extra chunk. Chunks start at 0, stride, 2*stride, ... up to ``size - chunk_size`` of
every document (``chunk_size % stride == 0``); ``chunk_id_start[d]`` is the id of document
d's first chunk. dtype codes are those of :mod:`indexed_dataset`.

No torch import: the preprocessing tool uses this.
"""
import operator
import os
import struct

import numpy as np

from megatron.core.datasets.indexed_dataset import (
    IndexedDatasetError, _as_token_array, _BuilderBase, _check_idx_size, _CODE_TO_DTYPE, _DTYPE_TO_CODE,
    _file_size, _read_header, dtype_from_code, get_bin_path, get_idx_path)

__all__ = ["RETRO_MAGIC", "RetrievalIndexedDatasetBuilder", "RetrievalIndexedDataset", "is_retrieval_dataset"]

RETRO_MAGIC = b"MMIDRET\x00\x00"
# magic, version, stride, dtype code, documents, chunk_size, chunks, retrieval-db flag
_HEADER = struct.Struct("<9sIIBQQQB")


def is_retrieval_dataset(path_prefix):
    """True when ``PREFIX.idx`` starts with the MMIDRET magic."""
    try:
        with open(get_idx_path(path_prefix), "rb") as f:
            return f.read(len(RETRO_MAGIC)) == RETRO_MAGIC
    except FileNotFoundError:
        return False


def padded_size(length, chunk_size):
    """Tokens a document of ``length`` takes in ``sizes`` (NeMo's rule: always at least one pad)."""
    return length + chunk_size - length % chunk_size


def chunk_layout(sizes, pointers, chunk_size, stride, itemsize):
    """``(chunk_id_start [N], chunk byte addresses [C])`` of documents with padded ``sizes``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = np.where(sizes >= chunk_size, (sizes - chunk_size) // stride + 1, 0)
    chunk_id_start = np.zeros(len(sizes), dtype=np.int64)
    if len(sizes):
        np.cumsum(counts[:-1], out=chunk_id_start[1:])
    total = int(counts.sum())
    within = np.arange(total, dtype=np.int64) - np.repeat(chunk_id_start, counts)
    addresses = np.repeat(np.asarray(pointers, dtype=np.int64), counts) + within * (stride * itemsize)
    return chunk_id_start, addresses


def _check_chunking(chunk_size, stride, where):
    if chunk_size < 1:
        raise ValueError(f"{where}: chunk_size {chunk_size} must be at least 1")
    if stride < 1 or chunk_size % stride:
        raise ValueError(f"{where}: chunk_size {chunk_size} must be a multiple of the stride {stride}")


class RetrievalIndexedDatasetBuilder(_BuilderBase):
    """Writer of the MMIDRET format; one ``add_item`` (or ``add_document``) per document.

    Files appear under their final names only at ``finalize`` (see ``_BuilderBase``).
    """

    def __init__(self, bin_path, dtype, pad_id, chunk_size=64, stride=64, retrieval_db=False):
        super().__init__(bin_path, dtype)
        _check_chunking(chunk_size, stride, self._bin_path)
        info = np.iinfo(self._dtype) if self._dtype.kind in "iu" else None
        if info is not None and not info.min <= pad_id <= info.max:
            raise ValueError(f"{self._bin_path}: pad id {pad_id} does not fit in {self._dtype.newbyteorder('=')}")
        self.pad_id = int(pad_id)
        self.chunk_size = int(chunk_size)
        self.stride = int(stride)
        self.retrieval_db = bool(retrieval_db)

    def add_item(self, tokens):
        self.add_documents(_as_token_array(tokens, self._dtype, self._bin_path), [None])

    def add_document(self, tokens, lengths):
        """A document given as sequences is stored whole: the format has one sequence per document."""
        array = _as_token_array(tokens, self._dtype, self._bin_path)
        total = int(np.asarray(lengths, dtype=np.int64).sum())
        if total != len(array):
            raise ValueError(f"{self._bin_path}: lengths add up to {total} but the document has {len(array)} tokens")
        self.add_documents(array, [len(array)])

    def end_document(self):
        pass  # every add_item is a whole document

    def add_documents(self, tokens, lengths):
        """Append documents given back to back in ``tokens`` (``lengths`` tokens each) in one write;
        ``[None]`` means one document of all of ``tokens``."""
        self._check_open("add documents")
        tokens = _as_token_array(tokens, self._dtype, self._bin_path)
        lengths = np.asarray([len(tokens)] if list(lengths) == [None] else lengths, dtype=np.int64)
        if int(lengths.sum()) != len(tokens):
            raise ValueError(f"{self._bin_path}: lengths add up to {int(lengths.sum())} "
                             f"but {len(tokens)} tokens were given")
        cs = self.chunk_size
        sizes = lengths + cs - lengths % cs  # the quirk: a full pad chunk when already a multiple
        stored = sizes + (cs if self.retrieval_db else 0)
        if sizes.size and sizes.max() > np.iinfo(np.int32).max:
            raise ValueError(f"{self._bin_path}: a document exceeds the int32 size field")
        out = np.full(int(stored.sum()), self.pad_id, dtype=self._dtype)
        out_starts = np.zeros(len(stored), dtype=np.int64)
        np.cumsum(stored[:-1], out=out_starts[1:])
        in_starts = np.zeros(len(lengths), dtype=np.int64)
        np.cumsum(lengths[:-1], out=in_starts[1:])
        destination = np.arange(len(tokens), dtype=np.int64) + np.repeat(out_starts - in_starts, lengths)
        out[destination] = tokens
        self._file.write(out.data)
        self._sizes.extend(sizes.astype(np.int32))

    def merge_file_(self, other_prefix):
        raise IndexedDatasetError(f"{self._bin_path}: merging is not supported for the retmmap format")

    add_index = merge_file_

    def _pending(self):
        return 0

    def _write_index(self, f):
        sizes = self._sizes.view().astype(np.int64)
        itemsize = self._dtype.itemsize
        stored = sizes + (self.chunk_size if self.retrieval_db else 0)
        pointers = np.zeros(len(sizes), dtype="<i8")
        if len(sizes):
            np.cumsum(stored[:-1] * itemsize, out=pointers[1:])
        chunk_id_start, addresses = chunk_layout(sizes, pointers, self.chunk_size, self.stride, itemsize)
        code = _DTYPE_TO_CODE[self._dtype.newbyteorder("=")]
        f.write(_HEADER.pack(RETRO_MAGIC, 1, self.stride, code, len(sizes), self.chunk_size, len(addresses),
                             int(self.retrieval_db)))
        f.write(sizes.astype("<i4").data)
        f.write(pointers.data)
        f.write(chunk_id_start.astype("<i8").data)
        f.write(addresses.astype("<i8").data)


class RetrievalIndexedDataset:
    """Reader of the MMIDRET format (memory-mapped; opening reads only the header pages).

    ``ds[i]`` is document i without its padding; ``get_padded(i)`` keeps it. ``get_chunk(id)``
    returns ``chunk_size`` tokens, or ``2 * chunk_size`` (the chunk and its continuation) for a
    retrieval database unless ``force_no_cont_ids``. ``pad_id`` is the id the documents are
    padded with; by default it is read from the data (every document ends in at least one pad).
    """

    def __init__(self, path_prefix, pad_id=None):
        self._prefix = os.fspath(path_prefix)
        idx_path, bin_path = get_idx_path(self._prefix), get_bin_path(self._prefix)
        idx_size, (stride, code, n, chunk_size, chunks, retrieval_db) = _read_header(
            idx_path, _HEADER, RETRO_MAGIC, "this is an MMIDIDX (mmap) index, not a retmmap one; "
                                            "open it with IndexedDataset")
        if code not in _CODE_TO_DTYPE:
            raise IndexedDatasetError(f"{idx_path}: unknown dtype code {code}; known codes are 1-8")
        try:
            _check_chunking(chunk_size, stride, idx_path)
        except ValueError as e:
            raise IndexedDatasetError(str(e)) from None
        self._dtype = dtype_from_code(code)
        self.chunk_size, self.stride = int(chunk_size), int(stride)
        self.retrieval_db = bool(retrieval_db)
        _check_idx_size(idx_path, idx_size, _HEADER.size + 20 * n + 8 * chunks,
                        f"a header with {n} documents and {chunks} chunks")
        buf = np.memmap(idx_path, dtype=np.uint8, mode="r") if idx_size else np.empty(0, np.uint8)
        off = _HEADER.size
        self._sizes = np.frombuffer(buf, dtype="<i4", count=n, offset=off)
        self._pointers = np.frombuffer(buf, dtype="<i8", count=n, offset=off + 4 * n)
        self._chunk_id_start = np.frombuffer(buf, dtype="<i8", count=n, offset=off + 12 * n)
        self._chunk_addresses = np.frombuffer(buf, dtype="<i8", count=chunks, offset=off + 20 * n)
        extra = self.chunk_size if self.retrieval_db else 0
        itemsize = self._dtype.itemsize
        expected = int(self._pointers[-1]) + (int(self._sizes[-1]) + extra) * itemsize if n else 0
        bin_size = _file_size(bin_path)
        if bin_size != expected:
            raise IndexedDatasetError(f"{bin_path}: file is {bin_size} bytes but the index expects {expected}")
        if n and (self._chunk_id_start[0] != 0 or (chunks and self._chunk_addresses[-1] + (
                self.chunk_size + extra) * itemsize > bin_size)):
            raise IndexedDatasetError(f"{idx_path}: chunk table does not match the documents")
        self._bin = np.memmap(bin_path, dtype=self._dtype, mode="r") if bin_size else np.empty(0, self._dtype)
        if pad_id is None and n:
            pad_id = int(self._bin[(int(self._pointers[0]) // itemsize) + int(self._sizes[0]) - 1])
        self.pad_id = pad_id

    # -- documents -------------------------------------------------------------------------
    def __len__(self):
        return len(self._sizes)

    def _doc(self, idx):
        i = operator.index(idx)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"{self._prefix}: document index {idx} out of range for {len(self)} documents")
        return i

    def get_padded(self, idx):
        """Document ``idx`` with its padding (``sizes[idx]`` tokens), a read-only view."""
        i = self._doc(idx)
        start = int(self._pointers[i]) // self._dtype.itemsize
        return self._bin[start:start + int(self._sizes[i])]

    def __getitem__(self, idx):
        """Document ``idx`` without its padding: the trailing pad ids (at least one, at most
        ``chunk_size``) are dropped. A document that itself ends in pad ids is ambiguous; use
        ``get_padded`` then."""
        if isinstance(idx, slice):
            return [self[i] for i in range(*idx.indices(len(self)))]
        padded = self.get_padded(idx)
        tail = padded[-self.chunk_size:]
        not_pad = np.flatnonzero(tail != self.pad_id)
        keep = len(padded) - len(tail) + (int(not_pad[-1]) + 1 if not_pad.size else 0)
        return padded[:keep]

    def get(self, idx, offset=0, length=None):
        padded = self.get_padded(idx)
        stop = len(padded) if length is None else offset + length
        if offset < 0 or stop > len(padded) or stop < offset:
            raise IndexError(f"{self._prefix}: offset {offset} and length {length} fall outside "
                             f"document {idx} of {len(padded)} padded tokens")
        return padded[offset:stop]

    # -- chunks ------------------------------------------------------------------------------
    @property
    def chunks(self):
        return len(self._chunk_addresses)

    def get_chunk(self, chunk_id, force_no_cont_ids=False):
        """Chunk ``chunk_id`` (``chunk_size`` tokens), plus its continuation for a retrieval DB."""
        c = operator.index(chunk_id)
        if not 0 <= c < self.chunks:
            raise IndexError(f"{self._prefix}: chunk id {chunk_id} out of range for {self.chunks} chunks")
        count = self.chunk_size * (2 if self.retrieval_db and not force_no_cont_ids else 1)
        start = int(self._chunk_addresses[c]) // self._dtype.itemsize
        return self._bin[start:start + count]

    def get_chunks(self, chunk_ids, force_no_cont_ids=False):
        """Rows ``[len(chunk_ids), chunk_size (x2 for a DB)]`` in one gather (a new array)."""
        ids = np.asarray(chunk_ids, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.chunks):
            raise IndexError(f"{self._prefix}: chunk ids must lie in [0, {self.chunks})")
        count = self.chunk_size * (2 if self.retrieval_db and not force_no_cont_ids else 1)
        starts = self._chunk_addresses[ids] // self._dtype.itemsize
        return self._bin[starts[:, None] + np.arange(count, dtype=np.int64)[None, :]]

    def get_chunk_id(self, document, offset):
        """Id of the chunk of ``document`` starting at token ``offset`` (a multiple of the stride)."""
        i = self._doc(document)
        if offset % self.stride or not 0 <= offset <= int(self._sizes[i]) - self.chunk_size:
            raise ValueError(f"{self._prefix}: offset {offset} is not a chunk start of document {i} "
                             f"(stride {self.stride}, {int(self._sizes[i])} padded tokens)")
        return int(self._chunk_id_start[i]) + offset // self.stride

    def from_chunk_id_to_doc_id(self, chunk_id):
        """The document holding chunk ``chunk_id`` (binary search over ``chunk_id_start``);
        accepts an array of ids too."""
        ids = np.asarray(chunk_id, dtype=np.int64)
        if ids.size and (ids.min() < 0 or ids.max() >= self.chunks):
            raise IndexError(f"{self._prefix}: chunk id out of range for {self.chunks} chunks")
        docs = np.searchsorted(self._chunk_id_start, ids, side="right") - 1
        return int(docs) if docs.ndim == 0 else docs

    def document_chunk_range(self, document):
        """``(first, end)`` chunk ids of ``document``; array arguments give two arrays."""
        docs = np.asarray(document, dtype=np.int64)
        ends = np.append(self._chunk_id_start[1:], self.chunks)
        first, end = self._chunk_id_start[docs], ends[docs]
        return (int(first), int(end)) if docs.ndim == 0 else (first, end)

    def chunk_document_range(self, chunk_ids):
        """For each chunk id, the ``[first, end)`` chunk ids of its own document."""
        return self.document_chunk_range(self.from_chunk_id_to_doc_id(chunk_ids))

    def chunk_ids_before_document(self, document):
        """Number of chunks in documents ``[0, document)`` (``--percent`` limits)."""
        return int(self._chunk_id_start[document]) if document < len(self) else self.chunks

    # -- properties ---------------------------------------------------------------------------
    dtype = property(lambda self: self._dtype)
    sizes = property(lambda self: self._sizes, doc="Padded tokens per document (int32).")
    pointers = property(lambda self: self._pointers)
    chunk_id_start = property(lambda self: self._chunk_id_start)
    chunk_addresses = property(lambda self: self._chunk_addresses)

    @property
    def doc_idx(self):
        return np.arange(len(self) + 1, dtype=np.int64)

    def __getstate__(self):
        return {"path_prefix": self._prefix, "pad_id": self.pad_id}

    def __setstate__(self, state):
        self.__init__(**state)

    def __repr__(self):
        return (f"RetrievalIndexedDataset({self._prefix!r}, documents={len(self)}, chunks={self.chunks}, "
                f"chunk_size={self.chunk_size}, stride={self.stride}, retrieval_db={self.retrieval_db})")
