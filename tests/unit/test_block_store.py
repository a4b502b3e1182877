"""BlockData: both on-disk formats round-trip exactly, shards merge only when consistent."""
import json
import os
import pickle

import numpy as np
import pytest

from megatron.retrieval.block_store import BlockData, BlockStoreError, shard_dir


def _random_store(n=50, dim=8, with_meta=True, seed=0, id_offset=0):
    rng = np.random.default_rng(seed)
    ids = rng.permutation(np.arange(n, dtype=np.int64) * 7 + id_offset)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    meta = rng.integers(0, 1000, size=(n, 3)) if with_meta else None
    store = BlockData()
    store.add_block_data(ids, emb, meta)
    return store, ids, emb, meta


def _assert_same(a: BlockData, b: BlockData):
    np.testing.assert_array_equal(a.ids(), b.ids())
    # Exact fp16 bits, not a tolerance.
    np.testing.assert_array_equal(a.embeddings().view(np.uint16), b.embeddings().view(np.uint16))
    if a.meta() is None:
        assert b.meta() is None
    else:
        np.testing.assert_array_equal(a.meta(), b.meta())


def test_add_sorts_by_id_and_stores_fp16():
    store, ids, emb, meta = _random_store()
    order = np.argsort(ids)
    np.testing.assert_array_equal(store.ids(), ids[order])
    assert store.embeddings().dtype == np.float16
    np.testing.assert_array_equal(store.embeddings(), emb[order].astype(np.float16))
    np.testing.assert_array_equal(store.meta(), meta[order])
    assert len(store) == 50 and store.embedding_dim == 8


def test_many_small_adds_equal_one_add():
    rng = np.random.default_rng(1)
    ids = rng.permutation(300).astype(np.int64)
    emb = rng.standard_normal((300, 4)).astype(np.float16)
    one, many = BlockData(), BlockData()
    one.add_block_data(ids, emb)
    for start in range(0, 300, 7):
        many.add_block_data(ids[start:start + 7], emb[start:start + 7])
    _assert_same(one, many)


@pytest.mark.parametrize("name", ["store", "store.pkl"])
@pytest.mark.parametrize("with_meta", [True, False])
def test_round_trip_both_formats(tmp_path, name, with_meta):
    store, *_ = _random_store(with_meta=with_meta)
    path = str(tmp_path / name)
    store.save(path)
    loaded = BlockData.load(path)
    _assert_same(store, loaded)
    assert sorted(os.listdir(tmp_path)) == [name]  # no temporaries left behind


def test_directory_format_is_documented_manifest_and_memory_mapped(tmp_path):
    store, *_ = _random_store()
    path = str(tmp_path / "store")
    store.save(path)
    manifest = json.loads((tmp_path / "store" / "manifest.json").read_text())
    assert manifest == {"format": "megatron-lite-block-store", "version": 1, "count": 50,
                        "dim": 8, "dtype": "float16", "has_meta": True}
    mapped = BlockData.load(path, mmap=True)
    assert isinstance(mapped.embeddings(), np.memmap)
    assert not isinstance(BlockData.load(path, mmap=False).embeddings(), np.memmap)
    # Replacing an existing store (even one we have mapped) is atomic and complete.
    bigger, *_ = _random_store(n=60, seed=3)
    bigger.save(path)
    _assert_same(bigger, BlockData.load(path))
    assert sorted(os.listdir(tmp_path)) == ["store"]


def test_pickle_is_megatron_dict_state(tmp_path):
    store, *_ = _random_store(n=5)
    path = tmp_path / "blocks.pkl"
    store.save(str(path))
    with open(path, "rb") as f:
        state = pickle.load(f)
    assert set(state) == {"embed_data", "meta_data"}
    first = int(store.ids()[0])
    assert state["embed_data"][first].dtype == np.float16
    assert list(state["meta_data"][first]) == store.meta()[0].tolist()


def test_loads_megatron_style_pickle_with_numpy_keys(tmp_path):
    # Megatron keyed the dicts by numpy int64 scalars taken from the batch tensors.
    rng = np.random.default_rng(2)
    vectors = {np.int64(i): np.float16(rng.standard_normal(6)) for i in (9, 3, 5)}
    meta = {np.int64(i): [np.int64(i), i + 1, 0] for i in (9, 3, 5)}
    path = tmp_path / "megatron.pkl"
    with open(path, "wb") as f:
        pickle.dump({"embed_data": vectors, "meta_data": meta}, f, protocol=2)
    loaded = BlockData.load(str(path))
    np.testing.assert_array_equal(loaded.ids(), [3, 5, 9])
    np.testing.assert_array_equal(loaded.embeddings()[2], vectors[np.int64(9)])
    np.testing.assert_array_equal(loaded.meta()[0], [3, 4, 0])


class _Boom:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_restricted_unpickler_refuses_arbitrary_globals(tmp_path):
    path = tmp_path / "evil.pkl"
    with open(path, "wb") as f:
        pickle.dump({"embed_data": {1: _Boom()}, "meta_data": {}}, f)
    with pytest.raises(BlockStoreError, match=r"evil\.pkl.*not allowed"):
        BlockData.load(str(path))


def test_duplicate_ids_refused_unless_overwrite():
    store = BlockData()
    store.add_block_data(np.array([1, 2]), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="block id 2 is already stored"):
        store.add_block_data(np.array([5, 2]), np.ones((2, 3)))
    with pytest.raises(ValueError, match="block id 4 appears twice"):
        store.add_block_data(np.array([4, 4]), np.ones((2, 3)))
    assert len(store) == 2
    store.add_block_data(np.array([2, 7]), np.ones((2, 3)), allow_overwrite=True)
    np.testing.assert_array_equal(store.ids(), [1, 2, 7])
    np.testing.assert_array_equal(store.embeddings()[1], np.ones(3, np.float16))


def test_inconsistent_batches_refused():
    store = BlockData(embedding_dim=4)
    with pytest.raises(ValueError, match="dim 3 does not match the store's dim 4"):
        store.add_block_data(np.array([1]), np.zeros((1, 3)))
    store.add_block_data(np.array([1]), np.zeros((1, 4)), meta=np.zeros((1, 3)))
    with pytest.raises(ValueError, match="must carry meta"):
        store.add_block_data(np.array([2]), np.zeros((1, 4)))


def test_clear_keeps_ids_and_meta():
    store, ids, _, meta = _random_store(n=10)
    store.clear()
    np.testing.assert_array_equal(store.ids(), np.sort(ids))
    np.testing.assert_array_equal(store.meta(), meta[np.argsort(ids)])
    with pytest.raises(ValueError, match="clear"):
        store.embeddings()


def test_load_errors_name_the_path_and_problem(tmp_path):
    with pytest.raises(BlockStoreError, match="nowhere.*not found"):
        BlockData.load(str(tmp_path / "nowhere"))
    store, *_ = _random_store(n=4)
    path = tmp_path / "s"
    store.save(str(path))
    manifest = json.loads((path / "manifest.json").read_text())
    (path / "manifest.json").write_text(json.dumps(dict(manifest, version=2)))
    with pytest.raises(BlockStoreError, match="manifest.json: version 2 is not supported"):
        BlockData.load(str(path))
    (path / "manifest.json").write_text(json.dumps(dict(manifest, count=5)))
    with pytest.raises(BlockStoreError, match=r"ids\.npy.*length mismatch"):
        BlockData.load(str(path))
    (path / "manifest.json").write_text(json.dumps(manifest))
    np.save(path / "ids.npy", np.array([1, 2, 2, 3], np.int64))
    with pytest.raises(BlockStoreError, match="duplicate id 2"):
        BlockData.load(str(path))
    os.unlink(path / "embeddings.npy")
    with pytest.raises(BlockStoreError, match=r"embeddings\.npy: missing"):
        BlockData.load(str(path))


def _write_shards(path, world_size, n_per_rank=20, overlap=False, skip_rank=None):
    full = []
    for rank in range(world_size):
        if rank == skip_rank:
            continue
        ids = np.arange(rank, world_size * n_per_rank, world_size)  # strided, like the indexer
        if overlap and rank == 1:
            ids = ids.copy()
            ids[3] = 0  # rank 0 holds block 0 too
        emb = np.random.default_rng(rank).standard_normal((len(ids), 5))
        part = BlockData()
        part.add_block_data(ids, emb, meta=np.stack([ids, ids + 1, ids // 2], 1))
        part.save_shard(path, rank)
        full.append((ids, emb))
    return full


@pytest.mark.parametrize("name", ["merged", "merged.pkl"])
def test_shards_merge_with_coverage_check(tmp_path, name):
    path = str(tmp_path / name)
    parts = _write_shards(path, world_size=3)
    assert sorted(os.listdir(shard_dir(path))) == ["rank00000", "rank00001", "rank00002"]
    merged = BlockData.merge_shards_and_save(path, 3, expected_ids=np.arange(60))
    assert not os.path.exists(shard_dir(path))
    reference = BlockData()
    for ids, emb in parts:
        reference.add_block_data(ids, emb, meta=np.stack([ids, ids + 1, ids // 2], 1))
    _assert_same(reference, merged)
    _assert_same(reference, BlockData.load(path))


def test_merge_refuses_missing_shard(tmp_path):
    path = str(tmp_path / "m.pkl")
    _write_shards(path, world_size=3, skip_rank=1)
    with pytest.raises(BlockStoreError, match=r"rank00001: shard of rank 1 \(of 3\) is missing"):
        BlockData.merge_shards_and_save(path, 3)
    assert os.path.isdir(shard_dir(path)) and not os.path.exists(path)


def test_merge_refuses_overlapping_ids(tmp_path):
    path = str(tmp_path / "m")
    _write_shards(path, world_size=2, overlap=True)
    with pytest.raises(BlockStoreError, match="id 0 in rank 0 and rank 1"):
        BlockData.merge_shards_and_save(path, 2)
    assert os.path.isdir(shard_dir(path)) and not os.path.exists(path)


def test_merge_refuses_incomplete_or_extra_coverage(tmp_path):
    path = str(tmp_path / "m")
    _write_shards(path, world_size=2)
    expected = np.arange(1, 45)  # block 0 unexpected; 40..44 never embedded
    with pytest.raises(BlockStoreError, match=r"5 missing \(e\.g\. \[40, 41, 42, 43, 44\]\), "
                                              r"1 unexpected \(e\.g\. \[0\]\)"):
        BlockData.merge_shards_and_save(path, 2, expected_ids=expected)
    assert os.path.isdir(shard_dir(path))
