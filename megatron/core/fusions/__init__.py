"""Fused operations. Each has a plain PyTorch reference (``ops.py``, used on the CPU and in tests);
``fused.py`` picks the Triton kernel on CUDA, or the (compiled) reference elsewhere (``select.py``)."""
from megatron.core.fusions.ops import (bias_dropout_add, bias_gelu, bias_swiglu, erf_gelu, gelu_tanh, masked_softmax,
                                       rms_norm)
from megatron.core.fusions.select import set_cpu_fusion_mode, triton_available

__all__ = ["bias_dropout_add", "bias_gelu", "bias_swiglu", "erf_gelu", "gelu_tanh", "masked_softmax", "rms_norm",
           "set_cpu_fusion_mode",
           "triton_available"]
