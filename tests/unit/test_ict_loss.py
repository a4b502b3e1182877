"""The ICT in-batch retrieval loss and its top-k accuracies (one process; the DP=N case is in
tests/distributed/test_ict_dp_loss.py)."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron.retrieval.ict_loss import ict_loss, in_batch_topk_accuracies, retrieval_scores


def unit_rows(n, d, seed=0):
    rows = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return rows / rows.norm(dim=1, keepdim=True)


def test_query_equal_to_context_retrieves_itself():
    # Distinct unit vectors: each one's inner product with itself (1) beats every other.
    embeddings = unit_rows(6, 16)
    loss, metrics = ict_loss(embeddings, embeddings.clone(), topk=(1, 5))
    assert metrics["top1_acc"].item() == 100.0 and metrics["top5_acc"].item() == 100.0
    scores = embeddings @ embeddings.t()
    assert loss.item() == pytest.approx(F.cross_entropy(scores, torch.arange(6)).item(), rel=1e-6)
    assert metrics["retrieval loss"].item() == pytest.approx(loss.item())
    assert not metrics["retrieval loss"].requires_grad


def test_accuracies_on_a_hand_made_score_matrix():
    scores = torch.tensor([[5.0, 1.0, 0.0, 0.0],    # positive first: rank 0
                           [3.0, 2.0, 1.0, 0.0],    # one context above: rank 1
                           [3.0, 3.0, 3.0, 0.0],    # tied with two others: rank 2 (ties count against the positive)
                           [4.0, 3.0, 2.0, 1.0]])   # last: rank 3
    accuracies = in_batch_topk_accuracies(scores, (1, 2, 3, 4))
    assert {k: v.item() for k, v in accuracies.items()} == {"top1_acc": 25.0, "top2_acc": 50.0,
                                                            "top3_acc": 75.0, "top4_acc": 100.0}


def test_k_above_the_batch_size_counts_every_query():
    query, context = unit_rows(3, 8, 1), unit_rows(3, 8, 2)
    _, metrics = ict_loss(query, context, topk=(1, 20, 100))
    assert metrics["top20_acc"].item() == 100.0 and metrics["top100_acc"].item() == 100.0
    assert set(metrics) == {"retrieval loss", "top1_acc", "top20_acc", "top100_acc"}


def test_score_scaling_divides_by_sqrt_hidden_and_gradients_match_cross_entropy():
    query = torch.randn(4, 8, generator=torch.Generator().manual_seed(3), requires_grad=True)
    context = torch.randn(4, 8, generator=torch.Generator().manual_seed(4), requires_grad=True)
    loss, _ = ict_loss(query, context, score_scaling_hidden_size=64)
    loss.backward()
    q_ref, c_ref = query.detach().clone().requires_grad_(), context.detach().clone().requires_grad_()
    want = F.cross_entropy(q_ref @ c_ref.t() / 8.0, torch.arange(4))
    want.backward()
    assert loss.item() == pytest.approx(want.item(), rel=1e-6)
    torch.testing.assert_close(query.grad, q_ref.grad)
    torch.testing.assert_close(context.grad, c_ref.grad)
    unscaled = retrieval_scores(query.detach(), context.detach())
    torch.testing.assert_close(retrieval_scores(query.detach(), context.detach(), 64), unscaled / math.sqrt(64))


def test_half_precision_embeddings_are_scored_in_float32():
    query, context = unit_rows(4, 8, 5).half(), unit_rows(4, 8, 6).half()
    loss, metrics = ict_loss(query, context)
    assert loss.dtype == torch.float32 and metrics["top1_acc"].dtype == torch.float32


def test_bad_shapes_and_k_are_refused():
    with pytest.raises(ValueError, match=r"must both be \[b, d\]"):
        ict_loss(torch.zeros(4, 8), torch.zeros(3, 8))
    with pytest.raises(ValueError, match="--retriever-report-topk-accuracies must be positive"):
        ict_loss(torch.zeros(4, 8), torch.zeros(4, 8), topk=(0, 1))
