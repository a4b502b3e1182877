"""retmmap (NeMo's MMIDRET) writer and reader: bytes against a spec-by-hand writer, round trips."""
import struct

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDatasetError
from megatron.core.datasets.retro_indexed_dataset import (
    RetrievalIndexedDataset, RetrievalIndexedDatasetBuilder, is_retrieval_dataset)


def reference_files(docs, pad, chunk_size, stride, retrieval_db, dtype=np.uint16, code=8):
    """The .bin/.idx bytes, document by document, written from the format description alone."""
    binary, sizes, pointers, starts, addresses = b"", [], [], [], []
    itemsize = np.dtype(dtype).itemsize
    chunk_id = 0
    for doc in docs:
        padding = chunk_size - len(doc) % chunk_size
        size = len(doc) + padding
        pointer = len(binary)
        tail = padding + (chunk_size if retrieval_db else 0)
        padded = np.concatenate([np.asarray(doc, dtype=dtype), np.full(tail, pad, dtype=dtype)])
        binary += padded.astype("<u2").tobytes()
        sizes.append(size)
        pointers.append(pointer)
        starts.append(chunk_id)
        for offset in range(0, size - chunk_size + 1, stride):
            addresses.append(pointer + offset * itemsize)
            chunk_id += 1
    idx = b"MMIDRET\x00\x00" + struct.pack("<II", 1, stride) + struct.pack("<B", code)
    idx += struct.pack("<QQQ", len(docs), chunk_size, len(addresses)) + struct.pack("<B", int(retrieval_db))
    idx += struct.pack(f"<{len(sizes)}i", *sizes) + struct.pack(f"<{len(pointers)}q", *pointers)
    idx += struct.pack(f"<{len(starts)}q", *starts) + struct.pack(f"<{len(addresses)}q", *addresses)
    return binary, idx


def write(prefix, docs, pad, chunk_size, stride, retrieval_db, batched=False):
    builder = RetrievalIndexedDatasetBuilder(prefix + ".bin", np.uint16, pad_id=pad, chunk_size=chunk_size,
                                             stride=stride, retrieval_db=retrieval_db)
    if batched:
        builder.add_documents(np.concatenate(docs), [len(d) for d in docs])
    else:
        for doc in docs:
            builder.add_item(doc)
    builder.finalize(prefix + ".idx")
    return RetrievalIndexedDataset(prefix)


@pytest.mark.parametrize("chunk_size,stride", [(8, 8), (8, 4), (8, 2), (4, 1)])
@pytest.mark.parametrize("retrieval_db", [False, True])
def test_round_trip_matches_reference_bytes(tmp_path, chunk_size, stride, retrieval_db):
    rng = np.random.default_rng(chunk_size * 10 + stride + retrieval_db)
    pad = 999
    # Random lengths plus exact multiples of the chunk size (the whole-pad-chunk quirk) and 1.
    lengths = list(rng.integers(1, 5 * chunk_size, size=12)) + [chunk_size, 2 * chunk_size, 1, 3 * chunk_size]
    docs = [rng.integers(0, 900, size=n).astype(np.uint16) for n in lengths]
    for batched in (False, True):
        prefix = str(tmp_path / f"ds{int(batched)}")
        ds = write(prefix, docs, pad, chunk_size, stride, retrieval_db, batched)
        binary, idx = reference_files(docs, pad, chunk_size, stride, retrieval_db)
        assert open(prefix + ".bin", "rb").read() == binary
        assert open(prefix + ".idx", "rb").read() == idx
        assert is_retrieval_dataset(prefix)
        assert len(ds) == len(docs) and ds.pad_id == pad
        for i, doc in enumerate(docs):
            np.testing.assert_array_equal(ds[i], doc)  # no padding
            padded = ds.get_padded(i)
            assert len(padded) % chunk_size == 0 and len(padded) > len(doc)
            assert (padded[len(doc):] == pad).all()
        # Every chunk: its tokens, its document, its id from (document, offset).
        width = chunk_size * (2 if retrieval_db else 1)
        chunk_id = 0
        for d, doc in enumerate(docs):
            padded = np.concatenate([doc, np.full(width + chunk_size, pad, np.uint16)])
            first, end = ds.document_chunk_range(d)
            assert first == chunk_id
            for offset in range(0, len(ds.get_padded(d)) - chunk_size + 1, stride):
                np.testing.assert_array_equal(ds.get_chunk(chunk_id), padded[offset:offset + width])
                assert len(ds.get_chunk(chunk_id, force_no_cont_ids=True)) == chunk_size
                assert ds.from_chunk_id_to_doc_id(chunk_id) == d
                assert ds.get_chunk_id(d, offset) == chunk_id
                chunk_id += 1
            assert end == chunk_id
        assert ds.chunks == chunk_id
        np.testing.assert_array_equal(ds.get_chunks(np.arange(ds.chunks)),
                                      np.stack([ds.get_chunk(c) for c in range(ds.chunks)]))


def test_errors(tmp_path):
    with pytest.raises(ValueError, match="multiple of the stride"):
        RetrievalIndexedDatasetBuilder(str(tmp_path / "x.bin"), np.uint16, pad_id=0, chunk_size=8, stride=3)
    ds = write(str(tmp_path / "ok"), [np.arange(1, 10, dtype=np.uint16)], 0, 4, 2, True)
    with pytest.raises(ValueError, match="not a chunk start"):
        ds.get_chunk_id(0, 1)
    with pytest.raises(IndexError, match="chunk id 99"):
        ds.get_chunk(99)
    raw = open(tmp_path / "ok.idx", "rb").read()
    (tmp_path / "bad.idx").write_bytes(raw[:-8])
    (tmp_path / "bad.bin").write_bytes(open(tmp_path / "ok.bin", "rb").read())
    with pytest.raises(IndexedDatasetError, match="bad.idx: truncated"):
        RetrievalIndexedDataset(str(tmp_path / "bad"))
