"""Maximal-update parametrisation (μP, Yang et al., "Tensor Programs V"), the rules for Adam.

A parameter is classified by which of its dimensions grow with the model's width (the base model
is the same network at ``TransformerConfig.mup_base_hidden_size``):

* hidden matrices (both dimensions grow: QKV, attention output, both MLP projections, pooler and
  head dense layers): initial std divided by sqrt(m), Adam learning rate divided by m, where m is
  the fan-in multiplier ``fan_in / base_fan_in``;
* vector-like parameters (one dimension grows: word/position embeddings, the output layer or tied
  embedding seen as a readout, biases, norms): initialised and trained as in the standard model;
* readouts (hidden -> vocabulary or classes) multiply their input by ``base / hidden`` (the
  model does this through ``TransformerConfig.mup_output_multiplier``).

These are the rules of the ``mup`` package (``mup.init`` scales matrix-like tensors by
``width_mult ** -0.5``, ``MuAdam`` divides their learning rate by ``width_mult``, ``MuReadout``
divides its input by ``width_mult``). The layers know their full, unsharded fan-in, so the
multipliers are the same on every tensor- and pipeline-parallel rank. The learning-rate multiplier
travels on the parameter (``mup_lr_mult``) into the optimizer's parameter groups
(``core.optimizer.get_param_groups``), which are rebuilt identically from the config on resume.
"""
import math
from typing import Callable, Optional, Tuple

import torch

LR_MULT_ATTR = "mup_lr_mult"


def hidden_matrix_rule(init_method: Callable, fan_in: int, base_fan_in: Optional[int]) -> Tuple[Callable, float]:
    """(initialiser, Adam learning-rate multiplier) of a hidden matrix with full fan-in ``fan_in``.

    ``base_fan_in`` None (no μP, or a weight whose output does not grow with width) leaves both
    unchanged.
    """
    if base_fan_in is None:
        return init_method, 1.0
    width_mult = fan_in / base_fan_in
    if width_mult == 1.0:
        return init_method, 1.0
    scale = 1.0 / math.sqrt(width_mult)

    def init(tensor: torch.Tensor) -> torch.Tensor:
        init_method(tensor)
        with torch.no_grad():
            tensor.mul_(scale)
        return tensor

    return init, 1.0 / width_mult


def set_lr_mult(param: torch.nn.Parameter, lr_mult: float) -> None:
    if lr_mult != 1.0:
        setattr(param, LR_MULT_ATTR, lr_mult)


def lr_mult(param: torch.Tensor) -> float:
    """The μP learning-rate multiplier of ``param`` (1 for vector-like parameters and without μP)."""
    return getattr(param, LR_MULT_ATTR, 1.0)
