"""The optimizer: Megatron's parameter groups, mixed precision, loss scaling, gradient clipping,
the distributed (ZeRO-1) optimizer and the learning-rate / weight-decay schedule."""
from typing import Callable, Dict, List, Optional, Set

import torch

from megatron.core import mup
from megatron.core.optimizer.config import OptimizerConfig
from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
from megatron.core.optimizer.grad_scaler import ConstantGradScaler, DynamicGradScaler
from megatron.core.optimizer.opt_param_scheduler import OptimizerParamScheduler
from megatron.core.optimizer.optimizer import (
    Float16OptimizerWithFloat16Params,
    FP32Optimizer,
    MegatronOptimizer,
)
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.pipeline_parallel.finalize import unwrap_model

__all__ = [
    "ConstantGradScaler", "DistributedOptimizer", "DynamicGradScaler", "FP32Optimizer",
    "Float16OptimizerWithFloat16Params", "MegatronOptimizer", "OptimizerConfig", "OptimizerParamScheduler",
    "get_megatron_optimizer", "get_param_groups", "tied_duplicate_params",
]


def get_param_groups(model_chunks: List[torch.nn.Module], no_weight_decay_cond: Optional[Callable] = None,
                     scale_lr_cond: Optional[Callable] = None, lr_mult: float = 1.0) -> List[Dict]:
    """Megatron's groups: biases and 1-D parameters (LayerNorm) get no weight decay; parameters
    selected by ``scale_lr_cond(name, param)`` get ``lr_mult``. The scheduler multiplies its values by
    each group's ``wd_mult`` / ``lr_mult``.

    μP hidden matrices (``core/mup.py``) carry a learning-rate multiplier of their own, multiplied
    into their group's ``lr_mult``; each distinct multiplier is a group, ordered by decreasing
    multiplier after Megatron's order, so the same model always yields the same groups (which a
    checkpoint's optimizer state is matched against)."""
    buckets: Dict[tuple, List[torch.nn.Parameter]] = {}
    seen = set()
    for chunk in model_chunks:
        for name, param in unwrap_model(chunk).named_parameters():
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            if no_weight_decay_cond is not None:
                no_wd = bool(no_weight_decay_cond(name, param))
            else:
                no_wd = name.endswith(".bias") or param.dim() == 1
            scale_lr = bool(scale_lr_cond(name, param)) if scale_lr_cond is not None else False
            key = (0.0 if no_wd else 1.0, lr_mult if scale_lr else 1.0, mup.lr_mult(param))
            buckets.setdefault(key, []).append(param)
    megatron_order = {key: rank for rank, key in enumerate(dict.fromkeys(
        [(1.0, 1.0), (1.0, lr_mult), (0.0, 1.0), (0.0, lr_mult)]))}
    groups = []
    for key in sorted(buckets, key=lambda k: (megatron_order[k[:2]], -k[2])):
        groups.append({"params": buckets[key], "wd_mult": key[0], "lr_mult": key[1] * key[2]})
    return groups


def tied_duplicate_params(model_chunks: List[torch.nn.Module], pg: ProcessGroups) -> Set[torch.nn.Parameter]:
    """Copies of tied embeddings held by later pipeline stages: kept equal to the first stage's
    table by the embedding all-reduce, so the global gradient norm counts them only once."""
    duplicates = set()
    for chunk in model_chunks:
        core = unwrap_model(chunk)
        if (pg.pipeline_model_parallel_size > 1 and len(pg.embd_ranks) > 1 and pg.rank in pg.embd_ranks
                and pg.rank != pg.embd_ranks[0] and hasattr(core, "word_embeddings_weight")):
            weight = core.word_embeddings_weight()
            if weight is not None:
                duplicates.add(weight)
        if (pg.pipeline_model_parallel_split_rank is not None and len(pg.pos_embd_ranks) > 1
                and pg.rank in pg.pos_embd_ranks and pg.rank != pg.pos_embd_ranks[0]
                and getattr(core, "pre_process", False)):
            embedding = getattr(getattr(core, "language_model", None), "embedding", None)
            if embedding is not None and getattr(embedding, "add_position_embedding", False):
                duplicates.add(embedding.position_embeddings.weight)
    return duplicates


def get_megatron_optimizer(config: OptimizerConfig, model_chunks: List[torch.nn.Module],
                           pg: Optional[ProcessGroups] = None, no_weight_decay_cond: Optional[Callable] = None,
                           scale_lr_cond: Optional[Callable] = None, lr_mult: float = 1.0) -> MegatronOptimizer:
    """Build the optimizer for this rank's model chunks (plain, local-DDP or torch-DDP wrapped).

    fp16 selects fp32 masters with a loss scaler (static ``loss_scale`` or dynamic), bf16 fp32
    masters without one, neither the plain fp32 optimizer; ``use_distributed_optimizer`` shards
    masters and state over data-parallel ranks and needs chunks wrapped in the local DDP.
    """
    pg = pg if pg is not None else get_process_groups()
    if not isinstance(model_chunks, (list, tuple)):
        model_chunks = [model_chunks]
    model_chunks = list(model_chunks)
    groups = get_param_groups(model_chunks, no_weight_decay_cond, scale_lr_cond, lr_mult)
    if not groups:
        raise ValueError("get_megatron_optimizer: the model chunks have no trainable parameters")
    if config.optimizer != "adam" and any(mup.lr_mult(p) != 1.0 for g in groups for p in g["params"]):
        raise ValueError(f"the model is μP (use_mup) and its learning-rate rule is Adam's; optimizer "
                         f"{config.optimizer!r} needs other multipliers")
    duplicates = tied_duplicate_params(model_chunks, pg)
    grad_scaler = None
    if config.fp16:
        if config.loss_scale is not None:
            grad_scaler = ConstantGradScaler(config.loss_scale)
        else:
            grad_scaler = DynamicGradScaler(config.initial_loss_scale, config.min_loss_scale, growth_factor=2.0,
                                            backoff_factor=0.5, growth_interval=int(config.loss_scale_window),
                                            hysteresis=config.hysteresis)
    if config.use_distributed_optimizer:
        return DistributedOptimizer(config, groups, model_chunks, pg, grad_scaler, duplicates)
    if config.fp16 or config.bf16:
        return Float16OptimizerWithFloat16Params(config, groups, model_chunks, pg, grad_scaler, duplicates)
    return FP32Optimizer(config, groups, model_chunks, pg, duplicates)
