"""The tensor-parallel MLP: column-parallel h -> ffn, GeLU, row-parallel ffn -> h."""
from typing import Optional

import torch
from torch import nn

from megatron.core.fusions import bias_gelu, erf_gelu, gelu_tanh
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
        self.dense_h_to_4h = ColumnParallelLinear(
            config.hidden_size, config.ffn_hidden_size, config=config, init_method=config.init_method,
            skip_bias_add=True, pg=pg)
        self.dense_4h_to_h = RowParallelLinear(
            config.ffn_hidden_size, config.hidden_size, config=config, init_method=config.output_layer_init_method,
            input_is_parallel=True, skip_bias_add=True, pg=pg)

    def forward(self, hidden_states: torch.Tensor):
        intermediate, bias = self.dense_h_to_4h(hidden_states)  # [s, b, ffn / tp]
        if self.config.bias_gelu_fusion:
            intermediate = bias_gelu(bias, intermediate)
        else:
            activation = gelu_tanh if self.config.openai_gelu else erf_gelu
            intermediate = activation(intermediate + bias)
        return self.dense_4h_to_h(intermediate)  # (output [s, b, h], bias)
