"""Triton layer norm over the last dimension, forward and backward, statistics in fp32.

Forward: one program per row keeps the whole row in registers (hidden sizes up to 64 K), writes the
output in the input dtype and saves only the per-row mean and 1/std (fp32). Backward: the input
gradient row by row from the saved statistics; the weight and bias gradients by a second kernel
that walks down column blocks, summing in fp32, so no [rows, hidden] fp32 partials are stored.
"""
from typing import Optional

import torch
import triton
import triton.language as tl


@triton.jit
def _ln_fwd(x_ptr, w_ptr, b_ptr, y_ptr, mean_ptr, rstd_ptr, n_cols, eps,
            HAS_WEIGHT: tl.constexpr, HAS_BIAS: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.sum(x, axis=0) / n_cols
    xc = tl.where(m, x - mean, 0.0)
    var = tl.sum(xc * xc, axis=0) / n_cols
    rstd = 1.0 / tl.sqrt(var + eps)
    y = xc * rstd
    if HAS_WEIGHT:
        y = y * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    if HAS_BIAS:
        y = y + tl.load(b_ptr + cols, mask=m, other=0.0).to(tl.float32)
    tl.store(y_ptr + row * n_cols + cols, y.to(y_ptr.dtype.element_ty), mask=m)
    tl.store(mean_ptr + row, mean)
    tl.store(rstd_ptr + row, rstd)


@triton.jit
def _ln_bwd_input(g_ptr, x_ptr, w_ptr, mean_ptr, rstd_ptr, dx_ptr, n_cols,
                  HAS_WEIGHT: tl.constexpr, BLOCK: tl.constexpr):
    row = tl.program_id(0)
    cols = tl.arange(0, BLOCK)
    m = cols < n_cols
    x = tl.load(x_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    g = tl.load(g_ptr + row * n_cols + cols, mask=m, other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + row)
    rstd = tl.load(rstd_ptr + row)
    xhat = tl.where(m, (x - mean) * rstd, 0.0)
    if HAS_WEIGHT:
        g = g * tl.load(w_ptr + cols, mask=m, other=0.0).to(tl.float32)
    # dx = rstd * (g - mean(g) - xhat * mean(g * xhat))
    c1 = tl.sum(g * xhat, axis=0) / n_cols
    c2 = tl.sum(g, axis=0) / n_cols
    dx = rstd * (g - c2 - xhat * c1)
    tl.store(dx_ptr + row * n_cols + cols, dx.to(dx_ptr.dtype.element_ty), mask=m)


@triton.jit
def _ln_bwd_params(g_ptr, x_ptr, mean_ptr, rstd_ptr, dw_ptr, db_ptr, n_rows, n_cols,
                   BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    cols = tl.program_id(0) * BLOCK_C + tl.arange(0, BLOCK_C)
    cm = cols < n_cols
    dw = tl.zeros((BLOCK_C,), dtype=tl.float32)
    db = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for start in range(0, n_rows, BLOCK_R):
        rows = start + tl.arange(0, BLOCK_R)
        rm = rows < n_rows
        m = rm[:, None] & cm[None, :]
        offs = rows[:, None] * n_cols + cols[None, :]
        x = tl.load(x_ptr + offs, mask=m, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=m, other=0.0).to(tl.float32)
        mean = tl.load(mean_ptr + rows, mask=rm, other=0.0)
        rstd = tl.load(rstd_ptr + rows, mask=rm, other=0.0)
        xhat = tl.where(m, (x - mean[:, None]) * rstd[:, None], 0.0)
        dw += tl.sum(g * xhat, axis=0)
        db += tl.sum(g, axis=0)
    tl.store(dw_ptr + cols, dw, mask=cm)
    tl.store(db_ptr + cols, db, mask=cm)


def _num_warps(block: int) -> int:
    # One row per program: more warps for wider rows keeps the row in registers without spilling.
    return min(max(block // 256, 1), 16)


class _LayerNorm(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, weight, bias, eps):
        shape = x.shape
        n_cols = shape[-1]
        x2 = x.reshape(-1, n_cols).contiguous()
        n_rows = x2.shape[0]
        y = torch.empty_like(x2)
        mean = torch.empty(n_rows, dtype=torch.float32, device=x.device)
        rstd = torch.empty_like(mean)
        block = triton.next_power_of_2(n_cols)
        _ln_fwd[(n_rows,)](x2, weight if weight is not None else x2, bias if bias is not None else x2, y, mean,
                           rstd, n_cols, eps, HAS_WEIGHT=weight is not None, HAS_BIAS=bias is not None,
                           BLOCK=block, num_warps=_num_warps(block))
        ctx.save_for_backward(x2, weight, bias, mean, rstd)
        ctx.shape = shape
        return y.reshape(shape)

    @staticmethod
    def backward(ctx, grad):
        x2, weight, bias, mean, rstd = ctx.saved_tensors
        n_rows, n_cols = x2.shape
        g2 = grad.reshape(-1, n_cols).contiguous()
        dx = torch.empty_like(x2)
        block = triton.next_power_of_2(n_cols)
        _ln_bwd_input[(n_rows,)](g2, x2, weight if weight is not None else x2, mean, rstd, dx, n_cols,
                                 HAS_WEIGHT=weight is not None, BLOCK=block, num_warps=_num_warps(block))
        dweight = dbias = None
        if weight is not None or bias is not None:
            dw = torch.empty(n_cols, dtype=torch.float32, device=x2.device)
            db = torch.empty_like(dw)
            block_c = min(64, block)
            _ln_bwd_params[(triton.cdiv(n_cols, block_c),)](g2, x2, mean, rstd, dw, db, n_rows, n_cols,
                                                           BLOCK_R=32, BLOCK_C=block_c)
            dweight = dw.to(weight.dtype) if weight is not None else None
            dbias = db.to(bias.dtype) if bias is not None else None
        return dx.reshape(ctx.shape), dweight, dbias, None


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float) -> torch.Tensor:
    return _LayerNorm.apply(x, weight, bias, eps)
