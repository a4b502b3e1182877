"""Plain PyTorch references of Megatron's fused ops (bias-GeLU, bias-dropout-add, masked softmax)."""
import math
from typing import Optional

import torch
import torch.nn.functional as F

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """The tanh approximation of GeLU (GPT-2's ``gelu_new``, Megatron's ``openai_gelu`` and fused bias-GeLU)."""
    return 0.5 * x * (1.0 + torch.tanh(_SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)))


def erf_gelu(x: torch.Tensor) -> torch.Tensor:
    return F.gelu(x)


def bias_gelu(bias: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """GeLU(x + bias) with the tanh approximation, the function Megatron's fused kernel computes."""
    return gelu_tanh(x + bias if bias is not None else x)


def bias_dropout_add(x: torch.Tensor, bias: Optional[torch.Tensor], residual: torch.Tensor,
                     prob: float, training: bool) -> torch.Tensor:
    """residual + dropout(x + bias): the tail of every attention and MLP sub-layer."""
    if bias is not None:
        x = x + bias
    return residual + F.dropout(x, p=prob, training=training)


def masked_softmax(scores: torch.Tensor, mask: Optional[torch.Tensor], scale: float,
                   softmax_in_fp32: bool) -> torch.Tensor:
    """softmax(scale * scores) with masked positions (mask True) set to -10000 first, as Megatron does.

    A fully masked row therefore becomes uniform rather than NaN.
    """
    dtype = scores.dtype
    if softmax_in_fp32:
        scores = scores.float()
    if scale != 1.0:
        scores = scores * scale
    if mask is not None:
        scores = scores.masked_fill(mask, -10000.0)
    probs = torch.softmax(scores, dim=-1)
    return probs.to(dtype)
