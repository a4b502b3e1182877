"""GPTDataset: sample contents, epochs, caching and determinism."""
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from megatron.core.datasets.gpt_dataset import (
    GPTDataset,
    build_gpt_index,
    gpt_index_paths,
    num_epochs_needed,
)
from megatron.core.datasets.samplers import build_pretraining_data_loader
from test_helpers_fixtures import make_document_corpus

SEQ = 32


@pytest.fixture()
def corpus(tmp_path):
    prefix = str(tmp_path / "gpt" / "corpus")
    indexed, docs = make_document_corpus(prefix, num_docs=40)
    return prefix, indexed, docs


def _expected_stream(dataset, docs):
    """The documents laid end to end in doc_idx order: sample j is a window of it."""
    return np.concatenate([docs[d] for d in dataset.doc_idx])


def test_samples_are_windows_of_the_shuffled_document_stream(corpus):
    prefix, indexed, docs = corpus
    documents = np.arange(5, 35, dtype=np.int32)
    dataset = GPTDataset("train", prefix, documents, indexed, 300, SEQ, 1234)
    assert len(dataset) >= 300
    stream = _expected_stream(dataset, docs)
    for i in range(len(dataset)):
        j = int(dataset.shuffle_idx[i])
        text = dataset[i]["text"]
        assert text.dtype == np.int64 and text.shape == (SEQ + 1,)
        np.testing.assert_array_equal(text, stream[j * SEQ:j * SEQ + SEQ + 1])
    assert set(np.unique(dataset.doc_idx)) <= set(documents.tolist())
    assert sorted(dataset.shuffle_idx.tolist()) == list(range(len(dataset)))


def test_num_epochs_matches_the_definition():
    for tokens, seq, n in [(100, 10, 9), (100, 10, 10), (100, 10, 50), (7, 2, 0), (1000, 7, 3333)]:
        epochs = num_epochs_needed(tokens, seq, n)
        assert (epochs * tokens - 1) // seq >= n
        assert epochs == 1 or ((epochs - 1) * tokens - 1) // seq < n


def test_separate_last_epoch_shuffles_the_tail_alone(corpus):
    _, indexed, docs = corpus
    documents = np.arange(len(docs), dtype=np.int32)
    tokens = int(indexed.sizes.sum())
    per_epoch = (tokens - 1) // SEQ
    index = build_gpt_index(documents, indexed.sizes, 2 * per_epoch + 3, SEQ, 7)  # 3rd epoch is tiny
    doc_idx = index["doc_idx"]
    assert len(doc_idx) == 3 * len(documents)
    assert sorted(doc_idx[-len(documents):].tolist()) == documents.tolist()
    before_last = (2 * tokens - 1) // SEQ
    shuffle = index["shuffle_idx"]
    assert sorted(shuffle[:before_last].tolist()) == list(range(before_last))
    assert shuffle[before_last:].min() >= before_last


def test_index_matches_megatron_rng_stream(corpus):
    """doc_idx then shuffle_idx come from one RandomState(seed), in that order."""
    _, indexed, docs = corpus
    documents = np.arange(len(docs), dtype=np.int32)
    index = build_gpt_index(documents, indexed.sizes, 20, SEQ, 99)
    rng = np.random.RandomState(99)
    doc_idx = documents.copy()
    rng.shuffle(doc_idx)
    np.testing.assert_array_equal(index["doc_idx"], doc_idx)
    shuffle = np.arange(len(index["sample_idx"]) - 1, dtype=np.uint32)
    rng.shuffle(shuffle)
    np.testing.assert_array_equal(index["shuffle_idx"], shuffle)


def test_cache_names_reuse_and_stale_cache_rebuild(corpus):
    prefix, indexed, _ = corpus
    documents = np.arange(40, dtype=np.int32)
    paths = gpt_index_paths(prefix, "train", 100, SEQ, 5)
    assert paths["doc_idx"] == f"{prefix}_train_indexmap_100ns_{SEQ}sl_5s_doc_idx.npy"
    first = GPTDataset("train", prefix, documents, indexed, 100, SEQ, 5)
    assert all(os.path.isfile(p) for p in paths.values())
    mtime = os.path.getmtime(paths["sample_idx"])
    again = GPTDataset("train", prefix, documents, indexed, 100, SEQ, 5)
    assert os.path.getmtime(paths["sample_idx"]) == mtime  # reused, not rebuilt
    np.testing.assert_array_equal(again[3]["text"], first[3]["text"])
    expected_sample_idx = np.array(first.sample_idx)
    expected_shuffle_idx = np.array(first.shuffle_idx)
    del first, again  # drop their memory maps before the files are damaged
    # A truncated file and a file of the wrong shape are both rebuilt, never used.
    with open(paths["sample_idx"], "r+b") as f:
        f.truncate(40)
    np.save(paths["shuffle_idx"], np.arange(5, dtype=np.uint32))
    rebuilt = GPTDataset("train", prefix, documents, indexed, 100, SEQ, 5)
    np.testing.assert_array_equal(rebuilt.sample_idx, expected_sample_idx)
    np.testing.assert_array_equal(rebuilt.shuffle_idx, expected_shuffle_idx)


def test_cache_dir_and_no_stray_temp_files(corpus, tmp_path):
    prefix, indexed, _ = corpus
    cache = str(tmp_path / "cache")
    GPTDataset("valid", prefix, np.arange(10, dtype=np.int32), indexed, 10, SEQ, 5, cache_dir=cache)
    names = sorted(os.listdir(cache))
    assert len(names) == 3 and all(n.endswith(".npy") and "valid_indexmap_10ns" in n for n in names)


def test_empty_split_with_samples_is_an_error(corpus):
    prefix, indexed, _ = corpus
    with pytest.raises(ValueError, match="test split has no documents"):
        GPTDataset("test", prefix, np.arange(0, dtype=np.int32), indexed, 1, SEQ, 5)


def test_same_samples_across_processes_and_workers(corpus):
    prefix, indexed, _ = corpus
    documents = np.arange(40, dtype=np.int32)
    dataset = GPTDataset("train", prefix, documents, indexed, 1000, SEQ, 11)
    first = np.stack([dataset[i]["text"] for i in range(1000)])
    for workers in (0, 2):
        loader = build_pretraining_data_loader(dataset, 0, 50, 0, 1, num_workers=workers)
        got = torch.cat([b["text"] for b in itertools_take(loader, 20)]).numpy()
        np.testing.assert_array_equal(got, first)
    # A fresh process (own cache build under another directory) gives the same samples.
    code = (
        "import sys, numpy as np; sys.path.insert(0, sys.argv[3]);"
        "from megatron.core.datasets.indexed_dataset import IndexedDataset;"
        "from megatron.core.datasets.gpt_dataset import GPTDataset;"
        "d = GPTDataset('train', sys.argv[1], np.arange(40, dtype=np.int32), IndexedDataset(sys.argv[1]), 1000, 32, 11, cache_dir=sys.argv[2]);"
        "np.save(sys.argv[2] + '/out.npy', np.stack([d[i]['text'] for i in range(1000)]))"
    )
    out_dir = os.path.join(os.path.dirname(prefix), "other")
    subprocess.run([sys.executable, "-c", code, prefix, out_dir, os.getcwd()], check=True)
    np.testing.assert_array_equal(np.load(os.path.join(out_dir, "out.npy")), first)


def itertools_take(iterable, n):
    out = []
    for item in iterable:
        out.append(item)
        if len(out) == n:
            break
    return out


def test_direct_token_view_equals_reads_through_get_and_pickles(corpus):
    import pickle

    from megatron.core.datasets.indexed_dataset import IndexedDataset

    prefix, indexed, _ = corpus
    documents = np.arange(40, dtype=np.int32)
    fast = GPTDataset("train", prefix, documents, indexed, 200, SEQ, 8)
    slow = GPTDataset("train", prefix, documents, IndexedDataset(prefix, mmap=False), 200, SEQ, 8)
    assert fast._tokens is not None and slow._tokens is None
    copy = pickle.loads(pickle.dumps(fast))
    assert len(pickle.dumps(fast)) < 10_000, "pickles by path, not by mapped contents"
    for i in range(len(fast)):
        np.testing.assert_array_equal(fast[i]["text"], slow[i]["text"])
        np.testing.assert_array_equal(copy[i]["text"], fast[i]["text"])


def test_loader_resumed_at_consumed_samples_continues_the_stream(corpus):
    prefix, indexed, _ = corpus
    dataset = GPTDataset("train", prefix, np.arange(40, dtype=np.int32), indexed, 400, SEQ, 13)

    def stream(consumed, rank, steps):
        loader = build_pretraining_data_loader(dataset, consumed, 4, rank, 2)
        return [b["text"] for b in itertools_take(loader, steps)]

    full = [stream(0, rank, 12) for rank in (0, 1)]
    resumed = [stream(40, rank, 7) for rank in (0, 1)]  # 40 samples = 5 global batches of 8
    for rank in (0, 1):
        for a, b in zip(full[rank][5:], resumed[rank]):
            np.testing.assert_array_equal(a.numpy(), b.numpy())
