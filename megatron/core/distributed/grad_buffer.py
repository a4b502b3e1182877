"""Contiguous gradient buffers and the buckets that reduce them over the data-parallel group.

Every parameter of one (param dtype, grad dtype) pair gets a view of one flat buffer as its
``main_grad`` (Megatron's convention), so a bucket is a contiguous slice of that buffer and its
reduction is one collective on one tensor. Parameters are laid out in reverse registration order,
which is roughly the order backward produces their gradients, so the first buckets fill first
and their collectives overlap with the rest of backward.

With the distributed optimizer every bucket is padded to a multiple of the data-parallel size
and reduce-scattered: data-parallel rank ``r`` then holds the reduced ``r``-th contiguous shard of
each bucket, which is exactly the part of the parameters that rank's optimizer updates.
"""
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

_reduce_scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
_all_gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor


class Bucket:
    """A contiguous slice ``[start, end)`` of a grad buffer holding whole parameters."""

    def __init__(self, params: List[torch.nn.Parameter], data: torch.Tensor, start: int, end: int,
                 dp_group, dp_size: int, dp_rank: int, reduce_scatter: bool, average_in_collective: bool):
        self.params = params
        self.data = data
        self.start, self.end = start, end
        self.dp_group, self.dp_size, self.dp_rank = dp_group, dp_size, dp_rank
        self.reduce_scatter = reduce_scatter
        self.average_in_collective = average_in_collective
        self.ready: set = set()
        self.handle = None
        self._scatter_out: Optional[torch.Tensor] = None

    def shard_range(self, dp_rank: Optional[int] = None) -> Tuple[int, int]:
        """Buffer range ``[s, e)`` of the shard that data-parallel rank ``dp_rank`` owns."""
        rank = self.dp_rank if dp_rank is None else dp_rank
        size = (self.end - self.start) // self.dp_size
        return self.start + rank * size, self.start + (rank + 1) * size

    @property
    def launched(self) -> bool:
        return self.handle is not None

    def register_ready(self, param) -> None:
        if self.launched:
            raise RuntimeError(
                "a gradient arrived for a bucket whose data-parallel reduction is already running; "
                "a parameter was used again after its gradient was final (run earlier micro-batches "
                "under no_sync())")
        self.ready.add(param)
        if len(self.ready) == len(self.params):
            self.start_sync()

    def start_sync(self) -> None:
        if self.launched:
            return
        if self.dp_size == 1 or self.dp_group is None:
            self.handle = _DONE
            return
        op = dist.ReduceOp.SUM
        if self.average_in_collective:
            op = dist.ReduceOp.AVG
        else:
            # Dividing first (as Megatron does) keeps fp16 sums within range for large DP.
            self.data.div_(self.dp_size)
        if self.reduce_scatter:
            s, e = self.shard_range()
            # A separate output: not every backend allows the output to alias the input.
            self._scatter_out = torch.empty(e - s, dtype=self.data.dtype, device=self.data.device)
            self.handle = _reduce_scatter(self._scatter_out, self.data, op=op, group=self.dp_group, async_op=True)
        else:
            self.handle = dist.all_reduce(self.data, op=op, group=self.dp_group, async_op=True)

    def finish_sync(self) -> None:
        self.start_sync()
        self.handle.wait()
        if self._scatter_out is not None:
            s, e = self.shard_range()
            self.data[s - self.start:e - self.start].copy_(self._scatter_out)
            self._scatter_out = None

    def reset(self) -> None:
        self.ready.clear()
        self.handle = None
        self._scatter_out = None


class _Done:
    def wait(self) -> None:
        pass


_DONE = _Done()


class GradBuffer:
    """One flat gradient buffer for parameters of one (param dtype, grad dtype), split into buckets."""

    def __init__(self, params: List[torch.nn.Parameter], grad_dtype: torch.dtype, bucket_size: Optional[int],
                 dp_group, dp_size: int, dp_rank: int, reduce_scatter: bool, average_in_collective: bool,
                 own_bucket=lambda p: False):
        if dp_size > 1 and dp_group is None:
            raise ValueError(f"data-parallel size {dp_size} needs a data-parallel process group (got None)")
        self.grad_dtype = grad_dtype
        self.params = list(params)
        pad_to = dp_size if reduce_scatter else 1
        plan: List[Tuple[List[torch.nn.Parameter], int, int]] = []
        ranges: Dict[torch.nn.Parameter, Tuple[int, int]] = {}
        offset, current, bucket_start = 0, [], 0

        def close_bucket():
            nonlocal offset, current, bucket_start
            if not current:
                return
            offset = -(-offset // pad_to) * pad_to
            plan.append((current, bucket_start, offset))
            current, bucket_start = [], offset

        # Reverse order: backward produces the last layers' gradients first.
        for param in reversed(self.params):
            if own_bucket(param):
                # Shared embeddings get a bucket of their own so that the first and last pipeline
                # stages shard them identically, which lets the embedding all-reduce run after a
                # reduce-scatter.
                close_bucket()
            ranges[param] = (offset, offset + param.numel())
            offset += param.numel()
            current.append(param)
            if own_bucket(param) or (bucket_size is not None and offset - bucket_start >= bucket_size):
                close_bucket()
        close_bucket()
        self.numel = offset
        device = self.params[0].device
        self.data = torch.zeros(self.numel, dtype=grad_dtype, device=device)
        self.param_ranges = ranges
        self.buckets = [Bucket(ps, self.data[s:e], s, e, dp_group, dp_size, dp_rank, reduce_scatter,
                               average_in_collective) for ps, s, e in plan]
        self.param_to_bucket = {p: b for b in self.buckets for p in b.params}
        for param, (s, e) in ranges.items():
            param.main_grad = self.data[s:e].view_as(param)

    def zero(self) -> None:
        self.data.zero_()
        for bucket in self.buckets:
            bucket.reset()


def all_gather_bucket_params(bucket: Bucket, param_ranges: Dict[torch.nn.Parameter, Tuple[int, int]]) -> None:
    """After each data-parallel rank updated its shard of ``bucket``'s parameters, give every rank all of them."""
    if bucket.dp_size == 1 or bucket.dp_group is None:
        return
    dtype, device = bucket.params[0].dtype, bucket.params[0].device
    flat = torch.zeros(bucket.end - bucket.start, dtype=dtype, device=device)
    for param in bucket.params:
        s, e = param_ranges[param]
        flat[s - bucket.start:e - bucket.start].copy_(param.data.reshape(-1))
    s, e = bucket.shard_range()
    own = flat[s - bucket.start:e - bucket.start].clone()
    _all_gather(flat, own, group=bucket.dp_group)
    for param in bucket.params:
        s, e = param_ranges[param]
        param.data.copy_(flat[s - bucket.start:e - bucket.start].view_as(param))
