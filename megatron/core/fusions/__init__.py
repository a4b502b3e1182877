"""Fused operations. Each has a plain PyTorch reference (used on the CPU and in tests); GPU kernels plug in behind the same functions."""
from megatron.core.fusions.ops import bias_dropout_add, bias_gelu, erf_gelu, gelu_tanh, masked_softmax

__all__ = ["bias_dropout_add", "bias_gelu", "erf_gelu", "gelu_tanh", "masked_softmax"]
