"""Triton scaled masked softmax and its causal (upper-triangular) variant, forward and backward.

``softmax(scale * scores)`` over the last dimension with masked positions set to -10000 first (as
``ops.masked_softmax``; a fully masked row becomes uniform, not NaN), computed in fp32 and stored in
the input dtype. The mask is read through its strides, so a mask broadcast over batch or heads is
never expanded; the causal variant builds it from indices (query i sees keys up to
``sk - sq + i``). Backward needs only the saved probabilities.
"""
from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _softmax_fwd(x_ptr, mask_ptr, y_ptr, n_heads, sq, sk, scale,
                 m_sb, m_sh, m_sq, m_sk,
                 MODE: tl.constexpr, BLOCK: tl.constexpr):
    # MODE 0: no mask, 1: explicit mask, 2: causal.
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < sk
    x = tl.load(x_ptr + row * sk + cols, mask=inside, other=0.0).to(tl.float32) * scale
    q = row % sq
    if MODE == 1:
        b = row // (n_heads * sq)
        h = (row // sq) % n_heads
        masked = tl.load(mask_ptr + b * m_sb + h * m_sh + q * m_sq + cols * m_sk, mask=inside, other=0)
        x = tl.where(masked != 0, -10000.0, x)
    if MODE == 2:
        x = tl.where(cols > q + (sk - sq), -10000.0, x)
    x = tl.where(inside, x, float("-inf"))
    e = tl.exp(x - tl.max(x, axis=0))
    y = e / tl.sum(e, axis=0)
    tl.store(y_ptr + row * sk + cols, y.to(y_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _softmax_bwd(g_ptr, y_ptr, dx_ptr, sk, scale, BLOCK: tl.constexpr):
    # Masked positions were replaced by a constant, so their gradient is zero; their probability is
    # (numerically) zero too, which the formula below already gives -- except in a fully masked
    # row, where the reference's gradient also flows through nothing (masked_fill cuts it).
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < sk
    g = tl.load(g_ptr + row * sk + cols, mask=inside, other=0.0).to(tl.float32)
    y = tl.load(y_ptr + row * sk + cols, mask=inside, other=0.0).to(tl.float32)
    dx = y * (g - tl.sum(g * y, axis=0)) * scale
    tl.store(dx_ptr + row * sk + cols, dx.to(dx_ptr.dtype.element_ty), mask=inside)


@triton.jit
def _mask_grad(dx_ptr, mask_ptr, n_heads, sq, sk, m_sb, m_sh, m_sq, m_sk, MODE: tl.constexpr,
               BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    inside = cols < sk
    q = row % sq
    if MODE == 1:
        b = row // (n_heads * sq)
        h = (row // sq) % n_heads
        masked = tl.load(mask_ptr + b * m_sb + h * m_sh + q * m_sq + cols * m_sk, mask=inside, other=0) != 0
    else:
        masked = cols > q + (sk - sq)
    tl.store(dx_ptr + row * sk + cols, tl.zeros((BLOCK,), dtype=dx_ptr.dtype.element_ty), mask=inside & masked)


def _num_warps(block: int) -> int:
    return min(max(block // 256, 1), 16)


class _ScaledMaskedSoftmax(torch.autograd.Function):
    @staticmethod
    def forward(ctx, scores, mask, scale, causal):
        b, n_heads, sq, sk = scores.shape
        x = scores.contiguous()
        y = torch.empty_like(x)
        mode, mask_u8, strides = 0, x, (0, 0, 0, 0)
        if causal:
            mode = 2
        elif mask is not None:
            mode = 1
            mask_u8 = mask.expand(b, n_heads, sq, sk).view(torch.uint8)
            strides = mask_u8.stride()
        block = triton.next_power_of_2(sk)
        _softmax_fwd[(b * n_heads * sq,)](x, mask_u8, y, n_heads, sq, sk, float(scale), *strides,
                                         MODE=mode, BLOCK=block, num_warps=_num_warps(block))
        ctx.save_for_backward(y, mask_u8 if mode == 1 else None)
        ctx.scale, ctx.mode, ctx.strides = float(scale), mode, strides
        return y

    @staticmethod
    def backward(ctx, grad):
        y, mask_u8 = ctx.saved_tensors
        b, n_heads, sq, sk = y.shape
        grad = grad.contiguous()
        dx = torch.empty_like(y)
        block = triton.next_power_of_2(sk)
        rows = b * n_heads * sq
        _softmax_bwd[(rows,)](grad, y, dx, sk, ctx.scale, BLOCK=block, num_warps=_num_warps(block))
        if ctx.mode != 0:
            _mask_grad[(rows,)](dx, mask_u8 if mask_u8 is not None else dx, n_heads, sq, sk, *ctx.strides,
                                MODE=ctx.mode, BLOCK=block)
        return dx, None, None, None


def scaled_masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor], scale: float) -> torch.Tensor:
    """``scores`` [b, np, sq, sk]; ``mask`` broadcastable to it, True = masked."""
    return _ScaledMaskedSoftmax.apply(scores, mask, scale, False)


def scaled_upper_triang_masked_softmax(scores: torch.Tensor, scale: float) -> torch.Tensor:
    """The causal variant: query i (of the last sq of sk positions) attends to keys 0 .. sk - sq + i."""
    return _ScaledMaskedSoftmax.apply(scores, None, scale, True)
