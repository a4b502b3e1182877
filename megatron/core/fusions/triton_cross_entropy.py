"""Triton vocab-parallel cross entropy that never materialises fp32 logits.

The reference (``tensor_parallel/cross_entropy.py``) casts the [tokens, vocab / tp] logits to fp32
and keeps the fp32 softmax for backward. Here one kernel reads each row of logits once (in their own
dtype) and produces four fp32 numbers per row: the local maximum, the sum of exponentials relative
to it, the target logit when the target lies in this rank's slice, and the sum of logits (label
smoothing). The ranks combine those with three small all-reduces; backward reads the logits again
and writes the gradient ``softmax - (1 - s) * onehot - s / V`` directly in the logits' dtype.
"""
import torch
import torch.distributed as dist
import triton
import triton.language as tl

from megatron.core.tensor_parallel.mappings import all_reduce

_BLOCK = 1024


@triton.jit
def _ce_stats(x_ptr, t_ptr, max_ptr, sumexp_ptr, target_ptr, sum_ptr, n_cols, vocab_start,
              BLOCK: tl.constexpr):
    row = tl.program_id(0)
    base = x_ptr + row.to(tl.int64) * n_cols
    target = tl.load(t_ptr + row) - vocab_start
    run_max = -float("inf")
    run_sum = 0.0
    total = 0.0
    picked = 0.0
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(base + cols, mask=inside, other=-float("inf")).to(tl.float32)
        new_max = tl.maximum(run_max, tl.max(x, axis=0))
        # Online rescaling keeps a single pass over the row.
        run_sum = run_sum * tl.exp(run_max - new_max) + tl.sum(tl.exp(x - new_max), axis=0)
        run_max = new_max
        total += tl.sum(tl.where(inside, x, 0.0), axis=0)
        picked += tl.sum(tl.where(cols == target, x, 0.0), axis=0)
    tl.store(max_ptr + row, run_max)
    tl.store(sumexp_ptr + row, run_sum)
    tl.store(target_ptr + row, picked)
    tl.store(sum_ptr + row, total)


@triton.jit
def _ce_grad(x_ptr, t_ptr, max_ptr, sumexp_ptr, g_ptr, dx_ptr, n_cols, vocab_start, on_target, off_target,
             BLOCK: tl.constexpr):
    row = tl.program_id(0)
    offset = row.to(tl.int64) * n_cols
    target = tl.load(t_ptr + row) - vocab_start
    m = tl.load(max_ptr + row)
    inv_s = 1.0 / tl.load(sumexp_ptr + row)
    g = tl.load(g_ptr + row)
    for start in range(0, n_cols, BLOCK):
        cols = start + tl.arange(0, BLOCK)
        inside = cols < n_cols
        x = tl.load(x_ptr + offset + cols, mask=inside, other=0.0).to(tl.float32)
        p = tl.exp(x - m) * inv_s - off_target - tl.where(cols == target, on_target, 0.0)
        tl.store(dx_ptr + offset + cols, (p * g).to(dx_ptr.dtype.element_ty), mask=inside)


class _TritonVocabParallelCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, logits, target, label_smoothing, group, tp_rank):
        shape = target.shape
        n_cols = logits.shape[-1]
        x = logits.reshape(-1, n_cols).contiguous()
        t = target.reshape(-1).contiguous()
        rows = x.shape[0]
        stats = torch.empty(4, rows, dtype=torch.float32, device=x.device)
        vocab_start = tp_rank * n_cols
        _ce_stats[(rows,)](x, t, stats[0], stats[1], stats[2], stats[3], n_cols, vocab_start, BLOCK=_BLOCK)
        local_max, local_sumexp, predicted, logit_sum = stats
        global_max = local_max.clone()
        all_reduce(global_max, group, op=dist.ReduceOp.MAX)
        sums = torch.stack([local_sumexp * torch.exp(local_max - global_max), predicted, logit_sum])
        all_reduce(sums, group)
        sum_exp, predicted, logit_sum = sums
        log_z = global_max + sum_exp.log()
        loss = log_z - predicted
        vocab_size = n_cols * (dist.get_world_size(group) if group is not None else 1)
        smoothing = 0.0
        if label_smoothing > 0:
            if vocab_size < 2:
                raise ValueError(f"label smoothing needs a vocabulary of at least 2 tokens, got {vocab_size}")
            smoothing = label_smoothing * vocab_size / (vocab_size - 1)
            mean_log_prob = logit_sum / vocab_size - log_z
            loss = (1.0 - smoothing) * loss - smoothing * mean_log_prob
        ctx.save_for_backward(x, t, global_max, sum_exp)
        ctx.smoothing, ctx.vocab_size, ctx.vocab_start = smoothing, vocab_size, vocab_start
        ctx.logits_shape = logits.shape
        return loss.view(shape)

    @staticmethod
    def backward(ctx, grad_output):
        x, t, global_max, sum_exp = ctx.saved_tensors
        g = grad_output.reshape(-1).float().contiguous()
        dx = torch.empty_like(x)
        _ce_grad[(x.shape[0],)](x, t, global_max, sum_exp, g, dx, x.shape[1], ctx.vocab_start,
                                1.0 - ctx.smoothing, ctx.smoothing / ctx.vocab_size, BLOCK=_BLOCK)
        return dx.view(ctx.logits_shape), None, None, None, None


def vocab_parallel_cross_entropy(logits: torch.Tensor, target: torch.Tensor, label_smoothing: float, group,
                                 tp_rank: int) -> torch.Tensor:
    """Per-token loss (shape of ``target``) from this rank's slice ``[..., vocab / tp]`` of the logits."""
    return _TritonVocabParallelCrossEntropy.apply(logits, target, label_smoothing, group, tp_rank)
