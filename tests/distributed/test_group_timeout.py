"""Every model-parallel group honours the job's timeout (--distributed-timeout-minutes): a group made
without one gets torch's 30-minute default, so a stalled rank used to hang the data-parallel
gradient all-reduce for half an hour."""
import time
from datetime import timedelta

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from tests.distributed.spawn import run_ranks


def _all_reduce_with_a_silent_peer(rank, world_size):
    pg = parallel_state.initialize_model_parallel(1, 1, timeout=timedelta(seconds=2))
    try:
        if rank == 1:
            time.sleep(12)  # never joins the all-reduce; then leaves
            return None
        start = time.monotonic()
        try:
            dist.all_reduce(torch.ones(1), group=pg.dp)
        except RuntimeError as exc:
            return time.monotonic() - start, str(exc)
        return time.monotonic() - start, "finished"
    finally:
        parallel_state.destroy_model_parallel()


def test_data_parallel_group_times_out_with_the_job_timeout():
    waited, message = run_ranks(_all_reduce_with_a_silent_peer, 2, timeout=60)[0]
    assert waited < 8, f"rank 0 waited {waited:.1f} s ({message}), not the 2 s group timeout"
    assert "timed out" in message.lower() or "timeout" in message.lower(), message
