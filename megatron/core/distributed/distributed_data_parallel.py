"""``--DDP-impl local``: data parallelism over contiguous, bucketed gradient buffers.

Backward accumulates every gradient into ``param.main_grad`` (a view of a flat buffer) from a
post-accumulate hook and frees ``param.grad``. Within a global batch the schedules run every
micro-batch but the last under ``no_sync()``, so gradients keep accumulating locally; during the
last backward each bucket's collective starts as soon as its last parameter's gradient is in
(``overlap_grad_reduce``), and ``finish_grad_sync`` waits for all of them. The gradients are thus
reduced once per global batch and averaged over the data-parallel ranks.
"""
from contextlib import contextmanager
from typing import Dict, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.core.distributed.config import DistributedDataParallelConfig
from megatron.core.distributed.grad_buffer import GradBuffer, all_gather_bucket_params
from megatron.core.distributed.module_wrapper import ModuleWrapper
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.pipeline_parallel.finalize import unwrap_model
from megatron.core.tensor_parallel.mappings import broadcast_tensors, group_rank


def _shared_embedding_params(module: torch.nn.Module, pg: ProcessGroups) -> set:
    """Parameters all-reduced across pipeline stages after the data-parallel reduction."""
    shared = {p for p in module.parameters() if getattr(p, "shared", False)}
    core = unwrap_model(module)
    if (pg.pipeline_model_parallel_split_rank is not None and len(pg.pos_embd_ranks) > 1
            and pg.rank in pg.pos_embd_ranks and getattr(core, "pre_process", False)):
        embedding = getattr(getattr(core, "language_model", None), "embedding", None)
        if embedding is not None and getattr(embedding, "add_position_embedding", False):
            shared.add(embedding.position_embeddings.weight)
    return shared


class DistributedDataParallel(ModuleWrapper):
    """Wraps one model chunk; gradients live in ``param.main_grad`` and are reduced over ``pg.dp``."""

    def __init__(self, config: DistributedDataParallelConfig, module: torch.nn.Module,
                 pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.config = config
        self.module = module
        self.pg = pg if pg is not None else get_process_groups()
        self.dp_group = self.pg.dp
        self.dp_size = self.pg.data_parallel_size
        self.dp_rank = group_rank(self.dp_group) if self.dp_size > 1 else 0
        self.is_last_microbatch = True

        params, seen = [], set()
        for param in module.parameters():
            if param.requires_grad and param not in seen:
                seen.add(param)
                params.append(param)
        shared = _shared_embedding_params(module, self.pg) if config.use_distributed_optimizer else set()
        by_type: Dict[Tuple[torch.dtype, torch.dtype], List[torch.nn.Parameter]] = {}
        for param in params:
            grad_dtype = torch.float32 if config.grad_reduce_in_fp32 else param.dtype
            by_type.setdefault((param.dtype, grad_dtype), []).append(param)
        self.buffers: List[GradBuffer] = [
            GradBuffer(ps, grad_dtype, config.bucket_size, self.dp_group, self.dp_size, self.dp_rank,
                       config.use_distributed_optimizer, config.average_in_collective,
                       own_bucket=lambda p: p in shared)
            for (_, grad_dtype), ps in by_type.items()]
        self.param_to_buffer = {p: buf for buf in self.buffers for p in buf.params}
        self._hooks = [param.register_post_accumulate_grad_hook(self._accumulate) for param in params]

    # -- backward --------------------------------------------------------------------------
    def _accumulate(self, param: torch.nn.Parameter) -> None:
        if param.grad is not None:
            param.main_grad.add_(param.grad)
            param.grad = None
        if self.config.overlap_grad_reduce and self.is_last_microbatch:
            self.param_to_buffer[param].param_to_bucket[param].register_ready(param)

    @contextmanager
    def no_sync(self):
        """Accumulate gradients without reducing them (every micro-batch but a global batch's last)."""
        self.is_last_microbatch = False
        try:
            yield
        finally:
            self.is_last_microbatch = True

    def start_grad_sync(self) -> None:
        """Launch the collectives of every bucket not launched yet (all of them without overlap)."""
        for buffer in self.buffers:
            for bucket in buffer.buckets:
                bucket.start_sync()

    def finish_grad_sync(self) -> None:
        """Wait until every bucket is reduced; afterwards ``main_grad`` holds the data-parallel mean
        (with the distributed optimizer: on this rank's shard of each bucket)."""
        for buffer in self.buffers:
            for bucket in buffer.buckets:
                bucket.finish_sync()
            for bucket in buffer.buckets:
                bucket.reset()

    def zero_grad_buffer(self) -> None:
        for buffer in self.buffers:
            buffer.zero()
        for param in self.param_to_buffer:
            param.grad = None

    # -- parameters ------------------------------------------------------------------------
    def broadcast_params(self) -> None:
        """Make every data-parallel replica start from data-parallel rank 0's weights."""
        if self.dp_size == 1 or not dist.is_initialized():
            return
        src = self.pg.dp_ranks[0]
        broadcast_tensors([p.data for p in self.module.parameters()], src=src, group=self.dp_group)

    def all_gather_params(self) -> None:
        """With the distributed optimizer: after each rank updated its shard, share the updates."""
        for buffer in self.buffers:
            for bucket in buffer.buckets:
                all_gather_bucket_params(bucket, buffer.param_ranges)
