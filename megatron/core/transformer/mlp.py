"""The tensor-parallel MLP: column-parallel h -> ffn, GeLU (or SwiGLU), row-parallel ffn -> h.

With SwiGLU the first projection is ``2 x ffn`` wide: the full weight holds the gate rows, then the
up rows, and each half is split over TP ranks (partition stride 2), so a rank's local output is
``[gate_r | up_r]`` and the gating needs no communication.
"""
from typing import Optional

import torch
from torch import nn

from megatron.core.fusions import bias_swiglu, erf_gelu, fused, gelu_tanh
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear
from megatron.core.transformer.config import TransformerConfig


class ParallelMLP(nn.Module):
    def __init__(self, config: TransformerConfig, pg: Optional[ProcessGroups] = None):
        super().__init__()
        pg = pg if pg is not None else get_process_groups()
        config.validate_layout(pg.tensor_model_parallel_size)
        self.config = config
        # The bias is returned rather than added so it can be folded into the activation.
        gated = 2 if config.swiglu else 1
        self.dense_h_to_4h = ColumnParallelLinear(
            config.hidden_size, gated * config.ffn_hidden_size, config=config, init_method=config.init_method,
            bias=config.add_bias_linear, skip_bias_add=True, stride=gated, pg=pg,
            mup_base_fan_in=config.mup_base_fan_in("hidden"))
        self.dense_4h_to_h = RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, config=config, init_method=config.output_layer_init_method,
            bias=config.add_bias_linear, input_is_parallel=True, skip_bias_add=True, pg=pg,
            mup_base_fan_in=config.mup_base_fan_in("ffn"))

    def forward(self, hidden_states: torch.Tensor):
        intermediate, bias = self.dense_h_to_4h(hidden_states)  # [s, b, ffn / tp] (x 2 with SwiGLU)
        if self.config.swiglu:
            intermediate = bias_swiglu(bias, intermediate)  # [s, b, ffn / tp]
        elif self.config.bias_gelu_fusion:
            intermediate = fused.bias_gelu(bias, intermediate, "tanh")  # Triton on CUDA
        else:
            activation = gelu_tanh if self.config.openai_gelu else erf_gelu
            intermediate = activation(intermediate if bias is None else intermediate + bias)
        return self.dense_4h_to_h(intermediate)  # (output [s, b, h], bias)
