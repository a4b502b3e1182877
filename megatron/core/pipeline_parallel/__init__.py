"""Pipeline parallelism: point-to-point exchange between stages and the forward-backward schedules."""
from megatron.core.pipeline_parallel.finalize import (
    allreduce_embedding_grads,
    allreduce_sequence_parallel_grads,
    reduce_model_parallel_grads,
)
from megatron.core.pipeline_parallel.schedules import (
    forward_backward_no_pipelining,
    forward_backward_pipelining_with_interleaving,
    forward_backward_pipelining_without_interleaving,
    get_forward_backward_func,
)

__all__ = [
    "allreduce_embedding_grads", "allreduce_sequence_parallel_grads", "reduce_model_parallel_grads",
    "forward_backward_no_pipelining", "forward_backward_pipelining_with_interleaving",
    "forward_backward_pipelining_without_interleaving", "get_forward_backward_func",
]
