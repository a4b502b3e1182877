"""The fused ops the model calls: each picks its Triton kernel, compiled reference or reference
(``select.py``) from the tensor's device and whether its fusion is enabled
(``TransformerConfig.*_fusion`` / ``persist_layer_norm``, i.e. Megatron's ``--no-*-fusion`` flags).
"""
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.fusions import ops
from megatron.core.fusions.select import reference_or_compiled, use_triton


def bias_gelu(bias: Optional[torch.Tensor], x: torch.Tensor, approximate: str = "tanh",
              enabled: bool = True) -> torch.Tensor:
    """GeLU(x + bias); ``approximate`` ``tanh`` (Megatron's fused bias-GeLU, GPT-2's gelu_new) or
    ``none`` (the exact erf form)."""
    if approximate not in ("tanh", "none"):
        raise ValueError(f"approximate must be 'tanh' or 'none', got {approximate!r}")
    if use_triton(x, enabled):
        from megatron.core.fusions import triton_elementwise

        return triton_elementwise.bias_gelu(bias, x, approximate)
    return reference_or_compiled(ops.bias_gelu_any, enabled)(bias, x, approximate)


def bias_dropout_add(x: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor, prob: float,
                     training: bool, enabled: bool = True) -> torch.Tensor:
    """residual + dropout(x + bias). The Triton kernel draws its own dropout mask (same
    distribution, another random stream than ``F.dropout``)."""
    if use_triton(x, enabled) and residual.shape == x.shape:
        from megatron.core.fusions import triton_elementwise

        return triton_elementwise.bias_dropout_add(x, bias, residual, prob, training)
    return reference_or_compiled(ops.bias_dropout_add, enabled)(x, bias, residual, prob, training)


def masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor], scale: float, softmax_in_fp32: bool,
                   causal: bool = False, enabled: bool = True) -> torch.Tensor:
    """softmax(scale * scores) with masked positions (True) at -10000 first. ``causal``: ``mask`` is
    exactly the upper-triangular causal mask, which the causal kernel builds from indices."""
    if use_triton(scores, enabled) and scores.dim() == 4 and scores.shape[-1] <= 16384:
        from megatron.core.fusions import triton_softmax

        if causal:
            return triton_softmax.scaled_upper_triang_masked_softmax(scores, scale)
        return triton_softmax.scaled_masked_softmax(scores, mask, scale)
    return reference_or_compiled(ops.masked_softmax, enabled)(scores, mask, scale, softmax_in_fp32)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor], eps: float,
               enabled: bool = True) -> torch.Tensor:
    """Layer norm over the last dimension with fp32 statistics."""
    if use_triton(x, enabled) and x.shape[-1] <= 16384:
        from megatron.core.fusions import triton_layer_norm

        return triton_layer_norm.layer_norm(x, weight, bias, eps)
    return reference_or_compiled(ops.layer_norm, enabled)(x, weight, bias, eps)


class FusedLayerNorm(nn.LayerNorm):
    """``nn.LayerNorm`` (same parameters and state-dict names) whose forward is the fused layer norm
    when ``enabled`` (Megatron's ``--no-persist-layer-norm`` turns it off)."""

    def __init__(self, normalized_shape, eps: float = 1e-5, enabled: bool = True, **kwargs):
        super().__init__(normalized_shape, eps=eps, **kwargs)
        self.fused = enabled

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if len(self.normalized_shape) != 1:
            return F.layer_norm(x, self.normalized_shape, self.weight, self.bias, self.eps)
        return layer_norm(x, self.weight, self.bias, self.eps, self.fused)
