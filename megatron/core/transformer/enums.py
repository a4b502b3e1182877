"""Enumerations shared by the transformer and the models."""
import enum


class LayerType(enum.Enum):
    encoder = 1
    decoder = 2


class AttnType(enum.Enum):
    self_attn = 1
    cross_attn = 2


class AttnMaskType(enum.Enum):
    padding = 1
    causal = 2


class ModelType(enum.Enum):
    """How a model's stages talk: one stack, or an encoder and a decoder split across the pipeline."""

    encoder_or_decoder = 1
    encoder_and_decoder = 2
