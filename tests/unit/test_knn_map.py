"""KNNRETM neighbour map: bytes as specified, reader, shard merge with contiguity and K checks."""
import struct

import numpy as np
import pytest

from megatron.core.datasets.knn_map import KNNMap, KNNMapError, KNNMapWriter, merge_knn_files


def write_map(path, rows, start, blocks=1):
    with KNNMapWriter(str(path), rows.shape[1], start) as writer:
        for part in np.array_split(rows, blocks):
            writer.write(part)
    return str(path)


def test_bytes_and_reader(tmp_path):
    rows = np.random.default_rng(0).integers(-1, 1000, size=(37, 5))
    path = write_map(tmp_path / "knn.save", rows, start=10, blocks=4)
    expected = b"KNNRETM\x00\x00" + struct.pack("<QQQQ", 1, 5, 37, 10) + rows.astype("<i8").tobytes()
    assert open(path, "rb").read() == expected
    knn = KNNMap(path)
    assert (knn.K, len(knn), knn.chunk_start_id) == (5, 37, 10)
    np.testing.assert_array_equal(knn.get_KNN_chunk_ids(12), rows[2])
    np.testing.assert_array_equal(knn.get_KNN_chunk_ids(np.array([10, 46])), rows[[0, 36]])
    with pytest.raises(IndexError):
        knn.get_KNN_chunk_ids(47)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary file left


def test_merge_shards(tmp_path):
    rows = np.arange(60 * 3).reshape(60, 3)
    for start, stop in ((40, 60), (0, 25), (25, 40)):  # written out of order
        write_map(tmp_path / f"knn_shard{start}.save", rows[start:stop], start)
    merged = merge_knn_files(str(tmp_path / "knn_shard"), str(tmp_path / "knn_final.save"))
    assert merged.chunk_start_id == 0 and len(merged) == 60
    np.testing.assert_array_equal(np.asarray(merged.knn_map), rows)


def test_merge_rejects_gap_overlap_and_k(tmp_path):
    rows = np.zeros((10, 2), dtype=np.int64)
    a = write_map(tmp_path / "a", rows, 0)
    gap = write_map(tmp_path / "gap", rows, 11)
    over = write_map(tmp_path / "over", rows, 5)
    k3 = write_map(tmp_path / "k3", np.zeros((4, 3), dtype=np.int64), 10)
    with pytest.raises(KNNMapError, match="leaves a gap"):
        merge_knn_files([a, gap], str(tmp_path / "out"))
    with pytest.raises(KNNMapError, match="overlaps"):
        merge_knn_files([a, over], str(tmp_path / "out"))
    with pytest.raises(KNNMapError, match="K=3 differs"):
        merge_knn_files([a, k3], str(tmp_path / "out"))
    assert not (tmp_path / "out").exists()


def test_reader_rejects_bad_files(tmp_path):
    (tmp_path / "x").write_bytes(b"MMIDRET\x00\x00" + bytes(40))
    with pytest.raises(KNNMapError, match="not a KNN map"):
        KNNMap(str(tmp_path / "x"))
    path = write_map(tmp_path / "t", np.zeros((3, 2), dtype=np.int64), 0)
    data = open(path, "rb").read()
    (tmp_path / "t").write_bytes(data[:-8])
    with pytest.raises(KNNMapError, match="3 rows of K=2"):
        KNNMap(path)


def test_remove_same_document_matches_a_plain_loop():
    from megatron.retrieval.retro_index import remove_same_document

    rng = np.random.default_rng(1)
    neighbours = rng.integers(-1, 50, size=(200, 9))
    first = rng.integers(0, 45, size=200)
    end = first + rng.integers(1, 6, size=200)
    got = remove_same_document(neighbours, first, end, k=4)
    for row, b, e, out in zip(neighbours, first, end, got):
        kept = [int(n) for n in row if n >= 0 and not b <= n < e][:4]
        assert out.tolist() == kept + [-1] * (4 - len(kept))


def test_shards_and_index_plan_checks():
    from megatron.retrieval.retro_index import IndexPlanError, check_training_size, factory_string, shard_range

    assert [shard_range(10, i, 3) for i in range(3)] == [(0, 3), (3, 6), (6, 10)]
    assert factory_string(10000) == "IVF400,PQ8" and factory_string(10000, no_pq=True) == "IVF400,Flat"
    check_training_size("IVF400,PQ8", 12001, 384)
    with pytest.raises(IndexPlanError, match=r"too small for 400 IVF lists.*IVF399,Flat"):
        check_training_size("IVF400,PQ8", 12000, 384)
    with pytest.raises(IndexPlanError, match="multiple of 7"):
        check_training_size("IVF4,PQ7", 1000, 384)
    check_training_size("Flat", 1, 384)


def test_sentence_transformer_names_resolve_offline(tmp_path):
    from megatron.retrieval.retro_embed import ModelNotFoundError, resolve_sentence_transformer

    local = resolve_sentence_transformer("all-MiniLM-L6-v2")
    assert resolve_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2") == local
    assert resolve_sentence_transformer(local) == local
    with pytest.raises(ModelNotFoundError, match="no local copy"):
        resolve_sentence_transformer("surely-not-a-model-xyz")
    with pytest.raises(ModelNotFoundError, match="no sentence-transformers model"):
        resolve_sentence_transformer(str(tmp_path))
