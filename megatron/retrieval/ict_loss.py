"""The ICT retrieval loss: in-batch softmax over query-context scores, negatives from every
data-parallel rank.

Each rank embeds its own micro-batch of queries and contexts, ``[b, d]``. The embeddings are
all-gathered over the data-parallel group (rank order), so every rank scores the whole
``[B, B]`` matrix of the global micro-batch (``B = b x data-parallel size``) and computes the
same loss: the mean over the B queries of ``-log softmax(scores)[i, i]``.

Gradients and data parallelism. Let L be that global loss. The backward of the all-gather is
its adjoint, a reduce-scatter: the incoming gradients ``dL/dQ_all`` (equal on every rank) are
summed over ranks and this rank keeps its slice, i.e. ``W x dL/dq_r`` with W ranks. The
parameter gradient on rank r is then W times the part of ``dL/dtheta`` that flows through
rank r's examples; the data-parallel all-reduce averages (divides by W) and sums over ranks,
which gives exactly ``dL/dtheta``: DP=W equals DP=1 with the whole batch, and the loss
reported is L itself, unscaled. (Megatron-LM gets the same gradients by slicing without the sum
and multiplying the loss by W before backward.)

The embeddings are replicated over tensor-parallel ranks (the towers end in a replicated
[CLS] state and projection), so the gather runs over data-parallel ranks only.
"""
import math
from typing import Dict, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F

from megatron.core.tensor_parallel import gather_from_sequence_parallel_region


def gather_over_data_parallel(embeddings: torch.Tensor, dp_group) -> torch.Tensor:
    """``[b, d]`` on each rank -> ``[b x W, d]`` in rank order; backward reduce-scatters (see above).

    The sequence-parallel gather of the core is exactly this pair (all-gather of dimension 0 /
    reduce-scatter of the gradient); here its group is the data-parallel one.
    """
    return gather_from_sequence_parallel_region(embeddings, dp_group, tensor_parallel_output_grad=True)


def retrieval_scores(query: torch.Tensor, context: torch.Tensor,
                     score_scaling_hidden_size: Optional[int] = None) -> torch.Tensor:
    """``[B, B]`` inner products ``Q C^T`` (half-precision embeddings scored in float32), divided by
    sqrt(hidden size) when given (``--retriever-score-scaling``: the hidden size, not the projection
    size, as in Megatron)."""
    if query.dtype in (torch.float16, torch.bfloat16):
        query, context = query.float(), context.float()
    scores = torch.matmul(query, context.t())
    if score_scaling_hidden_size:
        scores = scores / math.sqrt(score_scaling_hidden_size)
    return scores


def in_batch_topk_accuracies(scores: torch.Tensor, topk: Sequence[int]) -> Dict[str, torch.Tensor]:
    """``top{k}_acc``: percent of queries whose own context (the diagonal) ranks within the top k
    of its row. The rank counts the other contexts scored at least as high, so a tie counts
    against the positive (Megatron's sort breaks ties arbitrarily): a collapsed model that scores
    every context alike reports no hits rather than all. A k above the batch size counts every
    query: 100%."""
    positive = scores.diagonal().unsqueeze(1)  # [B, 1]
    rank = (scores >= positive).sum(dim=1) - 1  # [B]: 0 = strictly the best-scored context
    return {f"top{k}_acc": (rank < k).float().mean() * 100.0 for k in topk}


def ict_loss(query: torch.Tensor, context: torch.Tensor, dp_group=None,
             score_scaling_hidden_size: Optional[int] = None,
             topk: Sequence[int] = (1, 5)) -> Tuple[torch.Tensor, Dict[str, torch.Tensor]]:
    """(loss, metrics) for this rank's ``[b, d]`` query and context embeddings.

    ``metrics`` holds the detached ``retrieval loss`` and one ``top{k}_acc`` per k, each over the
    global micro-batch, so every data-parallel rank reports the same values.
    """
    if query.shape != context.shape or query.dim() != 2:
        raise ValueError(f"query and context embeddings must both be [b, d]; got {tuple(query.shape)} "
                         f"and {tuple(context.shape)}")
    bad = [k for k in topk if k < 1]
    if bad:
        raise ValueError(f"--retriever-report-topk-accuracies must be positive, got {bad}")
    all_query = gather_over_data_parallel(query, dp_group)  # [B, d]
    all_context = gather_over_data_parallel(context, dp_group)  # [B, d]
    scores = retrieval_scores(all_query, all_context, score_scaling_hidden_size)  # [B, B]
    labels = torch.arange(scores.shape[0], device=scores.device)
    loss = F.nll_loss(F.log_softmax(scores, dim=1), labels)
    metrics = {"retrieval loss": loss.detach()}
    with torch.no_grad():
        metrics.update(in_batch_topk_accuracies(scores, topk))
    return loss, metrics
