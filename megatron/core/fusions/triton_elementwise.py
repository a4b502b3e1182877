"""Triton kernels for the element-wise fused ops: bias + GeLU (tanh and exact) and
bias + dropout + residual add. Each is one read of every input and one write of the output, forward
and backward; the PyTorch references in ``ops.py`` define what they compute.

Only imported when ``triton`` is installed (``select.use_triton``).
"""
from typing import Optional

import torch
import triton
import triton.language as tl

_BLOCK = 1024


@triton.jit
def _tanh(u):
    # tanh through exp, written to stay finite for large |u| (exp(-2|u|) <= 1).
    e = tl.exp(-2.0 * tl.abs(u))
    t = (1.0 - e) / (1.0 + e)
    return tl.where(u >= 0, t, -t)


@triton.jit
def _bias_gelu_fwd(x_ptr, b_ptr, y_ptr, n, n_cols, HAS_BIAS: tl.constexpr, EXACT: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(b_ptr + offs % n_cols, mask=m, other=0.0).to(tl.float32)
    if EXACT:
        y = 0.5 * x * (1.0 + tl.math.erf(x * 0.7071067811865476))
    else:
        y = 0.5 * x * (1.0 + _tanh(0.7978845608028654 * (x + 0.044715 * x * x * x)))
    tl.store(y_ptr + offs, y.to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _bias_gelu_bwd(g_ptr, x_ptr, b_ptr, dx_ptr, n, n_cols, HAS_BIAS: tl.constexpr, EXACT: tl.constexpr,
                   BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(b_ptr + offs % n_cols, mask=m, other=0.0).to(tl.float32)
    if EXACT:
        cdf = 0.5 * (1.0 + tl.math.erf(x * 0.7071067811865476))
        pdf = 0.3989422804014327 * tl.exp(-0.5 * x * x)
        d = cdf + x * pdf
    else:
        inner = 0.7978845608028654 * (x + 0.044715 * x * x * x)
        t = _tanh(inner)
        d = 0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * 0.7978845608028654 * (1.0 + 3.0 * 0.044715 * x * x)
    tl.store(dx_ptr + offs, (g * d).to(dx_ptr.dtype.element_ty), mask=m)


class _BiasGeLU(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, exact):
        x = x.contiguous()
        n, n_cols = x.numel(), x.shape[-1]
        y = torch.empty_like(x)
        b = bias if bias is not None else x
        grid = (triton.cdiv(n, _BLOCK),)
        _bias_gelu_fwd[grid](x, b, y, n, n_cols, HAS_BIAS=bias is not None, EXACT=exact, BLOCK=_BLOCK)
        ctx.save_for_backward(x, bias)
        ctx.exact = exact
        return y

    @staticmethod
    def backward(ctx, grad):
        x, bias = ctx.saved_tensors
        grad = grad.contiguous()
        dx = torch.empty_like(x)
        n, n_cols = x.numel(), x.shape[-1]
        b = bias if bias is not None else x
        _bias_gelu_bwd[(triton.cdiv(n, _BLOCK),)](grad, x, b, dx, n, n_cols, HAS_BIAS=bias is not None,
                                                  EXACT=ctx.exact, BLOCK=_BLOCK)
        dbias = dx.reshape(-1, n_cols).sum(0, dtype=torch.float32).to(bias.dtype) if bias is not None else None
        return dx, dbias, None


def bias_gelu(bias: Optional[torch.Tensor], x: torch.Tensor, approximate: str = "tanh") -> torch.Tensor:
    """GeLU(x + bias) over the last dimension; ``approximate`` is ``tanh`` or ``none`` (erf)."""
    return _BiasGeLU.apply(x, bias, approximate == "none")


@triton.jit
def _bias_dropout_add_fwd(x_ptr, b_ptr, r_ptr, y_ptr, seed_ptr, n, n_cols, p, scale,
                          HAS_BIAS: tl.constexpr, DROP: tl.constexpr, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        x += tl.load(b_ptr + offs % n_cols, mask=m, other=0.0).to(tl.float32)
    if DROP:
        keep = tl.rand(tl.load(seed_ptr), offs) >= p
        x = tl.where(keep, x * scale, 0.0)
    r = tl.load(r_ptr + offs, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + offs, (r + x).to(y_ptr.dtype.element_ty), mask=m)


@triton.jit
def _dropout_bwd(g_ptr, dx_ptr, seed_ptr, n, p, scale, BLOCK: tl.constexpr):
    # The keep mask is regenerated from the seed and the element offset, never stored.
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    m = offs < n
    g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
    keep = tl.rand(tl.load(seed_ptr), offs) >= p
    tl.store(dx_ptr + offs, tl.where(keep, g * scale, 0.0).to(dx_ptr.dtype.element_ty), mask=m)


class _BiasDropoutAdd(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, bias, residual, prob, training):
        x, residual = x.contiguous(), residual.contiguous()
        n, n_cols = x.numel(), x.shape[-1]
        drop = training and prob > 0.0
        # The seed comes from the device's torch generator (so the tracked, per-TP-rank RNG states
        # govern it) and stays on the device: no host synchronisation.
        seed = torch.randint(0, 2**31 - 1, (1,), device=x.device, dtype=torch.int64)
        y = torch.empty(x.shape, dtype=torch.result_type(x, residual), device=x.device)
        scale = 1.0 / (1.0 - prob) if drop else 1.0
        _bias_dropout_add_fwd[(triton.cdiv(n, _BLOCK),)](
            x, bias if bias is not None else x, residual, y, seed, n, n_cols, float(prob), scale,
            HAS_BIAS=bias is not None, DROP=drop, BLOCK=_BLOCK)
        ctx.save_for_backward(seed)
        ctx.drop, ctx.prob, ctx.scale = drop, float(prob), scale
        ctx.has_bias, ctx.x_dtype = bias is not None, x.dtype
        ctx.bias_dtype = bias.dtype if bias is not None else None
        ctx.residual_dtype = residual.dtype
        return y

    @staticmethod
    def backward(ctx, grad):
        (seed,) = ctx.saved_tensors
        grad = grad.contiguous()
        if ctx.drop:
            dx = torch.empty(grad.shape, dtype=ctx.x_dtype, device=grad.device)
            _dropout_bwd[(triton.cdiv(grad.numel(), _BLOCK),)](grad, dx, seed, grad.numel(), ctx.prob, ctx.scale,
                                                               BLOCK=_BLOCK)
        else:
            dx = grad.to(ctx.x_dtype)
        dbias = None
        if ctx.has_bias:
            dbias = dx.reshape(-1, dx.shape[-1]).sum(0, dtype=torch.float32).to(ctx.bias_dtype)
        return dx, dbias, grad.to(ctx.residual_dtype), None, None


def bias_dropout_add(x: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor, prob: float,
                     training: bool) -> torch.Tensor:
    """residual + dropout(x + bias) in one pass; the dropout mask is rebuilt in backward from a seed."""
    return _BiasDropoutAdd.apply(x, bias, residual, prob, training)
