"""Index caches under torch.distributed (gloo): rank 0 builds, the other ranks wait and map."""
import numpy as np

from megatron.core.datasets import gpt_dataset
from megatron.core.datasets.indexed_dataset import IndexedDataset
from test_helpers_fixtures import make_document_corpus
from tests.distributed.spawn import run_ranks


def _build_on_every_rank(rank, world_size, prefix):
    calls = []
    real_build = gpt_dataset.build_gpt_index

    def counting_build(*args, **kwargs):
        calls.append(rank)
        return real_build(*args, **kwargs)

    gpt_dataset.build_gpt_index = counting_build
    try:
        dataset = gpt_dataset.GPTDataset("train", prefix, np.arange(30, dtype=np.int32),
                                         IndexedDataset(prefix), 200, 16, 21)
        return len(calls), np.stack([dataset[i]["text"] for i in range(50)])
    finally:
        gpt_dataset.build_gpt_index = real_build


def test_rank_0_builds_and_all_ranks_read_the_same_samples(tmp_path):
    prefix = str(tmp_path / "corpus")
    make_document_corpus(prefix, num_docs=30)
    results = run_ranks(_build_on_every_rank, 3, prefix, timeout=120)
    assert [calls for calls, _ in results] == [1, 0, 0]
    for _, samples in results[1:]:
        np.testing.assert_array_equal(samples, results[0][1])
