"""Autograd-aware collectives for the tensor-parallel region; the one home of every collective in the core.

Each region boundary is a pair of conjugate operations: what forward does, backward undoes
(identity <-> all-reduce, split <-> all-gather, all-gather <-> reduce-scatter). The ``group``
argument is a tensor-parallel group, or ``None`` for the trivial one-process layout, in which
every function is the identity.

Sequence parallelism splits dimension 0 of ``[s, b, h]`` activations; tensor parallelism splits
the last dimension.
"""
from typing import List, Optional

import torch
import torch.distributed as dist


def group_size(group: Optional[dist.ProcessGroup]) -> int:
    if group is None:
        return 1
    return dist.get_world_size(group)


def group_rank(group: Optional[dist.ProcessGroup]) -> int:
    if group is None:
        return 0
    return dist.get_rank(group)


def _is_nccl(group) -> bool:
    return dist.get_backend(group) == "nccl"


# -- plain (non-autograd) collectives --------------------------------------------------
def all_reduce(tensor: torch.Tensor, group, op=dist.ReduceOp.SUM) -> torch.Tensor:
    """In-place all-reduce; a no-op for a trivial group."""
    if group_size(group) > 1:
        dist.all_reduce(tensor, op=op, group=group)
    return tensor


def gather_to_first(tensor: torch.Tensor, group, outputs: Optional[List[torch.Tensor]] = None):
    """Every rank's ``tensor`` (same shape on every rank), in group-rank order, on the group's first
    rank: written into ``outputs`` (one tensor per rank) when given, else into new tensors; returns
    that list there and None on the others, which keep nothing beyond their own input."""
    world = group_size(group)
    if group_rank(group) != 0:
        dist.gather(tensor, None, dst=dist.get_global_rank(group, 0), group=group)
        return None
    if outputs is None:
        outputs = [torch.empty_like(tensor) for _ in range(world)]
    if world == 1:
        outputs[0].copy_(tensor)
    else:
        dist.gather(tensor, outputs, dst=dist.get_global_rank(group, 0), group=group)
    return outputs


def all_gather_dim(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    """Concatenate every rank's ``tensor`` along ``dim`` (same shape on every rank)."""
    world = group_size(group)
    if world == 1:
        return tensor
    tensor = tensor.contiguous()
    if dim == 0 and _is_nccl(group):
        out = torch.empty((world * tensor.shape[0],) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        dist.all_gather_into_tensor(out, tensor, group=group)
        return out
    parts = [torch.empty_like(tensor) for _ in range(world)]
    dist.all_gather(parts, tensor, group=group)
    return torch.cat(parts, dim=dim).contiguous()


def split_dim(tensor: torch.Tensor, dim: int, group) -> torch.Tensor:
    """This rank's contiguous slice of ``tensor`` along ``dim``."""
    world = group_size(group)
    if world == 1:
        return tensor
    size = tensor.shape[dim]
    if size % world != 0:
        raise ValueError(f"cannot split dimension {dim} of size {size} over {world} tensor-parallel ranks")
    return tensor.chunk(world, dim=dim)[group_rank(group)].contiguous()


def reduce_scatter_dim0(tensor: torch.Tensor, group) -> torch.Tensor:
    """Sum over ranks, keep this rank's slice of dimension 0."""
    world = group_size(group)
    if world == 1:
        return tensor
    if tensor.shape[0] % world != 0:
        raise ValueError(f"cannot reduce-scatter dimension 0 of size {tensor.shape[0]} over {world} ranks")
    tensor = tensor.contiguous()
    if _is_nccl(group):
        out = torch.empty((tensor.shape[0] // world,) + tuple(tensor.shape[1:]), dtype=tensor.dtype, device=tensor.device)
        dist.reduce_scatter_tensor(out, tensor, group=group)
        return out
    # gloo has no reduce-scatter: all-reduce then slice costs more bandwidth but gives the same sum.
    reduced = tensor.clone()
    dist.all_reduce(reduced, group=group)
    return reduced.chunk(world, dim=0)[group_rank(group)].contiguous()


# -- autograd functions --------------------------------------------------------------
class _CopyToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group):
        ctx.group = group
        return inp

    @staticmethod
    def backward(ctx, grad):
        return all_reduce(grad.contiguous().clone(), ctx.group), None


class _ReduceFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group):
        return all_reduce(inp.contiguous().clone(), group)

    @staticmethod
    def backward(ctx, grad):
        return grad, None


class _ScatterToRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group):
        ctx.group = group
        return split_dim(inp, inp.dim() - 1, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_dim(grad, grad.dim() - 1, ctx.group), None


class _GatherFromRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group):
        ctx.group = group
        return all_gather_dim(inp, inp.dim() - 1, group)

    @staticmethod
    def backward(ctx, grad):
        return split_dim(grad, grad.dim() - 1, ctx.group), None


class _ScatterToSequenceRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group):
        ctx.group = group
        return split_dim(inp, 0, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_dim(grad, 0, ctx.group), None


class _GatherFromSequenceRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group, tensor_parallel_output_grad):
        ctx.group = group
        ctx.tensor_parallel_output_grad = tensor_parallel_output_grad
        return all_gather_dim(inp, 0, group)

    @staticmethod
    def backward(ctx, grad):
        # When the gathered tensor fed a tensor-parallel layer, each rank holds only a partial
        # gradient and the pieces must be summed; otherwise every rank already has the full one.
        if ctx.tensor_parallel_output_grad:
            return reduce_scatter_dim0(grad, ctx.group), None, None
        return split_dim(grad, 0, ctx.group), None, None


class _ReduceScatterToSequenceRegion(torch.autograd.Function):
    @staticmethod
    def forward(ctx, inp, group):
        ctx.group = group
        return reduce_scatter_dim0(inp, group)

    @staticmethod
    def backward(ctx, grad):
        return all_gather_dim(grad, 0, ctx.group), None


def copy_to_tensor_model_parallel_region(inp: torch.Tensor, group) -> torch.Tensor:
    """Identity forward, all-reduce backward: entering a column-parallel layer."""
    if group_size(group) == 1:
        return inp
    return _CopyToRegion.apply(inp, group)


def reduce_from_tensor_model_parallel_region(inp: torch.Tensor, group) -> torch.Tensor:
    """All-reduce forward, identity backward: leaving a row-parallel layer."""
    if group_size(group) == 1:
        return inp
    return _ReduceFromRegion.apply(inp, group)


def scatter_to_tensor_model_parallel_region(inp: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's slice of the last dimension; all-gather in backward."""
    if group_size(group) == 1:
        return inp
    return _ScatterToRegion.apply(inp, group)


def gather_from_tensor_model_parallel_region(inp: torch.Tensor, group) -> torch.Tensor:
    """All-gather the last dimension; split in backward."""
    if group_size(group) == 1:
        return inp
    return _GatherFromRegion.apply(inp, group)


def scatter_to_sequence_parallel_region(inp: torch.Tensor, group) -> torch.Tensor:
    """Keep this rank's slice of the sequence (dimension 0); all-gather in backward."""
    if group_size(group) == 1:
        return inp
    return _ScatterToSequenceRegion.apply(inp, group)


def gather_from_sequence_parallel_region(inp: torch.Tensor, group, tensor_parallel_output_grad: bool = True) -> torch.Tensor:
    """All-gather the sequence on entry to a tensor-parallel region; reduce-scatter in backward."""
    if group_size(group) == 1:
        return inp
    return _GatherFromSequenceRegion.apply(inp, group, tensor_parallel_output_grad)


def reduce_scatter_to_sequence_parallel_region(inp: torch.Tensor, group) -> torch.Tensor:
    """Sum partial outputs and keep this rank's sequence slice on exit; all-gather in backward."""
    if group_size(group) == 1:
        return inp
    return _ReduceScatterToSequenceRegion.apply(inp, group)


def broadcast_tensors(tensors: List[torch.Tensor], src: int, group) -> None:
    """In-place broadcast from global rank ``src`` within ``group``."""
    if group_size(group) == 1:
        return
    for tensor in tensors:
        dist.broadcast(tensor, src=src, group=group)
