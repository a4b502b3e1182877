"""FaissMIPSIndex: the exact index equals brute-force inner-product top-k; IVF finds itself."""
import sys

import numpy as np
import pytest

from megatron.retrieval.block_store import BlockData

pytest.importorskip("faiss")
from megatron.retrieval.faiss_index import FaissMIPSIndex  # noqa: E402


def _store(n=400, dim=16, seed=0, unit=False):
    rng = np.random.default_rng(seed)
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    if unit:
        emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    ids = rng.permutation(n).astype(np.int64) * 5 + 11  # sparse, unordered ids
    store = BlockData()
    store.add_block_data(ids, emb)
    return store


def _brute_force(store, queries, k):
    emb = store.embeddings().astype(np.float32)
    scores = queries.astype(np.float32) @ emb.T
    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, top, 1), store.ids()[top]


def test_flat_equals_brute_force_top_k():
    store = _store()
    queries = np.random.default_rng(1).standard_normal((25, 16)).astype(np.float32)
    index = FaissMIPSIndex(16, block_data=store)
    assert len(index) == 400
    scores, ids = index.search_mips_index(queries, top_k=10)
    ref_scores, ref_ids = _brute_force(store, queries, 10)
    assert scores.dtype == np.float32 and ids.dtype == np.int64 and ids.shape == (25, 10)
    np.testing.assert_array_equal(ids, ref_ids)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_torch_queries_and_reconstruct_return_stored_vectors():
    torch = pytest.importorskip("torch")
    store = _store(n=100)
    index = FaissMIPSIndex(16, block_data=store)
    queries = torch.randn(4, 16, generator=torch.Generator().manual_seed(0))
    scores, ids, vectors = index.search_mips_index(queries, top_k=5, reconstruct=True)
    assert vectors.shape == (4, 5, 16) and vectors.dtype == np.float32
    by_id = dict(zip(store.ids().tolist(), store.embeddings().astype(np.float32)))
    for q in range(4):
        for r in range(5):
            np.testing.assert_array_equal(vectors[q, r], by_id[int(ids[q, r])])
    ref_scores, _ = _brute_force(store, queries.numpy(), 5)
    np.testing.assert_allclose(scores, ref_scores, rtol=1e-5, atol=1e-5)


def test_ivf_finds_each_stored_vector_first_with_full_probe():
    store = _store(n=512, unit=True, seed=3)
    index = FaissMIPSIndex(16, block_data=store, index_factory="IVF8,Flat", nprobe=8)
    queries = store.embeddings()[::16].astype(np.float32)
    _, ids = index.search_mips_index(queries, top_k=3)
    np.testing.assert_array_equal(ids[:, 0], store.ids()[::16])


def test_hnsw_option_builds_and_searches():
    store = _store(n=300, unit=True, seed=4)
    index = FaissMIPSIndex(16, block_data=store, index_factory="HNSW16", nprobe=32)
    queries = store.embeddings()[:10].astype(np.float32)
    _, ids, vectors = index.search_mips_index(queries, top_k=2, reconstruct=True)
    np.testing.assert_array_equal(ids[:, 0], store.ids()[:10])
    np.testing.assert_array_equal(vectors[:, 0], queries)


def test_reset_and_update_index(tmp_path):
    index = FaissMIPSIndex(16, block_data=_store(n=50))
    index.reset_index()
    assert len(index) == 0
    other = _store(n=30, seed=9)
    path = str(tmp_path / "other")
    other.save(path)
    index.update_index(path)
    assert len(index) == 30
    _, ids = index.search_mips_index(other.embeddings()[:1].astype(np.float32), top_k=30)
    assert sorted(ids[0].tolist()) == other.ids().tolist()


def test_errors_name_the_problem():
    index = FaissMIPSIndex(16, block_data=_store(n=20))
    with pytest.raises(ValueError, match="top_k 21 exceeds the 20 indexed blocks"):
        index.search_mips_index(np.zeros((1, 16)), top_k=21)
    with pytest.raises(ValueError, match="query dim 8 != index embed size 16"):
        index.search_mips_index(np.zeros((1, 8)), top_k=1)
    with pytest.raises(ValueError, match="block id 11 is already in the index"):
        index.add_embed_data(np.array([11]), np.zeros((1, 16), np.float16))
    with pytest.raises(ValueError, match="needs at least 64 training vectors, got 20"):
        FaissMIPSIndex(16, block_data=_store(n=20), index_factory="IVF64,Flat")
    with pytest.raises(ValueError, match="--faiss-index-factory 'Bogus12'"):
        FaissMIPSIndex(16, index_factory="Bogus12")
    with pytest.raises(ValueError, match="index is empty"):
        FaissMIPSIndex(16).search_mips_index(np.zeros((1, 16)), top_k=1)


def test_gpu_request_without_gpu_names_the_flag():
    import faiss

    if faiss.get_num_gpus() > 0:
        pytest.skip("faiss sees a GPU here")
    with pytest.raises(RuntimeError, match="--faiss-use-gpu"):
        FaissMIPSIndex(16, use_gpu=True)


def test_missing_extras_get_one_line_hint(monkeypatch):
    from megatron.retrieval.faiss_index import require_faiss, require_sentence_transformers

    monkeypatch.setitem(sys.modules, "faiss", None)  # makes `import faiss` fail
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)
    with pytest.raises(ImportError) as info:
        require_faiss()
    assert str(info.value) == ("faiss is not installed: pip install 'megatron-lite[retrieval]' "
                               "(or faiss-cpu / faiss-gpu)")
    with pytest.raises(ImportError, match=r"sentence-transformers is not installed: pip install "
                                          r"'megatron-lite\[retrieval\]'"):
        require_sentence_transformers()
