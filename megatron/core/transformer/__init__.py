"""The transformer: config, attention, MLP, layer and block."""
from megatron.core.transformer.attention import CoreAttention, ParallelAttention, RotaryEmbedding
from megatron.core.transformer.block import TransformerBlock, stage_layer_range
from megatron.core.transformer.config import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType, AttnType, LayerType, ModelType
from megatron.core.transformer.layer import TransformerLayer
from megatron.core.transformer.mlp import ParallelMLP

__all__ = [
    "AttnMaskType", "AttnType", "CoreAttention", "LayerType", "ModelType", "ParallelAttention", "ParallelMLP",
    "RotaryEmbedding", "TransformerBlock", "TransformerConfig", "TransformerLayer", "stage_layer_range",
]
