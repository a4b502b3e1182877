"""BlendedDataset and the train/valid/test builders (splits, blends, per-split paths)."""
import os

import numpy as np
import pytest

from megatron.core.datasets.blended_dataset import BlendedDataset
from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.datasets.gpt_dataset import GPTDataset
from megatron.core.datasets.indexed_dataset import IndexedDataset
from test_helpers_fixtures import FakeWordPieceTokenizer, make_document_corpus, make_sentence_corpus


class _Tagged:
    def __init__(self, tag, size):
        self.tag, self.size = tag, size

    def __len__(self):
        return self.size

    def __getitem__(self, i):
        if not 0 <= i < self.size:
            raise IndexError(i)
        return (self.tag, i)


def test_blend_shares_and_cache(tmp_path):
    datasets = [_Tagged("a", 400), _Tagged("b", 700)]
    blend = BlendedDataset(datasets, [3, 7], 1000, cache_dir=str(tmp_path), descriptions=["a", "b"])
    tags = [blend[i][0] for i in range(len(blend))]
    assert abs(tags.count("a") - 300) <= 1 and abs(tags.count("b") - 700) <= 1
    assert [blend[i] for i in range(4)] == [("b", 0), ("a", 0), ("b", 1), ("b", 2)]
    assert len([n for n in os.listdir(tmp_path) if n.startswith("blended_")]) == 2
    again = BlendedDataset(datasets, [0.3, 0.7], 1000, cache_dir=str(tmp_path), descriptions=["a", "b"])
    np.testing.assert_array_equal(again.dataset_index, blend.dataset_index)


def test_blend_refuses_to_overdraw_a_dataset():
    with pytest.raises(ValueError, match="holds 100"):
        BlendedDataset([_Tagged("a", 100), _Tagged("b", 1000)], [0.5, 0.5], 1000)


@pytest.fixture(scope="module")
def gpt_prefixes(tmp_path_factory):
    root = tmp_path_factory.mktemp("blend")
    make_document_corpus(str(root / "a"), num_docs=60, seed=1)
    make_document_corpus(str(root / "b"), num_docs=30, seed=2)
    return str(root / "a"), str(root / "b")


def test_single_prefix_split_and_empty_split_error(gpt_prefixes, capsys):
    a, _ = gpt_prefixes
    config = DatasetConfig("gpt", seq_length=16, seed=3, split="90,10,0")
    train, valid, test = build_train_valid_test_datasets(config, [100, 20, 0], data_path=[a])
    assert isinstance(train, GPTDataset) and test is None
    assert set(np.unique(train.doc_idx)) <= set(range(54)) and set(np.unique(valid.doc_idx)) <= set(range(54, 60))
    assert "WARNING" not in capsys.readouterr().out
    # An empty held-out split is skipped with one warning, as Megatron-LM does ...
    train, valid, test = build_train_valid_test_datasets(config, [100, 20, 5], data_path=[a])
    assert isinstance(train, GPTDataset) and isinstance(valid, GPTDataset) and test is None
    warnings = [line for line in capsys.readouterr().out.splitlines() if "WARNING" in line]
    assert warnings == [f"WARNING: {a}: the test split of --split 90,10,0 is empty (0 of 60 documents): "
                        "test evaluation is skipped"]
    # ... "969, 30, 1" (the default, spaces and all) leaves no test document in 60, nor in a few hundred.
    default = DatasetConfig("gpt", seq_length=16, seed=3, split="969, 30, 1")
    train, valid, test = build_train_valid_test_datasets(default, [100, 20, 5], data_path=[a])
    assert isinstance(valid, GPTDataset) and test is None
    assert "the test split of --split 969, 30, 1 is empty (0 of 60 documents)" in capsys.readouterr().out
    # ... but an empty training split is an error.
    with pytest.raises(ValueError, match="train split of --split 0,10,90 is empty"):
        build_train_valid_test_datasets(DatasetConfig("gpt", seq_length=16, seed=3, split="0,10,90"),
                                        [100, 20, 5], data_path=[a])


def test_blend_leaves_out_a_dataset_whose_held_out_split_is_empty(gpt_prefixes, capsys):
    a, b = gpt_prefixes
    # 99,1,0: one validation document of a's 60, none of b's 30 (round(0.3) = 0).
    config = DatasetConfig("gpt", seq_length=16, seed=3, split="99,1,0")
    train, valid, test = build_train_valid_test_datasets(config, [200, 20, 4], data_path=["0.5", a, "0.5", b])
    assert len(train) == 200 and np.bincount(train.dataset_index).tolist() == [100, 100]
    assert len(valid) == 20 and set(valid.dataset_index.tolist()) == {0} and len(valid.datasets) == 1
    assert test is None
    out = capsys.readouterr().out
    assert f"WARNING: {b}: the valid split of --split 99,1,0 is empty (0 of 30 documents): the valid blend " \
           "leaves this dataset out" in out
    assert "no dataset of the blend has a test split (--split 99,1,0): test evaluation is skipped" in out


def test_weighted_blend_over_prefixes(gpt_prefixes):
    a, b = gpt_prefixes
    config = DatasetConfig("gpt", seq_length=16, seed=3, split="80,20,0")
    train, valid, _ = build_train_valid_test_datasets(config, [500, 50, 0], data_path=["0.25", a, "0.75", b])
    assert isinstance(train, BlendedDataset) and len(train) == 500 and len(valid) == 50
    counts = np.bincount(train.dataset_index, minlength=2)
    assert abs(counts[0] - 125) <= 1
    assert all(len(x["text"]) == 17 for x in (train[i] for i in range(0, 500, 7)))
    # Each part was asked for its share plus 0.5%, which shows in its cache name.
    assert os.path.isfile(f"{b}_train_indexmap_377ns_16sl_3s_doc_idx.npy")


def test_bare_prefix_list_weights_by_tokens_and_per_split_paths(gpt_prefixes):
    a, b = gpt_prefixes
    config = DatasetConfig("gpt", seq_length=16, seed=4)
    train, _, _ = build_train_valid_test_datasets(config, [300, 0, 0], data_path=[a, b])
    tokens = np.array([IndexedDataset(p).sizes.sum() for p in (a, b)], dtype=np.float64)
    np.testing.assert_allclose(train.weights, tokens / tokens.sum())
    train, valid, test = build_train_valid_test_datasets(
        config, [40, 10, 0], train_data_path=[a], valid_data_path=[b])
    assert len(train) >= 40 and len(valid) >= 10 and test is None
    assert os.path.isfile(f"{b}_valid_indexmap_10ns_16sl_4s_doc_idx.npy")
    with pytest.raises(ValueError, match="--test-data-path is missing"):
        build_train_valid_test_datasets(config, [40, 10, 5], train_data_path=[a], valid_data_path=[b])


def test_bert_builder_splits_documents(tmp_path):
    tokenizer = FakeWordPieceTokenizer()
    prefix = str(tmp_path / "sent")
    indexed, _ = make_sentence_corpus(prefix, tokenizer, num_docs=50)
    config = DatasetConfig("bert", seq_length=32, seed=5, split="80,20,0")
    train, valid, _ = build_train_valid_test_datasets(config, [50, 10, 0], tokenizer, data_path=[prefix])
    boundary = int(indexed.doc_idx[40])
    assert int(train.samples_mapping[:, 1].max()) <= boundary
    assert int(valid.samples_mapping[:, 0].min()) >= boundary
    with pytest.raises(ValueError, match="--seed must be > 0"):
        DatasetConfig("bert", seq_length=32, seed=0)
