"""The optimizer under model parallelism with data parallelism, on 4 gloo ranks.

At TP2 (sequence parallel) x DP2, PP2 x DP2 and PP2 x 2 virtual stages x DP2, with the plain and the distributed optimizer, the
clipped global gradient norm equals the one-process norm (tensor-parallel shards summed,
replicated parameters and the tied embedding copy counted once) and the updated parameters equal
the one-process update. An fp16 overflow injected on one rank makes every rank skip the step.
"""
import torch

from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.parallel_state import ProcessGroups
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import model_parallel_manual_seed
from megatron.core.tensor_parallel.mappings import all_gather_dim
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import build_chunks, global_names, load_from_reference, relative_error
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS, MICRO_PER_RANK, DP = 64, 8, 2, 2, 2
OPT = dict(lr=1e-2, clip_grad=0.05, weight_decay=0.1, adam_eps=1e-6)


def config(**overrides):
    base = dict(num_layers=2, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def batches():
    gen = torch.Generator().manual_seed(3)
    return [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen) for _ in range(MICRO_PER_RANK * DP)]


def forward_step(data_iterator, model):
    batch = next(data_iterator)
    output = model(batch[:, :-1], labels=batch[:, 1:])
    return output, lambda out: (out.float().mean(), {"loss": out.float().mean().detach()})


def run_step(chunks, optimizer, micro_batches, cfg, pg, before_finalize=None, after_finalize=None):
    def finalize(models):
        if before_finalize is not None:
            before_finalize()
        finalize_model_grads(models, pg)
        if after_finalize is not None:
            after_finalize()

    optimizer.zero_grad()
    get_forward_backward_func(pg)(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches) if len(chunks) == 1 else [iter(micro_batches) for _ in chunks],
        model=chunks[0] if len(chunks) == 1 else chunks, num_microbatches=len(micro_batches), seq_length=SEQ,
        micro_batch_size=MBS, config=cfg, pg=pg, finalize_model_grads_func=finalize)
    return optimizer.step()


def reference(num_layers=2):
    pg = ProcessGroups()
    torch.manual_seed(7)
    model = GPTModel(config(num_layers=num_layers), VOCAB, SEQ, pg=pg)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    optimizer = get_megatron_optimizer(OptimizerConfig(**OPT), [model], pg=pg)
    _, norm, _ = run_step([model], optimizer, batches(), config(num_layers=num_layers), pg)
    return state, norm, {n: p.detach().clone() for n, p in model.named_parameters()}


def gathered_params(chunk, pg):
    out = {}
    for local, name in global_names(chunk).items():
        param = dict(chunk.named_parameters())[local]
        value = param.detach()
        if getattr(param, "tensor_model_parallel", False):
            value = all_gather_dim(value.contiguous(), param.partition_dim, pg.tp)
        out[name] = value.clone()
    return out


def _layout_worker(rank, world_size):
    references = {2: reference(2), 4: reference(4)}
    report = {}
    layouts = [("TP2-SP", 2, 1, None, {"sequence_parallel": True}), ("PP2", 1, 2, None, {}),
               ("VPP2x2", 1, 2, 2, {"num_layers": 4})]
    for label, tp, pp, vpp, overrides in layouts:
        state, want_norm, want_params = references[overrides.get("num_layers", 2)]
        for distributed in (False, True):
            pg = parallel_state.initialize_model_parallel(tp, pp, vpp)
            try:
                model_parallel_manual_seed(7, pg.tp_rank)
                cfg = config(**overrides)
                chunks = build_chunks(lambda pre, post: GPTModel(cfg, VOCAB, SEQ, pre_process=pre,
                                                                 post_process=post, pg=pg), pg)
                load_from_reference(chunks, state, pg)
                ddp_config = DistributedDataParallelConfig(bucket_size=1000, use_distributed_optimizer=distributed)
                wrapped = [DistributedDataParallel(ddp_config, chunk, pg) for chunk in chunks]
                optimizer = get_megatron_optimizer(
                    OptimizerConfig(**OPT, use_distributed_optimizer=distributed), wrapped, pg=pg)
                mine = batches()[pg.dp_rank * MICRO_PER_RANK:(pg.dp_rank + 1) * MICRO_PER_RANK]
                ok, norm, _ = run_step(wrapped, optimizer, mine, cfg, pg)
                got = {n: v for chunk in chunks for n, v in gathered_params(chunk, pg).items()}
                err = max(relative_error(v, want_params[n]) for n, v in got.items())
                key = f"{label}{'-distopt' if distributed else ''}"
                report[key] = (ok, abs(norm - want_norm) / want_norm, err)
            finally:
                parallel_state.destroy_model_parallel()
    report["fp16-skip"] = _fp16_overflow_on_one_rank()
    report["fp16-skip-distopt"] = _fp16_overflow_in_one_shard()
    return report


def _fp16_overflow_on_one_rank():
    """An inf in one tensor-parallel shard on rank 0 reaches every rank's skip decision."""
    pg = parallel_state.initialize_model_parallel(2, 1)
    try:
        model_parallel_manual_seed(7, pg.tp_rank)
        cfg = config(params_dtype=torch.float16)
        torch.manual_seed(7)
        model = GPTModel(cfg, VOCAB, SEQ, pg=pg)
        ddp = DistributedDataParallel(DistributedDataParallelConfig(overlap_grad_reduce=False), model, pg)
        optimizer = get_megatron_optimizer(OptimizerConfig(**OPT, fp16=True, hysteresis=1,
                                                           initial_loss_scale=2.0**10), [ddp], pg=pg)
        before = [p.detach().clone() for p in model.parameters()]

        def inject():
            if pg.rank == 0:
                model.language_model.encoder.layers[0].mlp.dense_h_to_4h.weight.main_grad.view(-1)[3] = float("inf")

        mine = batches()[pg.dp_rank * MICRO_PER_RANK:(pg.dp_rank + 1) * MICRO_PER_RANK]
        skipped = run_step([ddp], optimizer, mine, cfg, pg, before_finalize=inject)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        scale_after_skip = optimizer.get_loss_scale().item()
        clean = run_step([ddp], optimizer, mine, cfg, pg)
        return skipped, unchanged, scale_after_skip, clean[0]
    finally:
        parallel_state.destroy_model_parallel()


def _fp16_overflow_in_one_shard():
    """With the distributed optimizer only rank 0 sees its shard's inf: the check spans DP and MP."""
    pg = parallel_state.initialize_model_parallel(2, 1)
    try:
        model_parallel_manual_seed(7, pg.tp_rank)
        cfg = config(params_dtype=torch.float16)
        torch.manual_seed(7)
        model = GPTModel(cfg, VOCAB, SEQ, pg=pg)
        ddp = DistributedDataParallel(DistributedDataParallelConfig(use_distributed_optimizer=True), model, pg)
        opt_config = OptimizerConfig(**OPT, fp16=True, hysteresis=1, use_distributed_optimizer=True,
                                     initial_loss_scale=2.0**10)
        optimizer = get_megatron_optimizer(opt_config, [ddp], pg=pg)
        before = [p.detach().clone() for p in model.parameters()]

        def inject():
            if pg.rank == 0:
                shard = optimizer.shards[0]
                shard.param.main_grad.view(-1)[shard.start] = float("inf")

        mine = batches()[pg.dp_rank * MICRO_PER_RANK:(pg.dp_rank + 1) * MICRO_PER_RANK]
        skipped = run_step([ddp], optimizer, mine, cfg, pg, after_finalize=inject)
        unchanged = all(torch.equal(a, b) for a, b in zip(before, model.parameters()))
        scale_after_skip = optimizer.get_loss_scale().item()
        clean = run_step([ddp], optimizer, mine, cfg, pg)
        return skipped, unchanged, scale_after_skip, clean[0]
    finally:
        parallel_state.destroy_model_parallel()


def test_norm_and_update_equal_one_process_under_tp_pp_dp():
    reports = run_ranks(_layout_worker, 4, timeout=240)
    for rank, report in enumerate(reports):
        for key in ("TP2-SP", "TP2-SP-distopt", "PP2", "PP2-distopt", "VPP2x2", "VPP2x2-distopt"):
            ok, norm_err, param_err = report[key]
            assert ok and norm_err < 1e-5 and param_err < 1e-5, (rank, key, norm_err, param_err)
        for key in ("fp16-skip", "fp16-skip-distopt"):
            skipped, unchanged, scale, clean_ok = report[key]
            assert skipped == (False, None, None) and unchanged, (rank, key, skipped)
            assert scale == 2.0**9 and clean_ok, (rank, key, scale, clean_ok)
