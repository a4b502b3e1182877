"""Configuration of the data-parallel wrapper (``--DDP-impl local``)."""
from dataclasses import dataclass
from typing import Optional


@dataclass
class DistributedDataParallelConfig:
    grad_reduce_in_fp32: bool = False
    """Accumulate and all-reduce gradients in fp32 even when the parameters are fp16/bf16
    (``--accumulate-allreduce-grads-in-fp32``; the training layer forces it on for bf16)."""

    overlap_grad_reduce: bool = True
    """Launch each bucket's collective from the backward hooks as soon as its last gradient is
    ready, overlapping communication with the rest of backward; otherwise all buckets are
    reduced at ``finish_grad_sync``."""

    use_distributed_optimizer: bool = False
    """Reduce-scatter gradients so that each data-parallel rank holds the reduced shard it
    updates (ZeRO-1), instead of all-reducing the whole buffer."""

    bucket_size: Optional[int] = 40_000_000
    """Elements per bucket; ``None`` puts every parameter of a dtype into one bucket."""

    average_in_collective: bool = False
    """Average with the collective's AVG operation instead of dividing the gradients by the
    data-parallel size before a SUM (fewer overflows in fp16 for very large DP)."""

    def __post_init__(self):
        if self.bucket_size is not None and self.bucket_size < 1:
            raise ValueError(f"bucket_size must be >= 1 element or None, got {self.bucket_size}")
