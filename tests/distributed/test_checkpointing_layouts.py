"""Checkpoints written and read by several gloo ranks: TP2 x PP2 with virtual stages (plain optimizer), and
TP2 x DP2 with the local DDP and the distributed optimizer; training continues identically after a load."""
import argparse
import os

import torch

from megatron.checkpoint_state import flatten_state_dict
from megatron.checkpointing import load_checkpoint, save_checkpoint, unwrap_model
from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig
from megatron.core.models import GPTModel
from megatron.core.optimizer import OptimizerConfig, OptimizerParamScheduler, get_megatron_optimizer
from megatron.core.tensor_parallel import get_rng_tracker, model_parallel_manual_seed
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import build_chunks
from tests.distributed.spawn import run_ranks
from tests.unit.test_checkpointing import assert_same_state

VOCAB, SEQ = 64, 8


def _args(save_dir, tp, pp):
    return argparse.Namespace(
        save=save_dir, load=save_dir, no_save_optim=False, no_save_rng=False, no_load_optim=False,
        no_load_rng=False, finetune=False, consumed_train_samples=24, consumed_valid_samples=0,
        num_layers=4, hidden_size=16, num_attention_heads=4, padded_vocab_size=VOCAB,
        tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp, use_distributed_optimizer=False)


def _chunks(pg, seed):
    config = TransformerConfig(num_layers=4, hidden_size=16, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0)
    torch.manual_seed(seed)
    return build_chunks(lambda pre, post: GPTModel(config, VOCAB, SEQ, pre_process=pre, post_process=post, pg=pg), pg)


def _optimizer(chunks, pg, distributed_optimizer):
    config = OptimizerConfig(lr=1e-2, use_distributed_optimizer=distributed_optimizer)
    optimizer = get_megatron_optimizer(config, chunks, pg)
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-2, min_lr=0.0, lr_warmup_steps=2,
                                        lr_decay_steps=64, lr_decay_style="linear", start_wd=0.01, end_wd=0.01,
                                        wd_incr_steps=64, wd_incr_style="constant")
    return optimizer, scheduler


def _train_step(chunks, optimizer, scheduler, pg, step):
    """One update: a real forward/backward through DDP on a single stage, fixed gradients otherwise."""
    optimizer.zero_grad()
    if isinstance(chunks[0], DistributedDataParallel):
        model = chunks[0]
        model.zero_grad_buffer()
        gen = torch.Generator().manual_seed(100 * step + pg.dp_rank)
        tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=gen)
        model(tokens[:, :-1], labels=tokens[:, 1:]).mean().backward()
        model.start_grad_sync()
        model.finish_grad_sync()
    else:
        for chunk in chunks:
            for index, param in enumerate(chunk.parameters()):
                param.grad = torch.full_like(param, 0.1 * (index % 5 + 1) * step)
    assert optimizer.step()[0]
    scheduler.step(8)


def _build(pg, seed, distributed_optimizer):
    chunks = _chunks(pg, seed)
    if distributed_optimizer:
        ddp_config = DistributedDataParallelConfig(use_distributed_optimizer=True, overlap_grad_reduce=False)
        chunks = [DistributedDataParallel(ddp_config, chunk, pg) for chunk in chunks]
    return (chunks, *_optimizer(chunks, pg, distributed_optimizer))


def _weights(chunks):
    return [{k: v.clone() for k, v in unwrap_model(c).state_dict().items()} for c in chunks]


def _round_trip(save_dir, tp, pp, vpp, distributed_optimizer=False):
    pg = parallel_state.initialize_model_parallel(tp, pp, vpp)
    try:
        model_parallel_manual_seed(11, pg.tp_rank)
        chunks, optimizer, scheduler = _build(pg, 0, distributed_optimizer)
        _train_step(chunks, optimizer, scheduler, pg, 1)
        # Every rank's default generator at a different point: the saved RNG state is per rank.
        torch.rand(1 + pg.rank)
        save_checkpoint(3, chunks, optimizer, scheduler, _args(save_dir, tp, pp), pg)
        with get_rng_tracker().fork():
            expected_tracked = torch.rand(3)
        expected = torch.rand(3)

        model_parallel_manual_seed(99, pg.tp_rank)
        fresh, fresh_optimizer, fresh_scheduler = _build(pg, 1, distributed_optimizer)
        args = _args(save_dir, tp, pp)
        args.consumed_train_samples = 0
        iteration = load_checkpoint(fresh, fresh_optimizer, fresh_scheduler, args)
        assert iteration == 3 and fresh_scheduler.num_steps == 8 and args.consumed_train_samples == 24
        with get_rng_tracker().fork():
            assert torch.equal(torch.rand(3), expected_tracked)
        assert torch.equal(torch.rand(3), expected)
        for old, new in zip(_weights(chunks), _weights(fresh)):
            for name in old:
                assert torch.equal(old[name], new[name]), name
        assert_same_state(optimizer.state_dict(), fresh_optimizer.state_dict())
        # Training goes on identically from the loaded state.
        _train_step(chunks, optimizer, scheduler, pg, 2)
        _train_step(fresh, fresh_optimizer, fresh_scheduler, pg, 2)
        for old, new in zip(_weights(chunks), _weights(fresh)):
            for name in old:
                assert torch.equal(old[name], new[name]), name
        return {"tp": pg.tp_rank, "pp": pg.pp_rank, "dp": pg.dp_rank,
                "chunks": [sorted(unwrap_model(c).state_dict()) for c in chunks]}
    finally:
        parallel_state.destroy_model_parallel()


def _worker(rank, world_size, root):
    return {"tp2pp2vpp2": _round_trip(os.path.join(root, "tp2pp2"), 2, 2, 2),
            "tp2dp2": _round_trip(os.path.join(root, "tp2dp2"), 2, 1, None, distributed_optimizer=True)}


def test_tp2_pp2_virtual_and_tp2_dp2_round_trips(tmp_path):
    reports = run_ranks(_worker, 4, str(tmp_path), timeout=120)

    iteration_dir = tmp_path / "tp2pp2" / "iter_0000003"
    assert (tmp_path / "tp2pp2" / "latest_checkpointed_iteration.txt").read_text() == "3\n"
    assert sorted(os.listdir(iteration_dir)) == ["mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    for report in reports:
        r = report["tp2pp2vpp2"]
        saved = torch.load(iteration_dir / f"mp_rank_{r['tp']:02d}_{r['pp']:03d}" / "model_optim_rng.pt",
                           weights_only=False)
        assert "model" not in saved and {"model0", "model1"} <= set(saved)
        assert saved["args"].pipeline_model_parallel_size == 2 and saved["checkpoint_version"] == 3.0
        for index in (0, 1):
            flat = r["chunks"][index]
            nested = saved[f"model{index}"]
            encoder = nested["language_model"]["encoder"]
            assert "layers.0.self_attention.query_key_value.weight" in encoder
            # Global first chunk embeds; global last chunk holds the tied head copy and the final norm.
            assert ("embedding" in nested["language_model"]) == (r["pp"] == 0 and index == 0)
            is_last = r["pp"] == 1 and index == 1
            assert ("word_embeddings_for_head" in nested) == is_last
            assert ("final_layernorm.weight" in encoder) == is_last
            assert sorted(flatten_state_dict(nested)) == flat
        if is_last:
            assert nested["word_embeddings_for_head"]["weight"].shape == (VOCAB // 2, 16)

    dp_dir = tmp_path / "tp2dp2" / "iter_0000003"
    assert sorted(os.listdir(dp_dir)) == ["mp_rank_00", "mp_rank_01"]
    saved = torch.load(dp_dir / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    states = saved["rng_state"]
    assert len(states) == 2  # one per data-parallel rank
    assert not torch.equal(states[0]["torch_rng_state"], states[1]["torch_rng_state"])
