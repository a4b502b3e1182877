"""RETRODataset: GPT sample order over padded retmmap documents, neighbours read from the KNN map,
-1 neighbours as padding, and the input checks (seq_length, K, pad id, chunk size, coverage)."""
import numpy as np
import pytest

from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.knn_map import KNNMap, KNNMapWriter
from megatron.core.datasets.retro_dataset import RetroDatasetError, build_retro_datasets
from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset, RetrievalIndexedDatasetBuilder

CHUNK, PAD, K = 4, 500, 3


def write(prefix, docs, retrieval_db, pad=PAD, chunk=CHUNK):
    builder = RetrievalIndexedDatasetBuilder(prefix + ".bin", np.uint16, pad_id=pad, chunk_size=chunk, stride=chunk,
                                             retrieval_db=retrieval_db)
    for doc in docs:
        builder.add_item(doc)
    builder.finalize(prefix + ".idx")
    return RetrievalIndexedDataset(prefix)


@pytest.fixture
def files(tmp_path):
    rng = np.random.default_rng(0)
    docs = [rng.integers(0, 400, size=n).astype(np.uint16) for n in rng.integers(3, 30, size=20)]
    train = write(str(tmp_path / "train"), docs, False)
    db_docs = [rng.integers(0, 400, size=n).astype(np.uint16) for n in rng.integers(5, 20, size=10)]
    db = write(str(tmp_path / "db"), db_docs, True)
    knn = rng.integers(0, db.chunks, size=(train.chunks, K))
    knn[::5, 1] = -1  # a neighbour that was not found
    with KNNMapWriter(str(tmp_path / "knn.bin"), K) as writer:
        writer.write(knn)
    return tmp_path, train, db, knn


def build(tmp_path, seq=8, k=2, pad=PAD, chunk=CHUNK, nums=(20, 5, 0)):
    return build_retro_datasets(str(tmp_path / "train"), str(tmp_path / "db"), str(tmp_path / "knn.bin"), "80,20,0",
                                list(nums), seq, 1234, chunk, k, pad, cache_dir=str(tmp_path / "cache"))


def test_samples_follow_gpt_order_and_neighbours_come_from_the_map(files):
    tmp_path, train, db, knn = files
    datasets = build(tmp_path)
    assert datasets[2] is None
    for ds in datasets[:2]:
        # --split 80,20,0 of 20 documents: [0, 16) and [16, 20).
        documents = np.arange(0, 16) if ds.name == "train" else np.arange(16, 20)
        gpt = GPTDataset(ds.name, str(tmp_path / "train"), documents, train, 20 if ds.name == "train" else 5, 8, 1234,
                         cache_dir=str(tmp_path / "cache2"))
        # Independent reference: the padded documents laid end to end in GPT order.
        for i in range(len(ds)):
            sample = ds[i]
            assert np.array_equal(sample["text"], gpt[i]["text"])
            assert sample["retrieved_ids"].shape == (2, 2, 2 * CHUNK)
            # Find the sample's chunks by position in the concatenated padded stream.
            stream = np.concatenate([train.get_padded(int(d)) for d in gpt.doc_idx])
            chunk_of = np.concatenate([np.arange(train.chunk_id_start[int(d)],
                                                 train.chunk_id_start[int(d)] + train.sizes[int(d)] // CHUNK)
                                       for d in gpt.doc_idx])
            start = int(gpt.shuffle_idx[i]) * 8
            assert np.array_equal(stream[start:start + 9], sample["text"])
            for c in range(2):
                chunk_id = chunk_of[start // CHUNK + c]
                for j in range(2):
                    got = sample["retrieved_ids"][c, j]
                    if knn[chunk_id, j] < 0:
                        assert (got == PAD).all()
                    else:
                        assert np.array_equal(got, db.get_chunk(int(knn[chunk_id, j])))


def test_checks_name_the_problem(files):
    tmp_path, *_ = files
    with pytest.raises(RetroDatasetError, match="not a multiple of --retro-chunk-size"):
        build(tmp_path, seq=10)
    with pytest.raises(RetroDatasetError, match=r"--retro-num-neighbors 4 must lie in \[1, K=3\]"):
        build(tmp_path, k=4)
    with pytest.raises(RetroDatasetError, match="padded with id 500 but the tokenizer's pad id is 7"):
        build(tmp_path, pad=7)
    with pytest.raises(RetroDatasetError, match="differs from --retro-chunk-size 8"):
        build(tmp_path, chunk=8, seq=16)
    with KNNMapWriter(str(tmp_path / "knn.bin"), K) as writer:  # a map for fewer chunks than the data has
        writer.write(np.zeros((3, K), dtype=np.int64))
    with pytest.raises(RetroDatasetError, match="covers chunks"):
        build(tmp_path)
    assert len(KNNMap(str(tmp_path / "knn.bin"))) == 3


def test_pickles_by_path(files):
    import pickle

    tmp_path, *_ = files
    ds = build(tmp_path)[0]
    blob = pickle.dumps(ds)
    assert len(blob) < 20000  # no copy of the map's rows or the data
    copy = pickle.loads(blob)
    for i in range(len(ds)):
        assert np.array_equal(copy[i]["retrieved_ids"], ds[i]["retrieved_ids"])
        assert np.array_equal(copy[i]["text"], ds[i]["text"])
