"""Pretraining samplers: sharding over data-parallel ranks and exact resumption."""
import itertools

import pytest
import torch

from megatron.core.datasets.samplers import (
    MegatronPretrainingRandomSampler,
    MegatronPretrainingSampler,
    build_pretraining_data_loader,
    cyclic_iter,
)


def _global_stream(make, dp, steps):
    """Interleave the ranks' micro-batches into the order the global batch sees them."""
    iters = [iter(make(rank)) for rank in range(dp)]
    out = []
    for _ in range(steps):
        for it in iters:
            out.extend(next(it))
    return out


def test_sequential_sampler_shards_consecutive_micro_batches():
    batches = [list(MegatronPretrainingSampler(20, 0, 2, rank, 2)) for rank in range(2)]
    assert batches[0][:2] == [[0, 1], [4, 5]]
    assert batches[1][:2] == [[2, 3], [6, 7]]
    assert len(batches[0]) == 5 and sorted(sum(batches[0] + batches[1], [])) == list(range(20))


def test_sequential_sampler_drop_last():
    assert list(MegatronPretrainingSampler(7, 0, 3, 0, 1)) == [[0, 1, 2], [3, 4, 5]]
    assert list(MegatronPretrainingSampler(7, 0, 3, 0, 1, drop_last=False))[-1] == [6]


@pytest.mark.parametrize("sampler_cls", [MegatronPretrainingSampler, MegatronPretrainingRandomSampler])
@pytest.mark.parametrize("dp,mbs,k", [(1, 4, 8), (2, 3, 12), (4, 2, 40)])
def test_resume_from_consumed_samples_continues_the_stream(sampler_cls, dp, mbs, k):
    total = 203
    full = _global_stream(lambda r: sampler_cls(total, 0, mbs, r, dp), dp, 10)
    resumed = _global_stream(lambda r: sampler_cls(total, k, mbs, r, dp), dp, 10 - k // (mbs * dp))
    assert resumed == full[k:]


def test_random_sampler_epochs_are_permutations_and_reshuffle():
    sampler = MegatronPretrainingRandomSampler(24, 0, 4, 0, 1)
    first = list(itertools.chain(*sampler))
    second = list(itertools.chain(*sampler))
    assert sorted(first) == list(range(24)) == sorted(second)
    assert first != second
    assert sampler.consumed_samples == 48


def test_random_sampler_ranks_are_disjoint():
    seen = [set(itertools.chain(*MegatronPretrainingRandomSampler(50, 0, 3, r, 3))) for r in range(3)]
    assert not (seen[0] & seen[1]) and not (seen[1] & seen[2])
    assert sum(len(s) for s in seen) == 45  # 50 // (3 * 3) = 5 full global batches of 9


def test_sampler_argument_errors():
    with pytest.raises(ValueError, match="used all its data"):
        MegatronPretrainingSampler(10, 10, 1, 0, 1)
    with pytest.raises(ValueError, match="not a multiple"):
        MegatronPretrainingRandomSampler(10, 3, 2, 0, 1)
    with pytest.raises(ValueError, match="data_parallel_rank 2"):
        MegatronPretrainingSampler(10, 0, 1, 2, 2)


class _Squares(torch.utils.data.Dataset):
    def __len__(self):
        return 64

    def __getitem__(self, i):
        return torch.tensor([i * i])


def test_data_loader_types():
    loader = build_pretraining_data_loader(_Squares(), 8, 4, 1, 2, "single")
    assert next(iter(loader)).flatten().tolist() == [144, 169, 196, 225]
    cyclic = build_pretraining_data_loader(_Squares(), 0, 4, 0, 1, "cyclic")
    stream = cyclic_iter(cyclic)
    batches = [next(stream) for _ in range(32)]  # two epochs of 16 micro-batches
    assert len(batches) == 32
    assert build_pretraining_data_loader(None, 0, 1, 0, 1) is None
    with pytest.raises(ValueError, match="--dataloader-type"):
        build_pretraining_data_loader(_Squares(), 0, 1, 0, 1, "external")
