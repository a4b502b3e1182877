"""Dropout on the tracked, per-tensor-parallel-rank RNG stream, in a form ``torch.compile`` keeps in
one graph.

Attention dropout must draw from the tracker's stream (``get_rng_tracker().fork()``: each TP rank
holds other heads). The fork swaps the device's RNG state in and out, which Dynamo refuses to trace,
so inside a compiled region the mask comes from a custom op: opaque to the compiler, it runs the
swap and the Bernoulli draw eagerly and returns the keep mask; the scaling and its gradient stay
ordinary traced operations. Eager code keeps using ``F.dropout`` inside the fork.
"""
import torch

from megatron.core.tensor_parallel.random import get_rng_tracker


@torch.library.custom_op("megatron::tracked_keep_mask", mutates_args=())
def tracked_keep_mask(like: torch.Tensor, keep_prob: float) -> torch.Tensor:
    """A Bernoulli(keep_prob) mask shaped like ``like``, drawn on the tracked model-parallel stream."""
    with get_rng_tracker().fork():
        return torch.empty_like(like).bernoulli_(keep_prob)


@tracked_keep_mask.register_fake
def _(like: torch.Tensor, keep_prob: float) -> torch.Tensor:
    return torch.empty_like(like)


def tracked_dropout(x: torch.Tensor, p: float) -> torch.Tensor:
    """``F.dropout(x, p)`` (training) with the mask from the tracked stream."""
    keep = 1.0 - p
    return x * tracked_keep_mask(x.detach(), keep) * (1.0 / keep)
