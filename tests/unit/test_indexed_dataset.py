"""The .bin/.idx indexed dataset: byte layout, readers, builders, validation, atomicity."""
import os
import pickle
import struct
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from megatron.core.datasets import indexed_dataset as idx_mod
from megatron.core.datasets.indexed_dataset import (
    IndexedCachedDataset,
    IndexedDataset,
    IndexedDatasetBuilder,
    IndexedDatasetError,
    LazyIndexedDataset,
    LegacyIndexedDatasetBuilder,
    MMapIndexedDataset,
    MMapIndexedDatasetBuilder,
    best_fitting_dtype,
    dtype_code,
    dtype_from_code,
    get_bin_path,
    get_idx_path,
    infer_dataset_impl,
    make_builder,
    make_dataset,
)

ALL_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float64, np.float32, np.uint16]
LEGACY_DTYPES = [np.uint8, np.int8, np.int16, np.int32, np.int64, np.float64, np.uint16]
# The worked example: four sequences of lengths 2, 3, 4, 7 in three documents.
EXAMPLE_DOCS = [[[1, 2], [3, 4, 5]], [[6, 7, 8, 9]], [[10, 11, 12, 13, 14, 15, 16]]]


def write_docs(prefix, docs, dtype=np.uint16, builder_cls=IndexedDatasetBuilder):
    """Write ``docs`` (a list of documents, each a list of sequences) one item at a time."""
    builder = builder_cls(get_bin_path(prefix), dtype=dtype)
    for doc in docs:
        for seq in doc:
            builder.add_item(np.asarray(seq, dtype=dtype))
        builder.end_document()
    builder.finalize(get_idx_path(prefix))
    return prefix


def expected_mmap_idx(code, sizes, doc_idx, itemsize):
    pointers = np.concatenate(([0], np.cumsum(sizes)[:-1])) * itemsize
    return (b"MMIDIDX\x00\x00" + struct.pack("<Q", 1) + struct.pack("<B", code)
            + struct.pack("<QQ", len(sizes), len(doc_idx))
            + np.asarray(sizes, "<i4").tobytes() + np.asarray(pointers, "<i8").tobytes()
            + np.asarray(doc_idx, "<i8").tobytes())


@pytest.fixture
def example(tmp_path):
    return write_docs(str(tmp_path / "corpus_text_document"), EXAMPLE_DOCS)


def test_worked_example_bytes(example):
    with open(example + ".idx", "rb") as f:
        raw = f.read()
    assert len(raw) == 114 and os.path.getsize(example + ".bin") == 32
    assert raw == expected_mmap_idx(8, [2, 3, 4, 7], [0, 2, 3, 4], 2)
    # Independent spot checks of the table offsets.
    assert raw[:9] == b"MMIDIDX\x00\x00" and raw[17] == 8
    assert struct.unpack_from("<QBQQ", raw, 9) == (1, 8, 4, 4)
    assert struct.unpack_from("<4q", raw, 34 + 16) == (0, 4, 10, 18)
    assert struct.unpack_from("<4q", raw, 34 + 48) == (0, 2, 3, 4)
    with open(example + ".bin", "rb") as f:
        assert f.read() == np.arange(1, 17, dtype="<u2").tobytes()


def test_reader_api(example):
    ds = IndexedDataset(example)
    assert MMapIndexedDataset is IndexedDataset and len(ds) == 4
    assert ds.dtype == np.uint16
    assert ds.sizes.dtype == np.int32 and ds.sizes.tolist() == [2, 3, 4, 7]
    assert ds.sequence_lengths is ds.sizes
    assert ds.doc_idx.dtype == np.int64 and ds.doc_idx.tolist() == [0, 2, 3, 4]
    assert ds.document_indices.tolist() == [0, 2, 3, 4]
    assert ds.pointers.tolist() == [0, 4, 10, 18]
    assert ds[1].tolist() == [3, 4, 5] and ds[-1].tolist() == [10, 11, 12, 13, 14, 15, 16]
    assert ds[np.int64(2)].tolist() == [6, 7, 8, 9]
    assert [a.tolist() for a in ds[1:3]] == [[3, 4, 5], [6, 7, 8, 9]]
    assert [a.tolist() for a in ds[2:]] == [[6, 7, 8, 9], list(range(10, 17))]
    assert ds[3:1] == []
    with pytest.raises(ValueError, match="step"):
        ds[0:4:2]
    with pytest.raises(IndexError, match="out of range for 4 sequences"):
        ds[4]
    with pytest.raises(TypeError):
        ds[1.5]


def test_getitem_is_a_view_not_a_copy(example):
    ds = IndexedDataset(example)
    item = ds[2]
    assert not item.flags.owndata and not item.flags.writeable
    assert isinstance(item.base, np.memmap) or isinstance(item.base.base, np.memmap)
    assert all(not a.flags.owndata for a in ds[0:4])


def test_get_with_offset_and_length(example):
    ds = IndexedDataset(example)
    assert ds.get(3).tolist() == list(range(10, 17))
    assert ds.get(3, offset=2).tolist() == [12, 13, 14, 15, 16]
    assert ds.get(3, offset=2, length=3).tolist() == [12, 13, 14]
    assert ds.get(3, offset=7).tolist() == []
    assert not ds.get(3, 1, 2).flags.owndata
    with pytest.raises(IndexError, match="offset 5 and length 3 fall outside sequence 0 of 2"):
        ds.get(0, 5, 3)


def test_doc_idx_get_set_and_exists(example, tmp_path):
    ds = IndexedDataset(example)
    ds.set_doc_idx([0, 2])
    assert ds.get_doc_idx().tolist() == [0, 2] and ds.get_document_indices().tolist() == [0, 2]
    assert IndexedDataset.exists(example)
    assert not IndexedDataset.exists(str(tmp_path / "missing"))
    os.remove(example + ".bin")
    assert not IndexedDataset.exists(example)


def test_options_are_keyword_only_and_warmup_reads(example):
    with pytest.raises(TypeError):
        IndexedDataset(example, False)  # 2021: skip_warmup, core: multimodal; refuse to guess
    assert IndexedDataset(example, skip_warmup=False)[0].tolist() == [1, 2]


def test_mmap_false_reads_with_pread(example):
    ds = IndexedDataset(example, mmap=False)
    assert ds[3].tolist() == list(range(10, 17)) and ds[3].flags.owndata
    assert [a.tolist() for a in ds[0:2]] == [[1, 2], [3, 4, 5]]
    assert ds.get(1, 1, 1).tolist() == [4]


def test_pickle_reopens_by_path(example):
    ds = IndexedDataset(example)
    blob = pickle.dumps(ds)
    assert len(blob) < 300  # the path travels, not the data
    clone = pickle.loads(blob)
    assert clone[3].tolist() == ds[3].tolist() and clone.doc_idx.tolist() == [0, 2, 3, 4]
    ds.set_doc_idx([0, 3])
    assert pickle.loads(pickle.dumps(ds)).doc_idx.tolist() == [0, 3]
    lazy = IndexedCachedDataset(write_docs(example + "_legacy", EXAMPLE_DOCS, builder_cls=LegacyIndexedDatasetBuilder))
    assert pickle.loads(pickle.dumps(lazy))[1].tolist() == [3, 4, 5]


def test_dataloader_workers_read_after_pickling(example):
    # A spawned worker receives the dataset by pickle, exactly as a DataLoader with spawn does.
    code = (
        "import pickle, sys; ds = pickle.loads(sys.stdin.buffer.read()); "
        "print(ds[3].tolist(), ds.get(0, 1).tolist())"
    )
    out = subprocess.run([sys.executable, "-c", code], input=pickle.dumps(IndexedDataset(example)),
                         capture_output=True, check=True)
    assert out.stdout.decode().strip() == "[10, 11, 12, 13, 14, 15, 16] [2]"


@pytest.mark.parametrize("dtype", ALL_DTYPES, ids=lambda t: np.dtype(t).name)
def test_round_trip_every_dtype(tmp_path, dtype):
    rng = np.random.default_rng(0)
    info = np.iinfo(dtype) if np.dtype(dtype).kind in "iu" else None
    def sample(n):
        if info is None:
            return rng.standard_normal(n).astype(dtype)
        return rng.integers(info.min, info.max, n, endpoint=True, dtype=dtype)
    docs = [[sample(int(n)) for n in rng.integers(0, 9, size=int(k))] for k in (1, 3, 2, 1)]
    prefix = write_docs(str(tmp_path / "rt"), docs, dtype=dtype)
    with open(prefix + ".idx", "rb") as f:
        assert f.read()[17] == dtype_code(dtype)
    ds = IndexedDataset(prefix)
    assert ds.dtype == np.dtype(dtype)
    flat = [seq for doc in docs for seq in doc]
    assert len(ds) == len(flat)
    for got, want in zip(ds, flat):
        np.testing.assert_array_equal(got, want)
    assert ds.doc_idx.tolist() == [0, 1, 4, 6, 7]


def test_dtype_codes_and_best_fit():
    assert [dtype_code(t) for t in ALL_DTYPES] == [1, 2, 3, 4, 5, 6, 7, 8]
    assert dtype_from_code(7) == np.float32 and dtype_from_code(6) == np.float64
    with pytest.raises(IndexedDatasetError, match="unknown dtype code 9"):
        dtype_from_code(9)
    with pytest.raises(IndexedDatasetError, match="float16 has no indexed-dataset code"):
        dtype_code(np.float16)
    assert best_fitting_dtype(50257) == np.uint16 and best_fitting_dtype(30524) == np.uint16
    assert best_fitting_dtype(65500) == np.int32 and best_fitting_dtype(None) == np.int32


def test_make_builder_and_make_dataset(tmp_path):
    prefix = str(tmp_path / "mb")
    builder = make_builder(prefix + ".bin", "mmap", vocab_size=50257)
    assert isinstance(builder, IndexedDatasetBuilder) and builder.dtype == np.uint16
    builder.add_document(np.arange(5), [5])
    builder.finalize(prefix + ".idx")
    big = make_builder(str(tmp_path / "big.bin"), "mmap", vocab_size=100_000)
    assert big.dtype == np.int32
    big.abort()
    legacy = make_builder(str(tmp_path / "lg.bin"), "cached", vocab_size=100)
    assert isinstance(legacy, LegacyIndexedDatasetBuilder) and legacy.dtype == np.int32
    legacy.add_document([1, 2, 3], [1, 2])
    legacy.finalize()
    assert isinstance(make_dataset(prefix, "infer"), IndexedDataset)
    assert isinstance(make_dataset(prefix, "mmap", skip_warmup=False), IndexedDataset)
    assert isinstance(make_dataset(str(tmp_path / "lg"), "infer"), IndexedCachedDataset)
    assert isinstance(make_dataset(str(tmp_path / "lg"), "lazy"), LazyIndexedDataset)
    assert infer_dataset_impl(prefix) == "mmap" and infer_dataset_impl(str(tmp_path / "lg")) == "cached"
    with pytest.raises(ValueError, match="unknown dataset impl 'fast'"):
        make_dataset(prefix, "fast")
    with pytest.raises(FileNotFoundError, match="nope.idx"):
        make_dataset(str(tmp_path / "nope"))
    with open(tmp_path / "junk.idx", "wb") as f:
        f.write(b"NOTANIDX!" + bytes(40))
    with pytest.raises(IndexedDatasetError, match="junk.idx: unknown magic"):
        infer_dataset_impl(str(tmp_path / "junk"))


def test_builder_accepts_lists_arrays_and_tensors(tmp_path):
    torch = pytest.importorskip("torch")
    prefix = str(tmp_path / "inputs")
    with MMapIndexedDatasetBuilder(prefix + ".bin", dtype=np.uint16) as builder:
        builder.add_item([1, 2, 3])
        builder.add_item(np.array([4, 5], dtype=np.int64))
        builder.add_item(torch.tensor([6, 7, 8, 9]))
        builder.add_item(torch.tensor([10.0], requires_grad=True).long())
        builder.add_item([])
        builder.end_document()
        builder.add_document(torch.arange(3), torch.tensor([1, 2]))
        builder.finalize(prefix + ".idx")
    ds = IndexedDataset(prefix)
    assert [a.tolist() for a in ds[0:len(ds)]] == [[1, 2, 3], [4, 5], [6, 7, 8, 9], [10], [], [0], [1, 2]]
    assert ds.doc_idx.tolist() == [0, 5, 7]


def test_builder_rejects_bad_input(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "bad.bin"), dtype=np.uint16)
    with pytest.raises(ValueError, match="token id 70000 does not fit in uint16"):
        builder.add_item([1, 70000])
    with pytest.raises(ValueError, match="token id -1 does not fit in uint16"):
        builder.add_document(np.array([-1, 2], dtype=np.int32), [2])
    with pytest.raises(TypeError, match="float64 cannot be stored as uint16"):
        builder.add_item([1.5])
    with pytest.raises(ValueError, match=r"expected a 1-D sequence of tokens, got shape \(2, 2\)"):
        builder.add_item(np.zeros((2, 2), dtype=np.uint16))
    with pytest.raises(ValueError, match="lengths add up to 3 but the document has 4 tokens"):
        builder.add_document(np.arange(4), [1, 2])
    with pytest.raises(ValueError, match="sequence lengths must lie in"):
        builder.add_document(np.arange(4), [5, -1])
    builder.add_item([1])
    with pytest.raises(RuntimeError, match="1 add_item\\(\\) sequences not yet closed"):
        builder.add_document([1], [1])
    with pytest.raises(RuntimeError, match="call end_document\\(\\) before finalize"):
        builder.finalize(str(tmp_path / "bad.idx"))
    builder.abort()
    with pytest.raises(RuntimeError, match="already finalized or aborted"):
        builder.add_item([1])
    with pytest.raises(IndexedDatasetError, match="dtype float16 cannot be stored"):
        IndexedDatasetBuilder(str(tmp_path / "f16.bin"), dtype=np.float16)
    with pytest.raises(IndexedDatasetError, match="dtype float32 cannot be stored by LegacyIndexedDatasetBuilder"):
        LegacyIndexedDatasetBuilder(str(tmp_path / "f32.bin"), dtype=np.float32)
    assert os.listdir(tmp_path) == []


def test_add_document_and_empty_dataset(tmp_path):
    prefix = str(tmp_path / "docs")
    builder = IndexedDatasetBuilder(prefix + ".bin", dtype=np.int32)
    builder.add_document(np.arange(10, dtype=np.int32), np.array([3, 0, 7]))
    builder.add_document(np.arange(2), [2])
    builder.add_document([], [])  # an empty document is kept, as end_document() would
    builder.finalize()
    ds = IndexedDataset(prefix)
    assert ds.sizes.tolist() == [3, 0, 7, 2] and ds.doc_idx.tolist() == [0, 3, 4, 4]
    assert ds[1].tolist() == [] and ds[2].tolist() == list(range(3, 10))
    empty = str(tmp_path / "empty")
    IndexedDatasetBuilder(empty + ".bin").finalize(empty + ".idx")
    assert len(IndexedDataset(empty)) == 0 and IndexedDataset(empty)[0:5] == []
    assert os.path.getsize(empty + ".idx") == 34 + 8


def test_merge_concatenates_data_sizes_and_documents(tmp_path):
    a = write_docs(str(tmp_path / "a"), EXAMPLE_DOCS)
    b = write_docs(str(tmp_path / "b"), [[[100], [101, 102]], [[103]]])
    legacy = write_docs(str(tmp_path / "c"), [[[7, 7]]], builder_cls=LegacyIndexedDatasetBuilder)
    out = str(tmp_path / "merged")
    builder = IndexedDatasetBuilder(out + ".bin", dtype=np.uint16)
    builder.add_item([42])
    builder.end_document()
    builder.merge_file_(a)
    builder.add_index(b)
    builder.merge_file_(legacy)
    builder.finalize(out + ".idx")
    ds = IndexedDataset(out)
    assert ds.sizes.tolist() == [1, 2, 3, 4, 7, 1, 2, 1, 2]
    assert ds.doc_idx.tolist() == [0, 1, 3, 4, 5, 7, 8, 9]
    assert ds.pointers.tolist() == [0, 2, 6, 12, 20, 34, 36, 40, 42]
    assert [x.tolist() for x in ds[5:9]] == [[100], [101, 102], [103], [7, 7]]
    ds.verify()


def test_merge_errors(tmp_path):
    a = write_docs(str(tmp_path / "a"), EXAMPLE_DOCS, dtype=np.int32)
    builder = IndexedDatasetBuilder(str(tmp_path / "m.bin"), dtype=np.uint16)
    with pytest.raises(IndexedDatasetError, match="a.idx: dtype int32 does not match the builder's uint16"):
        builder.merge_file_(a)
    builder.add_item([1])
    with pytest.raises(RuntimeError, match="not yet closed by end_document"):
        builder.merge_file_(a)
    builder.abort()


def test_legacy_format_bytes(tmp_path):
    prefix = write_docs(str(tmp_path / "legacy"), EXAMPLE_DOCS, dtype=np.uint16,
                        builder_cls=LegacyIndexedDatasetBuilder)
    with open(prefix + ".idx", "rb") as f:
        raw = f.read()
    expected = (b"TNTIDX\x00\x00" + struct.pack("<QQQQQQ", 1, 8, 2, 4, 4, 4)
                + np.arange(5, dtype="<i8").tobytes()             # dim_offsets
                + np.array([0, 2, 5, 9, 16], "<i8").tobytes()     # data offsets, in elements
                + np.array([2, 3, 4, 7], "<i8").tobytes()         # sizes
                + np.array([0, 2, 3, 4], "<i8").tobytes())        # doc_idx
    assert raw == expected and len(raw) == 56 + 8 * 18
    with open(prefix + ".bin", "rb") as f:
        assert f.read() == np.arange(1, 17, dtype="<u2").tobytes()
    f64 = write_docs(str(tmp_path / "f64"), [[[0.5, 1.5]]], dtype=np.float64,
                     builder_cls=LegacyIndexedDatasetBuilder)
    with open(f64 + ".idx", "rb") as f:
        # 2021 wrote float64 as code 7 with its true element size.
        assert struct.unpack_from("<QQ", f.read(), 16) == (7, 8)
    assert LazyIndexedDataset(f64)[0].tolist() == [0.5, 1.5]


@pytest.mark.parametrize("reader", [LazyIndexedDataset, IndexedCachedDataset])
@pytest.mark.parametrize("dtype", LEGACY_DTYPES, ids=lambda t: np.dtype(t).name)
def test_legacy_round_trip(tmp_path, reader, dtype):
    docs = [[np.arange(n, dtype=dtype) + n for n in (3, 1)], [np.arange(5, dtype=dtype)], [[]]]
    prefix = write_docs(str(tmp_path / "lg"), docs, dtype=dtype, builder_cls=LegacyIndexedDatasetBuilder)
    ds = reader(prefix)
    assert len(ds) == 4 and ds.dtype == np.dtype(dtype)
    assert ds.sizes.dtype == np.int32 and ds.sizes.tolist() == [3, 1, 5, 0]
    assert ds.doc_idx.tolist() == [0, 2, 3, 4]
    assert ds[0].tolist() == [3, 4, 5] and ds[-2].tolist() == [0, 1, 2, 3, 4]
    assert [x.tolist() for x in ds[1:3]] == [[1], [0, 1, 2, 3, 4]]
    assert ds.get(2, 1, 3).tolist() == [1, 2, 3] and ds.get(2, 4).tolist() == [4]
    assert ds[3].tolist() == []


def test_cached_reader_prefetches(tmp_path):
    prefix = write_docs(str(tmp_path / "c"), EXAMPLE_DOCS, builder_cls=LegacyIndexedDatasetBuilder)
    ds = IndexedCachedDataset(prefix)
    assert ds.supports_prefetch and not IndexedDataset.supports_prefetch
    ds.prefetch([3, 1, 3])
    assert sorted(ds._cache) == [1, 3]
    os.remove(prefix + ".bin")  # cached items no longer need the file
    assert ds[3].tolist() == list(range(10, 17)) and ds.get(1, 1).tolist() == [4, 5]
    assert not ds[1].flags.writeable


# ---- validation on open -------------------------------------------------------------

def _patch(path, offset, data):
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def test_error_truncated_bin(example):
    os.truncate(example + ".bin", 30)
    with pytest.raises(IndexedDatasetError, match=r"corpus_text_document\.bin: file is 30 bytes but the index expects 32"):
        IndexedDataset(example)


def test_error_bin_too_long(example):
    with open(example + ".bin", "ab") as f:
        f.write(b"\x00\x00")
    with pytest.raises(IndexedDatasetError, match=r"\.bin: file is 34 bytes but the index expects 32"):
        IndexedDataset(example)


def test_error_truncated_idx(example):
    os.truncate(example + ".idx", 100)
    with pytest.raises(IndexedDatasetError, match=r"\.idx: truncated: file is 100 bytes but .* needs 114"):
        IndexedDataset(example)
    os.truncate(example + ".idx", 20)
    with pytest.raises(IndexedDatasetError, match=r"\.idx: truncated, 20 bytes is shorter than the 34-byte header"):
        IndexedDataset(example)


def test_error_idx_trailing_bytes(example):
    with open(example + ".idx", "ab") as f:
        f.write(bytes(7))
    with pytest.raises(IndexedDatasetError, match=r"\.idx: has trailing bytes: file is 121 bytes"):
        IndexedDataset(example)


def test_error_magic_version_code(example):
    _patch(example + ".idx", 0, b"XXIDIDX")
    with pytest.raises(IndexedDatasetError, match=r"\.idx: unknown magic b'XXIDIDX"):
        IndexedDataset(example)
    _patch(example + ".idx", 0, b"MMIDIDX")
    _patch(example + ".idx", 9, struct.pack("<Q", 2))
    with pytest.raises(IndexedDatasetError, match=r"\.idx: unsupported version 2, expected 1"):
        IndexedDataset(example)
    _patch(example + ".idx", 9, struct.pack("<Q", 1))
    _patch(example + ".idx", 17, b"\x0c")
    with pytest.raises(IndexedDatasetError, match=r"\.idx: unknown dtype code 12"):
        IndexedDataset(example)


def test_error_legacy_file_opened_as_mmap_and_back(tmp_path, example):
    legacy = write_docs(str(tmp_path / "lg"), EXAMPLE_DOCS, builder_cls=LegacyIndexedDatasetBuilder)
    with pytest.raises(IndexedDatasetError, match="legacy TNTIDX"):
        IndexedDataset(legacy)
    with pytest.raises(IndexedDatasetError, match="this is an MMap index"):
        LazyIndexedDataset(example)


def test_error_pointers_disagree_with_sizes(example):
    # Sequence 2 (length 4) now claims to start at byte 12 instead of 10.
    _patch(example + ".idx", 34 + 16 + 16, struct.pack("<q", 12))
    with pytest.raises(IndexedDatasetError, match=r"\.idx: pointer of sequence 2 is 12 but the sequences before it end at byte 10"):
        IndexedDataset(example)


def test_error_negative_size(example):
    _patch(example + ".idx", 34 + 4, struct.pack("<i", -1))  # sequence 1: 3 -> -1
    with pytest.raises(IndexedDatasetError, match=r"\.idx: sequence 1 has a negative length"):
        IndexedDataset(example)


def test_error_size_disagrees_with_bin_length(example):
    _patch(example + ".idx", 34 + 12, struct.pack("<i", 8))  # last size 7 -> 8
    with pytest.raises(IndexedDatasetError, match=r"\.bin: file is 32 bytes but the index expects 34"):
        IndexedDataset(example)


def test_error_document_index(example):
    doc_off = 34 + 48
    _patch(example + ".idx", doc_off, struct.pack("<q", 1))
    with pytest.raises(IndexedDatasetError, match=r"\.idx: document index starts at 1, expected 0"):
        IndexedDataset(example)
    _patch(example + ".idx", doc_off, struct.pack("<qqqq", 0, 3, 2, 4))
    with pytest.raises(IndexedDatasetError, match=r"\.idx: document index decreases at entry 2 \(3 -> 2\)"):
        IndexedDataset(example)
    _patch(example + ".idx", doc_off, struct.pack("<qqqq", 0, 2, 3, 3))
    with pytest.raises(IndexedDatasetError, match=r"\.idx: document index ends at 3 but there are 4 sequences"):
        IndexedDataset(example)


def test_large_index_gets_o1_checks_and_verify_finds_the_rest(tmp_path, monkeypatch):
    # Above FULL_CHECK_LIMIT only boundary entries are checked on open; verify() scans all.
    prefix = write_docs(str(tmp_path / "big"), [[[i] * 3 for i in range(5)], [[9] * 2] * 5])
    ptr5, doc1 = 34 + 4 * 10 + 8 * 5, 34 + 12 * 10 + 8
    monkeypatch.setattr(idx_mod, "FULL_CHECK_LIMIT", 4)
    IndexedDataset(prefix).verify(chunk=3)
    _patch(prefix + ".idx", ptr5, struct.pack("<q", 16))  # sequence 5 starts at byte 30
    ds = IndexedDataset(prefix)
    with pytest.raises(IndexedDatasetError, match="pointer of sequence 5 is 16 but the sequences before it end at byte 30"):
        ds.verify(chunk=3)
    monkeypatch.setattr(idx_mod, "FULL_CHECK_LIMIT", 100)
    with pytest.raises(IndexedDatasetError, match="pointer of sequence 5 is 16"):
        IndexedDataset(prefix)
    monkeypatch.setattr(idx_mod, "FULL_CHECK_LIMIT", 4)
    _patch(prefix + ".idx", ptr5, struct.pack("<q", 30))
    _patch(prefix + ".idx", doc1, struct.pack("<qq", 11, 10))  # doc_idx 0, 11, 10
    ds = IndexedDataset(prefix)
    with pytest.raises(IndexedDatasetError, match="document index decreases at entry 2 \\(11 -> 10\\)"):
        ds.verify(chunk=1)


def test_error_2021_float64_code7_hint(tmp_path):
    prefix = write_docs(str(tmp_path / "old"), [[[0.25, 0.5, 1.0]]], dtype=np.float64)
    _patch(prefix + ".idx", 17, b"\x07")  # what 2021 Megatron wrote for float64
    with pytest.raises(IndexedDatasetError, match=r"dtype_code=6"):
        IndexedDataset(prefix)
    assert IndexedDataset(prefix, dtype_code=6)[0].tolist() == [0.25, 0.5, 1.0]


def test_error_legacy_validation(tmp_path):
    prefix = write_docs(str(tmp_path / "lg"), EXAMPLE_DOCS, builder_cls=LegacyIndexedDatasetBuilder)
    os.truncate(prefix + ".bin", 31)
    with pytest.raises(IndexedDatasetError, match=r"lg\.bin: file is 31 bytes but the index expects 32"):
        LazyIndexedDataset(prefix)
    os.truncate(prefix + ".bin", 32)
    _patch(prefix + ".idx", 24, struct.pack("<Q", 4))  # element size 4 for uint16
    with pytest.raises(IndexedDatasetError, match=r"element size 4 does not match dtype code 8"):
        IndexedCachedDataset(prefix)
    _patch(prefix + ".idx", 24, struct.pack("<Q", 2))
    _patch(prefix + ".idx", 56 + 40 + 8, struct.pack("<q", 3))  # data offset of item 1
    with pytest.raises(IndexedDatasetError, match="data offsets disagree with the sequence sizes"):
        LazyIndexedDataset(prefix)
    os.truncate(prefix + ".idx", 60)
    with pytest.raises(IndexedDatasetError, match=r"lg\.idx: truncated: file is 60 bytes"):
        LazyIndexedDataset(prefix)


# ---- atomicity --------------------------------------------------------------------

def test_exception_mid_build_leaves_nothing(tmp_path):
    bin_path = str(tmp_path / "out.bin")
    with pytest.raises(RuntimeError, match="tokenizer crashed"):
        with IndexedDatasetBuilder(bin_path, dtype=np.uint16) as builder:
            builder.add_document(np.arange(1000), [1000])
            assert len(os.listdir(tmp_path)) == 1 and not os.path.exists(bin_path)
            raise RuntimeError("tokenizer crashed")
    assert os.listdir(tmp_path) == []


def test_abandoned_builder_is_cleaned_up_on_collection(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "gc.bin"))
    builder.add_item([1, 2])
    assert len(os.listdir(tmp_path)) == 1
    del builder
    assert os.listdir(tmp_path) == []


def test_crash_before_finalize_leaves_only_temporary_names(tmp_path):
    # A killed process runs no cleanup: only the temporary name may exist, never the final one.
    code = (
        "import os, numpy as np\n"
        "from megatron.core.datasets.indexed_dataset import IndexedDatasetBuilder\n"
        f"b = IndexedDatasetBuilder({str(tmp_path / 'k.bin')!r})\n"
        "b.add_document(np.arange(100000), [100000])\n"
        "os._exit(3)\n"
    )
    assert subprocess.run([sys.executable, "-c", code]).returncode == 3
    names = os.listdir(tmp_path)
    assert len(names) == 1 and names[0].startswith("k.bin.") and names[0].endswith(".tmp")


def test_failing_finalize_removes_temporaries(tmp_path, monkeypatch):
    builder = IndexedDatasetBuilder(str(tmp_path / "f.bin"))
    builder.add_document([1, 2, 3], [3])

    def broken_replace(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(idx_mod.os, "replace", broken_replace)
    with pytest.raises(OSError, match="disk gone"):
        builder.finalize(str(tmp_path / "f.idx"))
    assert os.listdir(tmp_path) == []


def test_finalize_replaces_existing_files_and_builder_closes(example):
    builder = IndexedDatasetBuilder(example + ".bin", dtype=np.int32)
    builder.add_document([5, 6], [2])
    old = IndexedDataset(example)  # a reader of the old files keeps its mapping
    builder.finalize(example + ".idx")
    assert IndexedDataset(example)[0].tolist() == [5, 6] and old[0].tolist() == [1, 2]
    assert sorted(os.listdir(os.path.dirname(example))) == ["corpus_text_document.bin", "corpus_text_document.idx"]
    with pytest.raises(RuntimeError, match="already finalized"):
        builder.finalize(example + ".idx")


def test_abort_after_finalize_keeps_the_files(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "ok.bin"))
    builder.add_document([1, 2], [2])
    builder.finalize()
    builder.abort()  # what an error handler covering several builders does
    assert IndexedDataset(str(tmp_path / "ok"))[0].tolist() == [1, 2]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_forked_child_cleanup_leaves_parent_builder_alone(tmp_path):
    builder = IndexedDatasetBuilder(str(tmp_path / "fork.bin"))
    builder.add_item([1, 2, 3])  # still in the write buffer when the child is forked
    pid = os.fork()
    if pid == 0:  # the child runs the cleanup that garbage collection or atexit would run
        builder._cleanup()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    builder.end_document()
    builder.finalize()
    assert IndexedDataset(str(tmp_path / "fork"))[0].tolist() == [1, 2, 3]
    assert os.path.getsize(tmp_path / "fork.bin") == 12


def test_module_does_not_import_torch():
    code = ("import sys, megatron.core.datasets.indexed_dataset; "
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, check=True)
    assert out.stdout.decode().strip() == "False"


# ---- property test ------------------------------------------------------------------

_documents = st.lists(st.lists(st.lists(st.integers(0, 120), max_size=6), max_size=4), max_size=6)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(docs=_documents, dtype=st.sampled_from(ALL_DTYPES), bulk=st.booleans(),
       mmap=st.booleans(), legacy=st.booleans())
def test_property_random_documents_round_trip(tmp_path_factory, docs, dtype, bulk, mmap, legacy):
    if legacy and dtype == np.float32:
        legacy = False
    prefix = str(tmp_path_factory.mktemp("prop") / "p")
    cls = LegacyIndexedDatasetBuilder if legacy else IndexedDatasetBuilder
    builder = cls(prefix + ".bin", dtype=dtype)
    for doc in docs:
        if bulk:
            flat = np.array([t for seq in doc for t in seq], dtype=dtype)
            builder.add_document(flat, [len(seq) for seq in doc])
        else:
            for seq in doc:
                builder.add_item(np.array(seq, dtype=dtype))
            builder.end_document()
    builder.finalize(prefix + ".idx")
    ds = make_dataset(prefix, "infer") if legacy else IndexedDataset(prefix, mmap=mmap)
    flat_seqs = [seq for doc in docs for seq in doc]
    assert ds.sizes.tolist() == [len(s) for s in flat_seqs]
    assert ds.doc_idx.tolist() == np.cumsum([0] + [len(d) for d in docs]).tolist()
    assert [x.tolist() for x in ds[0:len(ds)]] == [[float(t) if np.dtype(dtype).kind == "f" else t for t in s]
                                                  for s in flat_seqs]
    for i, seq in enumerate(flat_seqs):
        assert ds[i].tolist() == seq and ds.get(i, len(seq) // 2).tolist() == seq[len(seq) // 2:]
