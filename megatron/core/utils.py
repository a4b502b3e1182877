"""Small helpers shared by the parallel core: divisibility checks, initialisers, viewless tensors."""
import math
from typing import Callable

import torch


def ensure_divisibility(numerator: int, denominator: int, what: str = "") -> None:
    if denominator <= 0 or numerator % denominator != 0:
        label = f"{what}: " if what else ""
        raise ValueError(f"{label}{numerator} is not divisible by {denominator}")


def divide(numerator: int, denominator: int, what: str = "") -> int:
    ensure_divisibility(numerator, denominator, what)
    return numerator // denominator


def init_method_normal(sigma: float) -> Callable[[torch.Tensor], torch.Tensor]:
    """N(0, sigma) initialisation, Megatron's default for every weight."""

    def init_(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=sigma)

    return init_


def scaled_init_method_normal(sigma: float, num_layers: int) -> Callable[[torch.Tensor], torch.Tensor]:
    """N(0, sigma / sqrt(2 * num_layers)) for the output projections that feed the residual stream.

    Each layer adds two such projections to the residual; scaling keeps the residual's variance
    independent of depth (GPT-2's initialisation).
    """
    std = sigma / math.sqrt(2.0 * num_layers)

    def init_(tensor: torch.Tensor) -> torch.Tensor:
        return torch.nn.init.normal_(tensor, mean=0.0, std=std)

    return init_


class _MakeViewless(torch.autograd.Function):
    """Identity whose output owns no view of its input.

    The pipeline schedules free an activation after sending it by swapping its ``.data`` for a
    one-element tensor; that only releases memory (and only stays correct for autograd) when the
    activation is not a view whose base is still referenced.
    """

    @staticmethod
    def forward(ctx, inp):
        out = torch.empty((1,), dtype=inp.dtype, device=inp.device)
        out.data = inp.data
        return out

    @staticmethod
    def backward(ctx, grad):
        return grad


def make_viewless_tensor(inp: torch.Tensor) -> torch.Tensor:
    if inp._base is None:
        return inp
    if inp.requires_grad:
        return _MakeViewless.apply(inp)
    out = torch.empty((1,), dtype=inp.dtype, device=inp.device)
    out.data = inp.data
    return out
