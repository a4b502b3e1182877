"""Data parallelism: the local DDP wrapper over bucketed gradient buffers, the half-precision
wrapper, and the gradient finalisation handed to the pipeline schedules."""
from megatron.core.distributed.config import DistributedDataParallelConfig
from megatron.core.distributed.distributed_data_parallel import DistributedDataParallel
from megatron.core.distributed.finalize import finalize_model_grads
from megatron.core.distributed.float16_module import Float16Module

__all__ = ["DistributedDataParallel", "DistributedDataParallelConfig", "Float16Module", "finalize_model_grads"]
