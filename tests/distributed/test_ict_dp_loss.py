"""The ICT loss with negatives all-gathered over data-parallel ranks: DP=2 (two examples a rank)
gives the loss, the top-k accuracies and, after the data-parallel gradient average, the
gradients of DP=1 on all four examples."""
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.models import BiEncoderModel
from megatron.core.transformer import TransformerConfig
from megatron.retrieval.ict_loss import ict_loss
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, BATCH, HIDDEN = 64, 12, 4, 32


def tiny_model(pg):
    config = TransformerConfig(num_layers=2, hidden_size=HIDDEN, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0, init_seed=1234,
                               params_dtype=torch.float64)
    # Float64 (the loss keeps it): the comparison shows the algebra, not float32 rounding of tiny gradients.
    return BiEncoderModel(config, VOCAB, SEQ, projection_dim=8, pg=pg)


def examples():
    gen = torch.Generator().manual_seed(7)
    query = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    context = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    query_mask = torch.ones(BATCH, SEQ, dtype=torch.long)
    query_mask[:, SEQ // 2:] = 0
    return query, query_mask, context, torch.ones(BATCH, SEQ, dtype=torch.long)


def loss_and_grads(model, rows, group):
    query, query_mask, context, context_mask = (t[rows] for t in examples())
    zeros = torch.zeros_like(query)
    query_emb, context_emb = model(query, query_mask, zeros, context, context_mask, zeros)
    loss, metrics = ict_loss(query_emb, context_emb, group, score_scaling_hidden_size=HIDDEN, topk=(1, 2, 5))
    model.zero_grad()
    loss.backward()
    grads = {name: p.grad.detach().clone() for name, p in model.named_parameters()}
    return loss.detach(), {k: v.item() for k, v in metrics.items()}, grads


def _worker(rank, world_size):
    pg = parallel_state.initialize_model_parallel(1, 1)  # every rank data-parallel
    # The whole batch in one process (no group) ...
    want_loss, want_metrics, want_grads = loss_and_grads(tiny_model(pg), slice(0, BATCH), None)
    # ... and this rank's half, with the data-parallel average the DDP wrapper applies.
    per_rank = BATCH // world_size
    loss, metrics, grads = loss_and_grads(tiny_model(pg), slice(rank * per_rank, (rank + 1) * per_rank), pg.dp)
    worst = 0.0
    # Some gradients are zero in exact arithmetic (a bias shifting every context alike leaves each
    # softmax row unchanged) and only rounding noise here: measure those against the largest one.
    floor = 1e-3 * max(g.abs().max().item() for g in want_grads.values())
    for name, grad in grads.items():
        dist.all_reduce(grad, group=pg.dp)
        grad /= world_size
        scale = max(want_grads[name].abs().max().item(), floor)
        worst = max(worst, (grad - want_grads[name]).abs().max().item() / scale)
    parallel_state.destroy_model_parallel()
    return {"loss": (loss.item(), want_loss.item()), "metrics": (metrics, want_metrics), "grad": worst,
            "grad_nonzero": max(g.abs().max().item() for g in want_grads.values())}


def test_dp2_equals_dp1_on_the_whole_batch():
    for report in run_ranks(_worker, 2):
        got, want = report["loss"]
        assert abs(got - want) <= 1e-12 * abs(want), report
        assert report["metrics"][0] == report["metrics"][1], report
        assert report["grad_nonzero"] > 0
        assert report["grad"] < 1e-9, report
