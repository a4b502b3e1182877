"""Plain PyTorch references of Megatron's fused ops (bias-GeLU, bias-dropout-add, masked softmax,
layer norm): what runs on the CPU, and what the Triton kernels are tested against."""
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


def bias_gelu_any(bias: Optional[torch.Tensor], x: torch.Tensor, approximate: str) -> torch.Tensor:
    """GeLU(x + bias), tanh-approximated (``approximate="tanh"``) or exact (``"none"``)."""
    x = x + bias if bias is not None else x
    return gelu_tanh(x) if approximate == "tanh" else F.gelu(x)


def layer_norm(x: torch.Tensor, weight: Optional[torch.Tensor], bias: Optional[torch.Tensor],
               eps: float) -> torch.Tensor:
    """Layer norm over the last dimension (PyTorch accumulates the statistics in fp32 for half inputs)."""
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps)


def bias_swiglu(bias: Optional[torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SiLU(gate) * up of (x + bias) split in halves along the last dimension (Megatron's fused bias-SwiGLU)."""
    if bias is not None:
        x = x + bias
    gate, up = torch.chunk(x, 2, dim=-1)
    return F.silu(gate) * up


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """weight * x / sqrt(mean(x^2) + eps) over the last dimension, statistics in fp32, output in x's dtype."""
    x32 = x.float()
    normed = x32 * torch.rsqrt(x32.pow(2).mean(dim=-1, keepdim=True) + eps)
    return (normed * weight.float()).to(x.dtype)


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
