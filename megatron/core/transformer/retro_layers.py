"""RETRO's layers with cross-attention: the decoder's chunked cross-attention (CCA) layer and the
retrieval encoder's layer that attends from a neighbour to the decoder chunk it was retrieved for.

Both are ``TransformerLayer``s (same sub-module names: ``self_attention``, ``inter_attention``,
``mlp`` and their norms), built from the shared attention, MLP and norm, so anything the shared
layers gain (fused kernels, recompute, μP hooks on the config) applies here too.

Shapes: ``n`` decoder positions, ``m`` the chunk size, ``l = n // m`` chunks, ``k`` neighbours per
chunk, ``r = 2 m`` tokens per neighbour (the neighbour chunk and its continuation). The retrieval
encoder's batch dimension is ``b * l * k`` ordered (batch, chunk, neighbour).
"""
import dataclasses
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.fusions import fused
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
)
from megatron.core.transformer.attention import ParallelAttention
from megatron.core.transformer.config import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType, AttnType, LayerType
from megatron.core.transformer.layer import TransformerLayer, make_layernorm
from megatron.core.transformer.mlp import ParallelMLP


def without_sequence_parallel(config: TransformerConfig) -> TransformerConfig:
    """The config for parts that see whole sequences on every rank (the retrieval encoder, CCA)."""
    if not config.sequence_parallel:
        return config
    return dataclasses.replace(config, sequence_parallel=False)


def chunk_shift(hidden: torch.Tensor, chunk_size: int) -> torch.Tensor:
    """``[n, b, h]`` -> ``[m, b * l, h]`` queries of CCA: positions shifted left by ``m - 1``.

    Row ``u`` of the batch (per sequence) holds original positions ``u*m + m-1 .. u*m + 2m-2``:
    the last token of chunk u and the first ``m - 1`` of chunk u+1, the positions allowed to see
    the neighbours retrieved with chunk u's content.
    """
    n, b, h = hidden.shape
    m = chunk_size
    chunks = n // m
    shifted = F.pad(hidden[m - 1:], (0, 0, 0, 0, 0, m - 1))  # [n, b, h]
    shifted = shifted[: chunks * m].view(chunks, m, b, h)
    return shifted.permute(1, 2, 0, 3).reshape(m, b * chunks, h)


def chunk_unshift(output: torch.Tensor, seq_length: int, batch: int, chunk_size: int) -> torch.Tensor:
    """Inverse of ``chunk_shift``: ``[m, b * l, h]`` -> ``[n, b, h]``; positions no chunk covers get zeros."""
    m = chunk_size
    h = output.shape[-1]
    chunks = output.shape[1] // batch
    out = output.view(m, batch, chunks, h).permute(2, 0, 1, 3).reshape(chunks * m, batch, h)
    # Shifted row s is original position s + m - 1; the first m - 1 positions see no neighbours.
    out = F.pad(out, (0, 0, 0, 0, m - 1, 0))  # [l*m + m - 1, b, h]
    if out.shape[0] >= seq_length:
        return out[:seq_length]
    return F.pad(out, (0, 0, 0, 0, 0, seq_length - out.shape[0]))


class RetroCCALayer(TransformerLayer):
    """Causal self-attention, chunked cross-attention to the encoded neighbours, MLP.

    CCA attends from each chunk's shifted queries ``[m, b*l, h]`` to the ``k * 2m`` encoded
    tokens of that chunk's neighbours. Under sequence parallelism the shift needs the whole
    sequence, so the layer-normed input is gathered, CCA runs on full tensors (its projections
    built without sequence parallelism: one all-reduce) and its output is scattered back.
    """

    def __init__(self, config: TransformerConfig, layer_number: int, chunk_size: int,
                 pg: Optional[ProcessGroups] = None):
        nn.Module.__init__(self)
        pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.pg = pg
        self.layer_number = layer_number
        self.layer_type = LayerType.decoder
        self.chunk_size = chunk_size
        self.sequence_parallel = config.sequence_parallel and pg.tensor_model_parallel_size > 1
        self.input_layernorm = make_layernorm(config, pg)
        self.self_attention = ParallelAttention(config, layer_number, AttnType.self_attn, AttnMaskType.causal, pg)
        self.post_attention_layernorm = make_layernorm(config, pg)
        self.inter_attention = ParallelAttention(without_sequence_parallel(config), layer_number,
                                                 AttnType.cross_attn, AttnMaskType.padding, pg)
        self.post_inter_attention_layernorm = make_layernorm(config, pg)
        self.mlp = ParallelMLP(config, pg)

    def chunked_cross_attention(self, hidden: torch.Tensor, neighbours: Optional[torch.Tensor],
                                neighbour_mask: Optional[torch.Tensor], rotary_pos_emb) -> torch.Tensor:
        """``hidden [n(/tp), b, h]`` -> the CCA output (bias included) of the same shape."""
        if self.sequence_parallel:
            # Every rank runs CCA on the whole sequence; the gradient arrives whole too (the
            # projections all-reduce it), so backward only keeps this rank's slice.
            hidden = gather_from_sequence_parallel_region(hidden, self.pg.tp, tensor_parallel_output_grad=False)
        n, b, h = hidden.shape
        m = self.chunk_size
        if neighbours is None or n < m:
            out = torch.zeros_like(hidden)
        else:
            query = chunk_shift(hidden, m)  # [m, b*l, h]
            out, bias = self.inter_attention(query, neighbour_mask, neighbours, rotary_pos_emb=rotary_pos_emb)
            if bias is not None:
                out = out + bias
            out = chunk_unshift(out, n, b, m)  # [n, b, h]
        if self.sequence_parallel:
            out = scatter_to_sequence_parallel_region(out, self.pg.tp)
        return out

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                neighbours: Optional[torch.Tensor] = None, neighbour_mask: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None, cca_rotary_pos_emb=None) -> torch.Tensor:
        # hidden_states [n(/tp), b, h]; neighbours [k * 2m, b*l, h]
        post_ln = self.config.apply_residual_connection_post_layernorm
        dropout, training, fusion = self.config.hidden_dropout, self.training, self.config.bias_dropout_fusion
        layernorm_output = self._layernorm(self.input_layernorm, hidden_states)
        attention_output, attention_bias = self.self_attention(layernorm_output, attention_mask,
                                                               rotary_pos_emb=rotary_pos_emb)
        residual = layernorm_output if post_ln else hidden_states
        layernorm_input = fused.bias_dropout_add(attention_output, attention_bias, residual, dropout, training, fusion)

        layernorm_output = self._layernorm(self.post_attention_layernorm, layernorm_input)
        cca_output = self.chunked_cross_attention(layernorm_output, neighbours, neighbour_mask, cca_rotary_pos_emb)
        residual = layernorm_output if post_ln else layernorm_input
        layernorm_input = fused.bias_dropout_add(cca_output, None, residual, dropout, training, fusion)

        layernorm_output = self._layernorm(self.post_inter_attention_layernorm, layernorm_input)
        mlp_output, mlp_bias = self.mlp(layernorm_output)
        residual = layernorm_output if post_ln else layernorm_input
        return fused.bias_dropout_add(mlp_output, mlp_bias, residual, dropout, training, fusion)


class RetroEncoderCALayer(TransformerLayer):
    """Bidirectional (padding-masked) self-attention over a neighbour, cross-attention to the
    decoder states of the chunk it was retrieved for, MLP. Built on the encoder's config (no
    sequence parallelism: neighbours are whole on every rank)."""

    def __init__(self, config: TransformerConfig, layer_number: int, pg: Optional[ProcessGroups] = None):
        super().__init__(config, layer_number, LayerType.decoder, AttnMaskType.padding, pg)

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                encoder_output: Optional[torch.Tensor] = None, enc_dec_attn_mask: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        # hidden_states [2m, b*l*k, h]; encoder_output (the decoder chunk) [m, b*l*k, h]
        post_ln = self.config.apply_residual_connection_post_layernorm
        dropout, training, fusion = self.config.hidden_dropout, self.training, self.config.bias_dropout_fusion
        layernorm_output = self._layernorm(self.input_layernorm, hidden_states)
        attention_output, attention_bias = self.self_attention(layernorm_output, attention_mask,
                                                               rotary_pos_emb=rotary_pos_emb)
        residual = layernorm_output if post_ln else hidden_states
        layernorm_input = fused.bias_dropout_add(attention_output, attention_bias, residual, dropout, training, fusion)

        layernorm_output = self._layernorm(self.post_attention_layernorm, layernorm_input)
        # Neighbour position i and decoder chunk position i share a rotary position (the
        # neighbour chunk is aligned with the chunk it was retrieved for).
        attention_output, attention_bias = self.inter_attention(layernorm_output, enc_dec_attn_mask, encoder_output,
                                                                rotary_pos_emb=rotary_pos_emb)
        residual = layernorm_output if post_ln else layernorm_input
        layernorm_input = fused.bias_dropout_add(attention_output, attention_bias, residual, dropout, training, fusion)

        layernorm_output = self._layernorm(self.post_inter_attention_layernorm, layernorm_input)
        mlp_output, mlp_bias = self.mlp(layernorm_output)
        residual = layernorm_output if post_ln else layernorm_input
        return fused.bias_dropout_add(mlp_output, mlp_bias, residual, dropout, training, fusion)
