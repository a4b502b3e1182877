"""A Llama-style GPT (rope, SwiGLU, RMSNorm, grouped-query attention split over TP, no biases,
untied output layer) at TP2, PP2, TP2xPP2, virtual pipelining and DP2 equals the one-process model.

The layouts compare per-micro-batch losses and every gradient (sequence parallelism and
recomputation included); DP2 runs one real optimizer step with the local DDP and the plain and
the distributed optimizer, and compares the updated parameters with the one-process step over all
micro-batches. Greedy KV-cached and recomputed generation at TP2xPP2 equals one process. One spawn
of 4 gloo ranks runs everything (starting ranks costs more than the steps).
"""
import torch

from megatron.core import parallel_state
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, finalize_model_grads
from megatron.core.models import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.parallel_state import ProcessGroups
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel import model_parallel_manual_seed
from megatron.core.transformer import TransformerConfig
from megatron.text_generation import SamplingParams, generate_tokens
from tests.distributed.equivalence import (build_chunks, check_layout, gather_tp, global_names, load_from_reference,
                                           relative_error)
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS, MICRO = 64, 8, 2, 4
OPT = dict(lr=1e-2, clip_grad=0.05, weight_decay=0.1, adam_eps=1e-6)


def llama_config(**overrides):
    base = dict(num_layers=4, hidden_size=16, num_attention_heads=4, num_query_groups=2, ffn_hidden_size=24,
                swiglu=True, normalization="RMSNorm", add_bias_linear=False, untie_embeddings_and_output_weights=True,
                position_embedding_type="rope", hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def make_batches(seed=21):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen) for _ in range(MICRO)]


def build_gpt(config, pre_process, post_process, add_encoder, add_decoder, pg):
    return GPTModel(config, VOCAB, SEQ, pre_process=pre_process, post_process=post_process, pg=pg)


def gpt_forward(model, batch):
    return model(batch[:, :-1], labels=batch[:, 1:])


RECOMPUTE = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 2}
LAYOUTS = [  # (label, tp, pp, vpp, split), config overrides; 4 ranks, so TP2 and PP2 run as two DP replicas
    (("TP2", 2, 1, None, None), {}),
    (("TP2-SP-selective", 2, 1, None, None), {"sequence_parallel": True, "recompute_granularity": "selective"}),
    (("PP2", 1, 2, None, None), {}),
    (("PP2-tied-bias", 1, 2, None, None), {"untie_embeddings_and_output_weights": False, "add_bias_linear": True}),
    (("TP2xPP2-SP-recompute", 2, 2, None, None), {"sequence_parallel": True, **RECOMPUTE}),
    (("VPP2x2", 1, 2, 2, None), {}),
]


def _step(chunks, optimizer, micro_batches, cfg, pg):
    def forward_step(data_iterator, model):
        output = gpt_forward(model, next(data_iterator))
        return output, lambda out: (out.float().mean(), {"loss": out.float().mean().detach()})

    optimizer.zero_grad()
    get_forward_backward_func(pg)(
        forward_step_func=forward_step,
        data_iterator=iter(micro_batches) if len(chunks) == 1 else [iter(micro_batches) for _ in chunks],
        model=chunks[0] if len(chunks) == 1 else chunks, num_microbatches=len(micro_batches), seq_length=SEQ,
        micro_batch_size=MBS, config=cfg, pg=pg, finalize_model_grads_func=lambda m: finalize_model_grads(m, pg))
    return optimizer.step()


def _data_parallel_step(tp, pp, distributed, overrides):
    """One optimizer step at tp x pp x DP2 against the one-process step; (ok, norm error, worst parameter error)."""
    batches = make_batches(5)
    ref_pg = ProcessGroups()
    torch.manual_seed(3)
    reference = GPTModel(llama_config(), VOCAB, SEQ, pg=ref_pg)
    state = {k: v.clone() for k, v in reference.state_dict().items()}
    _, want_norm, _ = _step([reference], get_megatron_optimizer(OptimizerConfig(**OPT), [reference], pg=ref_pg),
                            batches, llama_config(), ref_pg)
    want = {n: p.detach() for n, p in reference.named_parameters()}

    pg = parallel_state.initialize_model_parallel(tp, pp)
    try:
        model_parallel_manual_seed(3, pg.tp_rank)
        cfg = llama_config(**overrides)
        chunks = build_chunks(lambda pre, post: build_gpt(cfg, pre, post, True, True, pg), pg)
        load_from_reference(chunks, state, pg)
        ddp = DistributedDataParallelConfig(bucket_size=500, use_distributed_optimizer=distributed)
        wrapped = [DistributedDataParallel(ddp, chunk, pg) for chunk in chunks]
        optimizer = get_megatron_optimizer(OptimizerConfig(**OPT, use_distributed_optimizer=distributed), wrapped,
                                           pg=pg)
        half = len(batches) // 2
        ok, norm, _ = _step(wrapped, optimizer, batches[pg.dp_rank * half:(pg.dp_rank + 1) * half], cfg, pg)
        worst = 0.0
        for chunk in chunks:
            params = dict(chunk.named_parameters())
            for local, name in global_names(chunk).items():
                value = params[local].detach()
                if getattr(params[local], "tensor_model_parallel", False):
                    value = gather_tp(value, params[local], pg)
                worst = max(worst, relative_error(value, want[name]))
        return ok, abs(norm - want_norm) / want_norm, worst
    finally:
        parallel_state.destroy_model_parallel()


def _generation(tp, pp):
    """Greedy decoding at tp x pp (KV cache with per-rank query groups, and recompute) against one process."""
    prompts = [[3, 4, 5], [7], [9, 10, 11, 12, 13], [20, 21]]
    cfg = llama_config(rotary_base=50.0)
    torch.manual_seed(9)
    reference = GPTModel(cfg, VOCAB, 24, parallel_output=False, pg=ProcessGroups()).eval()
    greedy = SamplingParams(greedy=True)
    want = generate_tokens(reference, prompts, 8, greedy, VOCAB - 1, 24, pg=ProcessGroups())
    pg = parallel_state.initialize_model_parallel(tp, pp)
    try:
        chunks = build_chunks(lambda pre, post: GPTModel(cfg, VOCAB, 24, pre_process=pre, post_process=post,
                                                         parallel_output=False, pg=pg), pg)
        load_from_reference(chunks, reference.state_dict(), pg)
        stage = chunks[0].eval()
        return [generate_tokens(stage, prompts, 8, greedy, VOCAB - 1, 24, use_cache=cache, pg=pg) == want
                for cache in (True, False)] + [len({tuple(row["tokens"]) for row in want}) > 1]
    finally:
        parallel_state.destroy_model_parallel()


def _worker(rank, world_size):
    batches = make_batches()
    report = {layout[0]: check_layout(build_gpt, gpt_forward, llama_config, overrides, layout, batches, SEQ, MBS)
              for layout, overrides in LAYOUTS}
    report["TP2xDP2-SP-distopt"] = _data_parallel_step(2, 1, True, {"sequence_parallel": True})
    report["PP2xDP2"] = _data_parallel_step(1, 2, False, {})
    report["generation-TP2xPP2"] = _generation(2, 2)
    return report


def test_llama_layouts_match_single_process():
    reports = run_ranks(_worker, 4, timeout=300)
    for layout, _ in LAYOUTS:
        label = layout[0]
        loss_err = max(r[label][0] for r in reports)
        grad_err = max(r[label][1] for r in reports)
        assert loss_err < 1e-5 and grad_err < 1e-5, (label, loss_err, grad_err)
    for rank, report in enumerate(reports):
        for key in ("TP2xDP2-SP-distopt", "PP2xDP2"):
            ok, norm_err, param_err = report[key]
            assert ok and norm_err < 1e-5 and param_err < 1e-5, (rank, key, norm_err, param_err)
        assert report["generation-TP2xPP2"] == [True, True, True], rank
