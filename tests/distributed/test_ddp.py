"""Data parallelism at DP=2 equals one process training on the whole global batch.

One spawn of 2 gloo ranks trains the same tiny GPT for a few Adam steps under every data-parallel
variant (local DDP with and without overlap, several buckets or one, averaging in the collective,
torch DDP, the distributed optimizer) and compares the parameters with the one-process run;
it also checks that gradients are reduced once per global batch and that the distributed
optimizer resumes bit for bit from its state dict.
"""
import copy
from unittest import mock

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.distributed import (
    DistributedDataParallel,
    DistributedDataParallelConfig,
    Float16Module,
    finalize_model_grads,
)
from megatron.core.distributed import grad_buffer
from megatron.core.models import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.parallel_state import ProcessGroups
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import relative_error
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS, STEPS = 64, 8, 2, 3
MICRO_PER_RANK, DP = 2, 2
OPT = OptimizerConfig(lr=5e-3, clip_grad=0.05, weight_decay=0.1)


def config():
    return TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0,
                             attention_dropout=0.0)


def gpt(pg, dtype=torch.float32):
    torch.manual_seed(11)
    cfg = config()
    cfg.params_dtype = cfg.pipeline_dtype = dtype
    return GPTModel(cfg, VOCAB, SEQ, pg=pg)


def global_batches():
    gen = torch.Generator().manual_seed(5)
    return [[torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen) for _ in range(MICRO_PER_RANK * DP)]
            for _ in range(STEPS)]


def train_step(chunk, optimizer, micro_batches, pg, on_finalize=None):
    def forward_step(data_iterator, model):
        batch = next(data_iterator)
        output = model(batch[:, :-1], labels=batch[:, 1:])
        return output, lambda out: (out.float().mean(), {"loss": out.float().mean().detach()})

    def finalize(chunks):
        if on_finalize is not None:
            on_finalize()
        finalize_model_grads(chunks, pg)

    optimizer.zero_grad()
    get_forward_backward_func(pg)(
        forward_step_func=forward_step, data_iterator=iter(micro_batches), model=chunk,
        num_microbatches=len(micro_batches), seq_length=SEQ, micro_batch_size=MBS, config=config(), pg=pg,
        finalize_model_grads_func=finalize)
    return optimizer.step()


def reference_run():
    pg = ProcessGroups()
    model = gpt(pg)
    optimizer = get_megatron_optimizer(OPT, [model], pg=pg)
    norms = [train_step(model, optimizer, batch, pg)[1] for batch in global_batches()]
    return {n: p.detach().clone() for n, p in model.named_parameters()}, norms


def core_params(chunk):
    return dict(chunk.module.named_parameters())


def _ddp_worker(rank, world_size):
    pg = parallel_state.initialize_model_parallel(1, 1)
    want, want_norms = reference_run()
    mine = slice(pg.dp_rank * MICRO_PER_RANK, (pg.dp_rank + 1) * MICRO_PER_RANK)
    report = {}
    variants = {
        "local-overlap": DistributedDataParallelConfig(bucket_size=2000),
        "local-no-overlap": DistributedDataParallelConfig(bucket_size=2000, overlap_grad_reduce=False),
        "local-one-bucket-avg": DistributedDataParallelConfig(bucket_size=None, average_in_collective=True),
        "local-fp32-accumulation": DistributedDataParallelConfig(bucket_size=3000, grad_reduce_in_fp32=True),
        "distributed-optimizer": DistributedDataParallelConfig(bucket_size=2000, use_distributed_optimizer=True),
        "torch": None,
    }
    for label, ddp_config in variants.items():
        model = gpt(pg)
        if ddp_config is None:
            chunk = torch.nn.parallel.DistributedDataParallel(model, process_group=pg.dp)
        else:
            chunk = DistributedDataParallel(ddp_config, model, pg)
            chunk.broadcast_params()
        optimizer = get_megatron_optimizer(
            OptimizerConfig(**{**OPT.__dict__, "use_distributed_optimizer": label == "distributed-optimizer"}),
            [chunk], pg=pg)
        launches, launched_before_finalize, norms = [], [], []
        real_all_reduce, real_scatter = dist.all_reduce, grad_buffer._reduce_scatter

        def counting(real):
            def wrapper(*args, **kwargs):
                launches.append(1)
                return real(*args, **kwargs)
            return wrapper

        def record_launched():
            if ddp_config is not None:
                launched_before_finalize.append(
                    [b.launched for buf in chunk.buffers for b in buf.buckets])

        for batch in global_batches():
            with mock.patch.object(dist, "all_reduce", counting(real_all_reduce)), \
                    mock.patch.object(grad_buffer, "_reduce_scatter", counting(real_scatter)):
                before = len(launches)
                ok, norm, _ = train_step(chunk, optimizer, batch[mine], pg, record_launched)
                collectives = len(launches) - before
            assert ok
            norms.append(norm)
        got = core_params(chunk)
        err = max(relative_error(got[n], w) for n, w in want.items())
        norm_err = max(abs(a - b) / b for a, b in zip(norms, want_norms))
        buckets = sum(len(buf.buckets) for buf in chunk.buffers) if ddp_config is not None else None
        if label in ("local-overlap", "torch"):
            report.setdefault("_params", {})[label] = got
        report[label] = {"param_err": err, "norm_err": norm_err, "buckets": buckets,
                         "launched": launched_before_finalize, "collectives": collectives}

    local, torch_ddp = report.pop("_params").values()
    report["local-vs-torch"] = max(relative_error(local[n], torch_ddp[n]) for n in want)
    report["resume"] = _distributed_optimizer_resume(pg)
    report["bf16"] = _bf16_distributed_equals_plain(pg)
    report["broadcast"] = _broadcast_from_first_replica(pg)
    return report


def _bf16_distributed_equals_plain(pg):
    """bf16 with fp32 gradient accumulation: the sharded optimizer makes the plain one's update."""
    mine = slice(pg.dp_rank * MICRO_PER_RANK, (pg.dp_rank + 1) * MICRO_PER_RANK)
    finals = []
    for distributed in (False, True):
        model = Float16Module(torch.bfloat16, gpt(pg, torch.bfloat16))
        chunk = DistributedDataParallel(DistributedDataParallelConfig(
            bucket_size=2000, grad_reduce_in_fp32=True, use_distributed_optimizer=distributed), model, pg)
        optimizer = get_megatron_optimizer(
            OptimizerConfig(**{**OPT.__dict__, "bf16": True, "use_distributed_optimizer": distributed}), [chunk], pg=pg)
        for batch in global_batches():
            assert train_step(chunk, optimizer, batch[mine], pg)[0]
        masters = {id(p): m for m, p in optimizer.main_params()}
        finals.append({n: p.detach().clone() for n, p in model.module.named_parameters()})
        assert all(m.dtype == torch.float32 for m in masters.values())
    return max(relative_error(finals[1][n].float(), v.float()) for n, v in finals[0].items())


def _broadcast_from_first_replica(pg):
    model = gpt(pg)
    if pg.dp_rank == 1:
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
    chunk = DistributedDataParallel(DistributedDataParallelConfig(), model, pg)
    chunk.broadcast_params()
    reference = gpt(pg)
    return all(torch.equal(a, b) for a, b in zip(model.parameters(), reference.parameters()))


def _distributed_optimizer_resume(pg):
    """Save after two steps, take one more; a fresh model loading the state takes the same step exactly."""
    ddp_config = DistributedDataParallelConfig(bucket_size=1500, use_distributed_optimizer=True)
    opt_config = OptimizerConfig(**{**OPT.__dict__, "use_distributed_optimizer": True})
    mine = slice(pg.dp_rank * MICRO_PER_RANK, (pg.dp_rank + 1) * MICRO_PER_RANK)
    batches = global_batches()

    def build():
        chunk = DistributedDataParallel(ddp_config, gpt(pg), pg)
        return chunk, get_megatron_optimizer(opt_config, [chunk], pg=pg)

    chunk, optimizer = build()
    for batch in batches[:2]:
        train_step(chunk, optimizer, batch[mine], pg)
    model_state = copy.deepcopy(chunk.state_dict())
    # Collective over the DP group; only data-parallel rank 0 gets the tensors (it is the one that
    # saves), so every rank loads rank 0's, as every rank reads the saved file at resume.
    holder = [copy.deepcopy(optimizer.state_dict())]
    torch.distributed.broadcast_object_list(holder, src=pg.dp_ranks[0], group=pg.dp)
    optimizer_state = holder[0]
    want = train_step(chunk, optimizer, batches[2][mine], pg)
    want_params = {n: p.detach().clone() for n, p in core_params(chunk).items()}

    fresh, fresh_optimizer = build()
    fresh.load_state_dict(model_state)
    fresh_optimizer.reload_model_params()
    fresh_optimizer.load_state_dict(optimizer_state)
    got = train_step(fresh, fresh_optimizer, batches[2][mine], pg)
    identical = got == want and all(torch.equal(p, want_params[n]) for n, p in core_params(fresh).items())
    full_shapes = [tuple(t.shape) for t in optimizer_state["fp32_params"]]
    return {"identical": identical, "shapes": full_shapes == [tuple(p.shape) for p in fresh_optimizer.model_params]}


def test_data_parallel_variants_equal_one_process():
    reports = run_ranks(_ddp_worker, 2, timeout=240)
    for label in ("local-overlap", "local-no-overlap", "local-one-bucket-avg", "local-fp32-accumulation",
                  "distributed-optimizer", "torch"):
        for rank, report in enumerate(reports):
            r = report[label]
            assert r["param_err"] < 1e-5, (label, rank, r["param_err"])
            assert r["norm_err"] < 1e-5, (label, rank, r["norm_err"])
    for rank, report in enumerate(reports):
        # The two DDP implementations reduce the same sums: equal far below the 1e-5 tolerance.
        assert report["local-vs-torch"] < 1e-6, report["local-vs-torch"]
        overlap, no_overlap = report["local-overlap"], report["local-no-overlap"]
        assert overlap["buckets"] >= 3
        # Reduced once per global batch: one collective per bucket, although 2 micro-batches ran.
        assert overlap["collectives"] == overlap["buckets"], overlap
        assert no_overlap["collectives"] == no_overlap["buckets"], no_overlap
        assert report["local-one-bucket-avg"]["collectives"] == 1
        # Overlap launches every bucket from the backward hooks; without it nothing before finalize.
        assert all(all(step) for step in overlap["launched"])
        assert not any(any(step) for step in no_overlap["launched"])
        dist_opt = report["distributed-optimizer"]
        # Reduce-scatters per bucket, plus the optimizer's DP all-reduce of the squared norm.
        assert dist_opt["collectives"] == dist_opt["buckets"] + 1, dist_opt
        assert report["resume"] == {"identical": True, "shapes": True}
        assert report["bf16"] < 1e-6, report["bf16"]
        assert report["broadcast"]
