"""Cross entropy over logits split along the vocabulary, without ever gathering them.

Each rank holds ``[..., vocab / tp]`` logits. Three all-reduces over the tensor-parallel group
(max for stability, the target logit, the sum of exponentials) give the exact loss; the
gradient is local (softmax minus the one-hot target restricted to the rank's vocabulary range).

Label smoothing follows Megatron-LM: weight ``1 - label_smoothing`` on the target and
``label_smoothing / (vocab - 1)`` on every other token. That equals
``F.cross_entropy(..., label_smoothing=label_smoothing * vocab / (vocab - 1))``.
"""
from typing import Optional

import torch
import torch.distributed as dist

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel.mappings import all_reduce


class _VocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, vocab_parallel_logits, target, label_smoothing, group, tp_rank):
        target = target.contiguous()
        logits = vocab_parallel_logits.float()
        logits_max = logits.max(dim=-1)[0]
        all_reduce(logits_max, group, op=dist.ReduceOp.MAX)
        logits = logits - logits_max.unsqueeze(-1)

        partition_vocab = logits.shape[-1]
        vocab_start = tp_rank * partition_vocab
        vocab_end = vocab_start + partition_vocab
        outside = (target < vocab_start) | (target >= vocab_end)
        local_target = (target - vocab_start).masked_fill(outside, 0)

        logits_2d = logits.view(-1, partition_vocab)
        flat_target = local_target.view(-1)
        rows = torch.arange(logits_2d.shape[0], device=logits_2d.device)
        predicted = logits_2d[rows, flat_target].clone().view_as(target)
        predicted = predicted.masked_fill(outside, 0.0)
        all_reduce(predicted, group)

        exp_logits = logits.exp()
        sum_exp = exp_logits.sum(dim=-1)
        all_reduce(sum_exp, group)
        loss = sum_exp.log() - predicted

        vocab_size = partition_vocab * (dist.get_world_size(group) if group is not None else 1)
        smoothing = 0.0
        if label_smoothing > 0:
            if vocab_size < 2:
                raise ValueError(f"label smoothing needs a vocabulary of at least 2 tokens, got {vocab_size}")
            smoothing = label_smoothing * vocab_size / (vocab_size - 1)
            log_probs = logits - sum_exp.log().unsqueeze(-1)
            sum_log_probs = log_probs.sum(dim=-1)
            all_reduce(sum_log_probs, group)
            loss = (1.0 - smoothing) * loss - smoothing * sum_log_probs / vocab_size

        softmax = exp_logits / sum_exp.unsqueeze(-1)
        ctx.smoothing = smoothing
        ctx.vocab_size = vocab_size
        ctx.input_dtype = vocab_parallel_logits.dtype
        ctx.save_for_backward(softmax, outside, flat_target)
        return loss

    @staticmethod
    def backward(ctx, grad_output):
        softmax, outside, flat_target = ctx.saved_tensors
        grad = softmax.clone()
        partition_vocab = grad.shape[-1]
        grad_2d = grad.view(-1, partition_vocab)
        rows = torch.arange(grad_2d.shape[0], device=grad_2d.device)
        inside = 1.0 - outside.reshape(-1).float()
        grad_2d[rows, flat_target] -= (1.0 - ctx.smoothing) * inside
        if ctx.smoothing > 0:
            grad_2d -= ctx.smoothing / ctx.vocab_size
        grad = grad * grad_output.unsqueeze(-1)
        return grad.to(ctx.input_dtype), None, None, None, None


def vocab_parallel_cross_entropy(vocab_parallel_logits: torch.Tensor, target: torch.Tensor,
                                 label_smoothing: float = 0.0, pg: Optional[ProcessGroups] = None) -> torch.Tensor:
    """Per-token loss (shape of ``target``) from this rank's vocabulary slice of the logits."""
    pg = pg if pg is not None else get_process_groups()
    if not 0.0 <= label_smoothing < 1.0:
        raise ValueError(f"label_smoothing must lie in [0, 1), got {label_smoothing}")
    from megatron.core.fusions.select import use_triton

    if use_triton(vocab_parallel_logits, enabled=True):
        # Same function without fp32 copies of the logits (megatron/core/fusions/triton_cross_entropy.py).
        from megatron.core.fusions.triton_cross_entropy import vocab_parallel_cross_entropy as triton_cross_entropy

        return triton_cross_entropy(vocab_parallel_logits, target, label_smoothing, pg.tp, pg.tp_rank)
    return _VocabParallelCrossEntropy.apply(vocab_parallel_logits, target, label_smoothing, pg.tp, pg.tp_rank)
