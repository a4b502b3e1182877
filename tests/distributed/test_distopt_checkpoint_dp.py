"""Distributed-optimizer checkpoints: only data-parallel rank 0 assembles the unsharded state, and a
checkpoint saved at one data-parallel size resumes at another (DP2 -> DP1, DP1 -> DP2) with the
losses of the run that never stopped."""
import argparse
import os

import torch

from megatron.checkpointing import load_checkpoint, save_checkpoint
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models import GPTModel
from megatron.core.optimizer import OptimizerConfig, OptimizerParamScheduler, distrib_optimizer, get_megatron_optimizer
from megatron.core.tensor_parallel import model_parallel_manual_seed
from megatron.core.tensor_parallel.mappings import all_reduce
from megatron.core.transformer import TransformerConfig
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, GLOBAL_BATCH = 64, 8, 4


def _args(save_dir):
    return argparse.Namespace(
        save=save_dir, load=save_dir, no_save_optim=False, no_save_rng=False, no_load_optim=False,
        no_load_rng=False, finetune=False, consumed_train_samples=0, consumed_valid_samples=0,
        num_layers=2, hidden_size=16, num_attention_heads=4, padded_vocab_size=VOCAB,
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, use_distributed_optimizer=True)


def _build(pg, seed):
    config = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0)
    torch.manual_seed(seed)
    model = GPTModel(config, VOCAB, SEQ, pg=pg)
    # Small buckets: several gathers, and parameters split between the two ranks' shards.
    ddp = DistributedDataParallel(DistributedDataParallelConfig(
        use_distributed_optimizer=True, overlap_grad_reduce=False, bucket_size=700), model, pg)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-2, use_distributed_optimizer=True), [ddp], pg)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-2, min_lr=0.0, lr_warmup_steps=2,
                                        lr_decay_steps=64, lr_decay_style="linear", start_wd=0.01, end_wd=0.01,
                                        wd_incr_steps=64, wd_incr_style="constant")
    return ddp, optimizer, scheduler


def _train_step(ddp, optimizer, scheduler, pg, step) -> float:
    """One update on a global batch that depends only on ``step``; each rank takes its rows."""
    tokens = torch.randint(0, VOCAB, (GLOBAL_BATCH, SEQ + 1), generator=torch.Generator().manual_seed(step))
    rows = GLOBAL_BATCH // pg.data_parallel_size
    tokens = tokens[pg.dp_rank * rows:(pg.dp_rank + 1) * rows]
    optimizer.zero_grad()
    ddp.zero_grad_buffer()
    loss = ddp(tokens[:, :-1], labels=tokens[:, 1:]).mean()
    loss.backward()
    ddp.start_grad_sync()
    ddp.finish_grad_sync()
    assert optimizer.step()[0]
    scheduler.step(GLOBAL_BATCH)
    total = all_reduce(loss.detach().reshape(1).clone(), pg.dp)
    return float(total.item()) / pg.data_parallel_size


def _tensor_numel(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel()
    if isinstance(value, dict):
        return sum(_tensor_numel(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_numel(v) for v in value)
    return 0


def _save_then_continue(rank, world_size, save_dir):
    """Train 2 steps, save, train 2 more; the losses of steps 3 and 4 are the reference."""
    # Pieces smaller than a bucket's shard and not aligned with parameters: the gather in pieces is exercised.
    distrib_optimizer.GATHER_ELEMENTS = 37
    pg = parallel_state.initialize_model_parallel(1, 1)
    try:
        model_parallel_manual_seed(5, pg.tp_rank)
        ddp, optimizer, scheduler = _build(pg, 0)
        for step in (1, 2):
            _train_step(ddp, optimizer, scheduler, pg, step)
        save_checkpoint(2, [ddp], optimizer, scheduler, _args(save_dir), pg)
        returned = _tensor_numel(optimizer.state_dict())
        losses = [_train_step(ddp, optimizer, scheduler, pg, step) for step in (3, 4)]
        return {"dp_rank": pg.dp_rank, "returned_numel": returned, "losses": losses,
                "params": sum(p.numel() for p in ddp.parameters())}
    finally:
        parallel_state.destroy_model_parallel()


def _load_then_continue(rank, world_size, save_dir):
    pg = parallel_state.initialize_model_parallel(1, 1)
    try:
        model_parallel_manual_seed(77, pg.tp_rank)
        ddp, optimizer, scheduler = _build(pg, 1)
        assert load_checkpoint([ddp], optimizer, scheduler, _args(save_dir)) == 2
        return [_train_step(ddp, optimizer, scheduler, pg, step) for step in (3, 4)]
    finally:
        parallel_state.destroy_model_parallel()


def _close(a, b):
    return all(abs(x - y) <= 1e-5 * max(1.0, abs(y)) for x, y in zip(a, b))


def test_resume_at_another_data_parallel_size_and_rank0_alone_assembles(tmp_path):
    dp2_dir, dp1_dir = os.path.join(tmp_path, "dp2"), os.path.join(tmp_path, "dp1")
    saved_dp2 = run_ranks(_save_then_continue, 2, dp2_dir)
    saved_dp1 = run_ranks(_save_then_continue, 1, dp1_dir)
    # Rank 1 returns no tensors; rank 0 the fp32 masters and both Adam moments at full size.
    assert saved_dp2[1]["returned_numel"] == 0
    assert saved_dp2[0]["returned_numel"] == 3 * saved_dp2[0]["params"]
    assert _close(saved_dp2[0]["losses"], saved_dp1[0]["losses"])

    dp2_to_dp1 = run_ranks(_load_then_continue, 1, dp2_dir)[0]
    dp1_to_dp2 = run_ranks(_load_then_continue, 2, dp1_dir)
    assert _close(dp2_to_dp1, saved_dp2[0]["losses"]), (dp2_to_dp1, saved_dp2[0]["losses"])
    assert dp1_to_dp2[0] == dp1_to_dp2[1]
    assert _close(dp1_to_dp2[0], saved_dp1[0]["losses"]), (dp1_to_dp2[0], saved_dp1[0]["losses"])
