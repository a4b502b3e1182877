"""GPT at every layout on 4 gloo ranks equals the one-process model: per-micro-batch loss and every gradient.

One spawn runs all layouts in sequence (re-initialising the model-parallel groups in between),
because starting ranks costs more than the tiny model's steps.
"""
import torch

from megatron.core.models import GPTModel
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import check_layout
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS, NUM_MICROBATCHES = 128, 16, 2, 4


def tiny_config(**overrides):
    base = dict(num_layers=4, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def make_batches(seed=1234, count=NUM_MICROBATCHES):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen) for _ in range(count)]


def build_gpt(config, pre_process, post_process, add_encoder, add_decoder, pg):
    return GPTModel(config, VOCAB, SEQ, pre_process=pre_process, post_process=post_process, pg=pg)


def gpt_forward(model, batch):
    return model(batch[:, :-1], labels=batch[:, 1:])


RECOMPUTE_UNIFORM = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 2}
RECOMPUTE_BLOCK = {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 1}

# (label, tp, pp, vpp, split), config overrides
DEFAULT_LAYOUTS = [
    (("TP2", 2, 1, None, None), {}),
    (("TP2-SP", 2, 1, None, None), {"sequence_parallel": True}),
    (("PP2", 1, 2, None, None), {}),
    (("VPP2x2", 1, 2, 2, None), {}),
    (("TP2xPP2", 2, 2, None, None), {}),
    (("TP2xPP2-SP", 2, 2, None, None), {"sequence_parallel": True}),
    (("TP4", 4, 1, None, None), {}),
    (("TP4-SP", 4, 1, None, None), {"sequence_parallel": True}),
    (("PP4", 1, 4, None, None), {}),
    (("TP2-unfused-attention", 2, 1, None, None), {"attention_backend": "unfused"}),
    (("PP2-rope", 1, 2, None, None), {"position_embedding_type": "rope"}),
    (("TP2xPP2-recompute-uniform", 2, 2, None, None), RECOMPUTE_UNIFORM),
    (("VPP2x2-recompute-block", 1, 2, 2, None), RECOMPUTE_BLOCK),
    (("TP2-SP-recompute-selective", 2, 1, None, None), {"sequence_parallel": True, "recompute_granularity": "selective"}),
    (("PP2-keep-outputs", 1, 2, None, None), {"deallocate_pipeline_outputs": False}),
    # Hidden dropout draws from the default generator, identically on every TP rank and in the
    # same order as one process, so without sequence parallelism the masks match exactly.
    (("TP2-hidden-dropout", 2, 1, None, None), {"hidden_dropout": 0.2}),
    (("TP4-hidden-dropout-recompute", 4, 1, None, None), {"hidden_dropout": 0.2, **RECOMPUTE_UNIFORM}),
    # muP (issue 20): readout and attention multipliers, sharded hidden matrices, tied head on the last stage.
    (("TP2xPP2-SP-mup", 2, 2, None, None), {"sequence_parallel": True, "use_mup": True, "mup_base_hidden_size": 16}),
]

EIGHT_RANK_LAYOUTS = [
    (("PP4-VPP2", 1, 4, 2, None), {"num_layers": 8}),
    (("TP2xPP4", 2, 4, None, None), {}),
    (("TP2xPP2xDP2-SP", 2, 2, None, None), {"sequence_parallel": True}),
    (("TP4xVPP2x2", 4, 2, 2, None), {}),
]


def _layouts_worker(rank, world_size, layouts):
    batches = make_batches()
    return {layout[0]: check_layout(build_gpt, gpt_forward, tiny_config, overrides, layout, batches, SEQ, MBS)
            for layout, overrides in layouts}


def _assert_reports(reports, layouts):
    for layout, _ in layouts:
        label = layout[0]
        loss_err = max(r[label][0] for r in reports)
        grad_err = max(r[label][1] for r in reports)
        assert loss_err < 1e-5 and grad_err < 1e-5, (label, loss_err, grad_err)


def test_gpt_layouts_match_single_process():
    _assert_reports(run_ranks(_layouts_worker, 4, DEFAULT_LAYOUTS, timeout=300), DEFAULT_LAYOUTS)


def test_gpt_eight_rank_layouts_match_single_process():
    # 8 ranks on the CPU: TP x PP x DP together and 4 stages x 2 virtual stages.
    _assert_reports(run_ranks(_layouts_worker, 8, EIGHT_RANK_LAYOUTS, timeout=600), EIGHT_RANK_LAYOUTS)


def _forward_only_worker(rank, world_size, layouts):
    """forward_only runs every micro-batch through the pipeline, reports the same losses, computes no gradients."""
    from megatron.core import parallel_state
    from megatron.core.parallel_state import ProcessGroups
    from megatron.core.pipeline_parallel import get_forward_backward_func
    from tests.distributed.equivalence import build_chunks, load_from_reference, mean_loss

    batches = make_batches()
    torch.manual_seed(7)
    reference = build_gpt(tiny_config(), True, True, True, True, ProcessGroups())
    with torch.no_grad():
        want = [mean_loss(gpt_forward(reference, batch)).item() for batch in batches]
    worst = 0.0
    for _, tp, pp, vpp, _ in layouts:
        pg = parallel_state.initialize_model_parallel(tp, pp, vpp)
        try:
            chunks = build_chunks(lambda pre, post: build_gpt(tiny_config(), pre, post, True, True, pg), pg)
            load_from_reference(chunks, reference.state_dict(), pg)

            def forward_step(data_iterator, model):
                return gpt_forward(model, next(data_iterator)), lambda out: (mean_loss(out), {"loss": mean_loss(out)})

            iterators = [iter(batches) for _ in chunks]
            with torch.no_grad():
                store = get_forward_backward_func(pg)(
                    forward_step_func=forward_step, data_iterator=iterators if vpp else iterators[0],
                    model=chunks if vpp else chunks[0], num_microbatches=len(batches), seq_length=SEQ,
                    micro_batch_size=MBS, config=tiny_config(), pg=pg, forward_only=True)
            assert all(p.grad is None for chunk in chunks for p in chunk.parameters())
            if pg.is_pipeline_last_stage(ignore_virtual=True):
                got = [entry["loss"].item() for entry in store]
                worst = max([worst] + [abs(g - w) / w for g, w in zip(got, want)])
                assert len(got) == len(want)
        finally:
            parallel_state.destroy_model_parallel()
    return worst


def test_forward_only_pipelines_report_the_same_losses():
    layouts = [("PP2", 1, 2, None, None), ("VPP2x2", 1, 2, 2, None), ("PP4", 1, 4, None, None)]
    assert max(run_ranks(_forward_only_worker, 4, layouts)) < 1e-5
