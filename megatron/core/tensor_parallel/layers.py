"""Tensor-parallel layers: column- and row-parallel linear layers and the vocab-parallel embedding.

Parameters stay on the CPU where they are created; the training layer moves the model to its
device. Each partitioned parameter carries ``tensor_model_parallel=True``, ``partition_dim`` and
``partition_stride`` so checkpoint tools and tests can put shards back together. Parameters
whose gradient is only partial under sequence parallelism (biases after a reduce-scatter,
layer norms) carry ``sequence_parallel=True``: their gradients are all-reduced over the
tensor-parallel group after backward (``pipeline_parallel.finalize``).
"""
from typing import Callable, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core import mup
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel.mappings import (
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
)
from megatron.core.tensor_parallel.random import get_rng_tracker
from megatron.core.utils import divide


def set_tensor_model_parallel_attributes(param: torch.Tensor, is_parallel: bool, dim: int, stride: int = 1) -> None:
    param.tensor_model_parallel = is_parallel
    param.partition_dim = dim
    param.partition_stride = stride


def param_is_tensor_parallel(param: torch.Tensor) -> bool:
    return getattr(param, "tensor_model_parallel", False)


def _initialize_partitioned_weight(weight: nn.Parameter, full_shape, partition_dim: int,
                                   init_method: Callable, pg: ProcessGroups,
                                   use_cpu_initialization: bool, stride: int = 1) -> None:
    """Fill this rank's shard of a partitioned weight.

    With ``use_cpu_initialization`` every rank draws the full master tensor from the (identically
    seeded) default generator and keeps its slice, so any tensor-parallel size starts from exactly
    the weights a single process would draw. Otherwise each rank draws only its shard from the
    tensor-parallel stream: cheaper, but the result depends on the layout.
    """
    set_tensor_model_parallel_attributes(weight, pg.tensor_model_parallel_size > 1, partition_dim, stride)
    if not use_cpu_initialization:
        with get_rng_tracker().fork():
            init_method(weight.data)
        return
    master = torch.empty(full_shape, dtype=torch.float32)
    init_method(master)
    master = master.to(weight.dtype)
    world = pg.tensor_model_parallel_size
    per_partition = weight.shape[partition_dim]
    # With stride > 1 the full tensor is made of `stride` blocks that are each split over ranks.
    pieces = torch.split(master, per_partition // stride, dim=partition_dim)
    mine = pieces[pg.tp_rank::world]
    with torch.no_grad():
        weight.copy_(torch.cat(mine, dim=partition_dim))


class ColumnParallelLinear(nn.Module):
    """Y = XA + b with A split by columns: each rank computes a slice of the output features.

    ``gather_output`` all-gathers the slices; otherwise the output stays partitioned for a
    following row-parallel layer. With ``skip_bias_add`` the bias is returned instead of added,
    so it can be fused into the next operation. Under sequence parallelism the input arrives
    split along the sequence and is all-gathered here. ``mup_base_fan_in`` marks a μP hidden
    matrix (``core/mup.py``): its base model's fan-in, compared with the full ``input_size``.
    """

    def __init__(self, input_size: int, output_size: int, *, config, init_method: Callable,
                 bias: bool = True, gather_output: bool = False, skip_bias_add: bool = False,
                 stride: int = 1, skip_weight_param_allocation: bool = False,
                 pg: Optional[ProcessGroups] = None, mup_base_fan_in: Optional[int] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        world = self.pg.tensor_model_parallel_size
        self.input_size = input_size
        self.output_size = output_size
        self.output_size_per_partition = divide(
            output_size, world, "output size of a column-parallel layer vs tensor_model_parallel_size")
        self.gather_output = gather_output
        self.skip_bias_add = skip_bias_add
        self.sequence_parallel = config.sequence_parallel and world > 1
        if gather_output and self.sequence_parallel:
            raise ValueError("ColumnParallelLinear cannot gather_output under sequence_parallel")
        if skip_weight_param_allocation:
            self.weight = None
        else:
            self.weight = nn.Parameter(torch.empty(self.output_size_per_partition, input_size, dtype=config.params_dtype))
            init_method, lr_mult = mup.hidden_matrix_rule(init_method, input_size, mup_base_fan_in)
            _initialize_partitioned_weight(self.weight, (output_size, input_size), 0, init_method, self.pg,
                                           config.use_cpu_initialization, stride)
            mup.set_lr_mult(self.weight, lr_mult)
        if bias:
            self.bias = nn.Parameter(torch.zeros(self.output_size_per_partition, dtype=config.params_dtype))
            set_tensor_model_parallel_attributes(self.bias, world > 1, 0, stride)
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor, weight: Optional[torch.Tensor] = None) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        if weight is None:
            if self.weight is None:
                raise ValueError("ColumnParallelLinear was built with skip_weight_param_allocation; pass weight to forward")
            weight = self.weight
        group = self.pg.tp
        if self.sequence_parallel:
            input_parallel = gather_from_sequence_parallel_region(input_, group)  # [s, b, h]
        else:
            input_parallel = copy_to_tensor_model_parallel_region(input_, group)
        bias = self.bias if not self.skip_bias_add else None
        output_parallel = F.linear(input_parallel, weight, bias)
        output = gather_from_tensor_model_parallel_region(output_parallel, group) if self.gather_output else output_parallel
        return output, (self.bias if self.skip_bias_add else None)


class RowParallelLinear(nn.Module):
    """Y = XA + b with A split by rows: each rank multiplies its slice of the input features.

    The partial products are summed across ranks (all-reduce, or reduce-scatter along the
    sequence under sequence parallelism). The bias is not split and is added once, after the sum.
    ``mup_base_fan_in``: as for ``ColumnParallelLinear`` (the full, unsplit input size is the fan-in).
    """

    def __init__(self, input_size: int, output_size: int, *, config, init_method: Callable,
                 bias: bool = True, input_is_parallel: bool = False, skip_bias_add: bool = False,
                 stride: int = 1, pg: Optional[ProcessGroups] = None, mup_base_fan_in: Optional[int] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        world = self.pg.tensor_model_parallel_size
        self.input_size = input_size
        self.output_size = output_size
        self.input_size_per_partition = divide(
            input_size, world, "input size of a row-parallel layer vs tensor_model_parallel_size")
        self.input_is_parallel = input_is_parallel
        self.skip_bias_add = skip_bias_add
        self.sequence_parallel = config.sequence_parallel and world > 1
        if self.sequence_parallel and not input_is_parallel:
            raise ValueError("RowParallelLinear needs input_is_parallel=True under sequence_parallel")
        self.weight = nn.Parameter(torch.empty(output_size, self.input_size_per_partition, dtype=config.params_dtype))
        init_method, lr_mult = mup.hidden_matrix_rule(init_method, input_size, mup_base_fan_in)
        _initialize_partitioned_weight(self.weight, (output_size, input_size), 1, init_method, self.pg,
                                       config.use_cpu_initialization, stride)
        mup.set_lr_mult(self.weight, lr_mult)
        if bias:
            self.bias = nn.Parameter(torch.zeros(output_size, dtype=config.params_dtype))
            self.bias.sequence_parallel = self.sequence_parallel
        else:
            self.register_parameter("bias", None)

    def forward(self, input_: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        group = self.pg.tp
        input_parallel = input_ if self.input_is_parallel else scatter_to_tensor_model_parallel_region(input_, group)
        output_parallel = F.linear(input_parallel, self.weight)
        if self.sequence_parallel:
            output = reduce_scatter_to_sequence_parallel_region(output_parallel, group)
        else:
            output = reduce_from_tensor_model_parallel_region(output_parallel, group)
        if self.skip_bias_add or self.bias is None:
            return output, self.bias
        return output + self.bias, None


class VocabParallelEmbedding(nn.Module):
    """Embedding table split along the vocabulary: each rank looks up the ids in its range.

    Ids outside a rank's range produce zeros there, so an all-reduce assembles the full lookup.
    The output is ``[b, s, h]`` (input layout); the caller transposes and, under sequence
    parallelism, scatters it.
    """

    def __init__(self, num_embeddings: int, embedding_dim: int, *, config, init_method: Callable,
                 pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        world = self.pg.tensor_model_parallel_size
        self.num_embeddings = num_embeddings
        self.embedding_dim = embedding_dim
        if num_embeddings % world != 0:
            raise ValueError(f"vocabulary size {num_embeddings} is not divisible by tensor_model_parallel_size "
                             f"{world}; pad it (make_vocab_size_divisible_by)")
        per_partition = num_embeddings // world
        self.vocab_start_index = self.pg.tp_rank * per_partition
        self.vocab_end_index = self.vocab_start_index + per_partition
        self.weight = nn.Parameter(torch.empty(per_partition, embedding_dim, dtype=config.params_dtype))
        _initialize_partitioned_weight(self.weight, (num_embeddings, embedding_dim), 0, init_method, self.pg,
                                       config.use_cpu_initialization)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        if self.pg.tensor_model_parallel_size > 1:
            outside = (input_ids < self.vocab_start_index) | (input_ids >= self.vocab_end_index)
            local_ids = (input_ids - self.vocab_start_index).masked_fill(outside, 0)
        else:
            local_ids = input_ids
        output = F.embedding(local_ids, self.weight)
        if self.pg.tensor_model_parallel_size > 1:
            output = output.masked_fill(outside.unsqueeze(-1), 0.0)
        return reduce_from_tensor_model_parallel_region(output, self.pg.tp)
