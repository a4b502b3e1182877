"""The shared multi-rank helper: results by rank, propagated failures, timeouts, dead ranks."""
import os
import time

import pytest
import torch.distributed as dist

from tests.distributed.spawn import run_ranks


def _ranks(rank, world_size):
    return rank, world_size, dist.get_rank(), dist.get_world_size()


def test_results_come_back_in_rank_order():
    assert run_ranks(_ranks, 3) == [(r, 3, r, 3) for r in range(3)]


def _fails_on_one(rank, world_size):
    if rank == 1:
        raise ValueError("bad shard on purpose")
    dist.barrier()  # the healthy rank blocks on its failed peer until the helper kills it


def test_a_failing_rank_raises_with_its_traceback():
    with pytest.raises(RuntimeError) as err:
        run_ranks(_fails_on_one, 2, timeout=60)
    assert "rank 1 of 2 failed in _fails_on_one" in str(err.value)
    assert "ValueError: bad shard on purpose" in str(err.value)


def _hangs(rank, world_size):
    if rank == 0:
        time.sleep(60)


def test_a_hanging_rank_times_out_and_is_killed():
    start = time.monotonic()
    with pytest.raises(TimeoutError, match=r"ranks \[0\] of 2 did not finish _hangs within 3s"):
        run_ranks(_hangs, 2, timeout=3)
    assert time.monotonic() - start < 20


def _dies(rank, world_size):
    if rank == 1:
        os._exit(3)
    time.sleep(60)


def test_a_rank_that_dies_silently_is_reported():
    with pytest.raises(RuntimeError, match="rank 1 exited with code 3"):
        run_ranks(_dies, 2, timeout=30)
