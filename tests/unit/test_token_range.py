"""Token ids beyond the model's vocabulary are refused when the datasets are built, naming the file,
the id and the vocabulary size; the scan of the .bin is cached and redone when the file changes."""
import json
import os

import numpy as np
import pytest

from megatron.core.datasets.builders import DatasetConfig, build_train_valid_test_datasets
from megatron.core.datasets.token_range import check_token_ids, max_token_id
from test_helpers_fixtures import make_document_corpus


def test_max_token_id_is_the_largest_id_and_is_cached(tmp_path):
    indexed, docs = make_document_corpus(str(tmp_path / "data" / "corpus"), vocab=5000)
    prefix = str(tmp_path / "data" / "corpus")
    want = max(int(d.max()) for d in docs)
    assert max_token_id(prefix, indexed.dtype) == want
    cache = prefix + "_max_token_id.json"
    assert json.load(open(cache))["max_token_id"] == want
    # A rewritten .bin (another size) is scanned again rather than trusted from the cache.
    make_document_corpus(prefix, num_docs=5, vocab=70000)
    assert max_token_id(prefix, indexed.dtype) >= 5000


def test_cache_dir_holds_the_cache(tmp_path):
    indexed, _ = make_document_corpus(str(tmp_path / "data" / "corpus"))
    max_token_id(str(tmp_path / "data" / "corpus"), indexed.dtype, cache_dir=str(tmp_path / "cache"))
    assert os.listdir(tmp_path / "cache") == ["corpus_max_token_id.json"]


def test_out_of_range_ids_are_one_line_naming_file_id_and_vocabulary(tmp_path):
    prefix = str(tmp_path / "corpus")
    indexed, docs = make_document_corpus(prefix, vocab=30522)
    largest = max(int(d.max()) for d in docs)
    with pytest.raises(ValueError) as err:
        check_token_ids(prefix, indexed.dtype, 8192)
    message = str(err.value)
    assert "\n" not in message
    assert f"{prefix}.bin" in message and f"token id {largest}" in message and "8192" in message
    check_token_ids(prefix, indexed.dtype, largest + 1)  # exactly fits: accepted


def test_dataset_build_checks_every_prefix_against_the_padded_vocabulary(tmp_path):
    small, _ = make_document_corpus(str(tmp_path / "small"), vocab=100, seed=1)
    make_document_corpus(str(tmp_path / "big"), vocab=30000, seed=2)
    paths = [str(tmp_path / "small"), str(tmp_path / "big")]
    config = DatasetConfig(dataset_type="gpt", seq_length=8, split="1,0,0", vocab_size=128)
    with pytest.raises(ValueError, match=r"big\.bin: token id \d+ is outside the model's vocabulary of 128"):
        build_train_valid_test_datasets(config, [10, 0, 0], data_path=["0.5", paths[0], "0.5", paths[1]])
    # Without the big dataset the build goes through.
    assert build_train_valid_test_datasets(config, [10, 0, 0], data_path=[paths[0]])[0] is not None
