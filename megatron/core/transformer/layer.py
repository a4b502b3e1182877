"""One pre-LayerNorm transformer layer (Megatron-LM's ParallelTransformerLayer)."""
from typing import Optional

import torch
from torch import nn

from megatron.core.fusions import fused, rms_norm
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.transformer.attention import ParallelAttention
from megatron.core.transformer.config import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType, AttnType, LayerType
from megatron.core.transformer.mlp import ParallelMLP


class RMSNorm(nn.Module):
    """Root-mean-square norm (Zhang and Sennrich, 2019): ``weight * x / rms(x)``, no bias, no centring.

    The statistics are taken in fp32 whatever the input dtype (``fusions.rms_norm`` is the reference)."""

    def __init__(self, hidden_size: int, eps: float = 1e-5, dtype: torch.dtype = torch.float32):
        super().__init__()
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size, dtype=dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rms_norm(x, self.weight, self.eps)


def make_layernorm(config: TransformerConfig, pg: ProcessGroups) -> nn.Module:
    """The configured norm (``LayerNorm`` or ``RMSNorm``) over the hidden dimension."""
    if config.normalization == "RMSNorm":
        norm = RMSNorm(config.hidden_size, eps=config.layernorm_epsilon, dtype=config.params_dtype)
    else:
        norm = fused.FusedLayerNorm(config.hidden_size, eps=config.layernorm_epsilon, dtype=config.params_dtype,
                                    enabled=config.persist_layer_norm)
    # Under sequence parallelism each rank normalises only its slice of the sequence, so the
    # parameter gradients are partial sums that must be all-reduced over the TP group.
    sequence_parallel = config.sequence_parallel and pg.tensor_model_parallel_size > 1
    for param in norm.parameters():
        param.sequence_parallel = sequence_parallel
    return norm


class TransformerLayer(nn.Module):
    """x + attn(LN(x)), then + mlp(LN(.)); decoders add cross-attention in between.

    ``layer_number`` is global and 1-based (it sets query-key layer scaling and names the layer
    across pipeline stages).
    """

    def __init__(self, config: TransformerConfig, layer_number: int,
                 layer_type: LayerType = LayerType.encoder,
                 self_attn_mask_type: AttnMaskType = AttnMaskType.padding,
                 pg: Optional[ProcessGroups] = None):
        super().__init__()
        pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.layer_number = layer_number
        self.layer_type = layer_type
        self.input_layernorm = make_layernorm(config, pg)
        self.self_attention = ParallelAttention(config, layer_number, AttnType.self_attn, self_attn_mask_type, pg)
        self.post_attention_layernorm = make_layernorm(config, pg)
        if layer_type == LayerType.decoder:
            self.inter_attention = ParallelAttention(config, layer_number, AttnType.cross_attn, AttnMaskType.padding, pg)
            self.post_inter_attention_layernorm = make_layernorm(config, pg)
        self.mlp = ParallelMLP(config, pg)

    def _layernorm(self, norm: nn.LayerNorm, x: torch.Tensor) -> torch.Tensor:
        out = norm(x.to(norm.weight.dtype))
        # With an fp32 residual stream the sub-layers still compute in the parameter dtype.
        return out.to(self.config.params_dtype)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                encoder_output: Optional[torch.Tensor] = None,
                enc_dec_attn_mask: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        # hidden_states: [s, b, h]
        post_ln = self.config.apply_residual_connection_post_layernorm
        dropout, training = self.config.hidden_dropout, self.training

        layernorm_output = self._layernorm(self.input_layernorm, hidden_states)
        attention_output, attention_bias = self.self_attention(layernorm_output, attention_mask, rotary_pos_emb=rotary_pos_emb)
        residual = layernorm_output if post_ln else hidden_states
        layernorm_input = fused.bias_dropout_add(attention_output, attention_bias, residual, dropout, training,
                                                   self.config.bias_dropout_fusion)

        layernorm_output = self._layernorm(self.post_attention_layernorm, layernorm_input)
        if self.layer_type == LayerType.decoder:
            attention_output, attention_bias = self.inter_attention(layernorm_output, enc_dec_attn_mask, encoder_output)
            residual = layernorm_output if post_ln else layernorm_input
            layernorm_input = fused.bias_dropout_add(attention_output, attention_bias, residual, dropout, training,
                                                   self.config.bias_dropout_fusion)
            layernorm_output = self._layernorm(self.post_inter_attention_layernorm, layernorm_input)

        mlp_output, mlp_bias = self.mlp(layernorm_output)
        residual = layernorm_output if post_ln else layernorm_input
        return fused.bias_dropout_add(mlp_output, mlp_bias, residual, dropout, training, self.config.bias_dropout_fusion)
