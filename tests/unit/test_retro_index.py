"""The staged faiss index without the encoder: shards merged (IVF on disk, Flat in memory) search like
one index holding every vector, ids are the chunk ids, and a merge run again replaces the old lists."""
import os

import numpy as np
import pytest

from megatron.retrieval import retro_index


@pytest.mark.parametrize("factory", ["IVF8,Flat", "IVF8,PQ4x4", "Flat"])
def test_shards_merge_like_one_index(tmp_path, factory):
    rng = np.random.default_rng(0)
    data = rng.normal(size=(600, 16)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    retro_index.check_training_size(factory, 600, 16)
    empty = retro_index.build_empty_index(16, factory)
    retro_index.train_index(empty, data)
    trained = str(tmp_path / "trained.index")
    retro_index.write_index(empty, trained)
    whole = retro_index.read_index(trained)
    retro_index.add_to_index(whole, [(np.arange(600), data)])
    for shard in range(3):
        start, stop = retro_index.shard_range(600, shard, 3)
        index = retro_index.read_index(trained)
        blocks = [(np.arange(s, min(s + 64, stop)), data[s:min(s + 64, stop)]) for s in range(start, stop, 64)]
        assert retro_index.add_to_index(index, blocks) == stop - start
        retro_index.write_index(index, str(tmp_path / f"shard{shard}.index"))
    final = str(tmp_path / "final.index")
    for _ in range(2):  # a second merge (a re-run) replaces the first, leaving one lists file
        assert retro_index.merge_index_shards(trained, str(tmp_path / "shard"), final, log=lambda m: None) == 600
    ivfdata = [p for p in os.listdir(tmp_path) if p.endswith(".ivfdata")]
    assert len(ivfdata) == (0 if factory == "Flat" else 1)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
    merged = retro_index.read_index(final)
    queries = data[:50] + 0.01
    got = retro_index.query_neighbours(merged, queries, 5, nprobe=8)
    want = retro_index.query_neighbours(whole, queries, 5, nprobe=8)
    np.testing.assert_array_equal(got, want)
    if "PQ" not in factory:  # lossless codes: the exact neighbour of a near-copy is itself
        np.testing.assert_array_equal(got[:, 0], np.arange(50))


def test_merge_refuses_a_mismatched_shard(tmp_path):
    data = np.random.default_rng(1).normal(size=(100, 8)).astype(np.float32)
    a = retro_index.build_empty_index(8, "Flat")
    retro_index.write_index(a, str(tmp_path / "trained.index"))
    b = retro_index.build_empty_index(4, "Flat")
    retro_index.add_to_index(b, [(np.arange(100), data[:, :4])])
    retro_index.write_index(b, str(tmp_path / "shard0.index"))
    with pytest.raises(retro_index.IndexPlanError, match="dimension 4 does not match"):
        retro_index.merge_index_shards(str(tmp_path / "trained.index"), str(tmp_path / "shard"),
                                       str(tmp_path / "final.index"), log=lambda m: None)
