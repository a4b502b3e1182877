"""Gradient reductions that model parallelism adds after backward (before any data-parallel sync).

* Sequence parallelism: parameters applied to sequence shards (layer norms, row-parallel
  biases, BERT's LM-head transform) hold partial gradients; sum them over the TP group.
* Tied embeddings across pipeline stages: sum the first stage's word-embedding gradient with
  the last stage's copy (and, for an encoder-decoder split, the first decoder stage's), so every
  copy takes the same optimizer step; likewise the position embeddings of a split model.
"""
from typing import Iterable, List, Optional

import torch
from torch._utils import _flatten_dense_tensors, _unflatten_dense_tensors

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel.mappings import all_reduce


def unwrap_model(module):
    """Strip wrappers (DDP, Float16Module, ...) that keep the real model in ``.module``."""
    while hasattr(module, "module") and isinstance(module.module, torch.nn.Module):
        module = module.module
    return module


def _grad_attr(param: torch.Tensor) -> str:
    """The local DDP wrapper accumulates into ``main_grad``; plain modules and torch DDP use ``grad``."""
    return "main_grad" if hasattr(param, "main_grad") else "grad"


def _all_reduce_coalesced(grads: List[torch.Tensor], group) -> None:
    if not grads:
        return
    flat = _flatten_dense_tensors(grads)
    all_reduce(flat, group)
    for grad, synced in zip(grads, _unflatten_dense_tensors(flat, grads)):
        grad.copy_(synced)


def allreduce_sequence_parallel_grads(model_chunks: Iterable[torch.nn.Module], pg: ProcessGroups) -> None:
    if pg.tensor_model_parallel_size == 1:
        return
    grads = [getattr(p, _grad_attr(p)) for chunk in model_chunks for p in chunk.parameters()
             if getattr(p, "sequence_parallel", False) and getattr(p, _grad_attr(p)) is not None]
    _all_reduce_coalesced(grads, pg.tp)


def allreduce_embedding_grads(model_chunks: List[torch.nn.Module], pg: ProcessGroups) -> None:
    if pg.pipeline_model_parallel_size == 1:
        return
    chunks = [unwrap_model(chunk) for chunk in model_chunks]
    if pg.rank in pg.embd_ranks and len(pg.embd_ranks) > 1:
        owners = [c for c in chunks if hasattr(c, "word_embeddings_weight")
                  and (c.pre_process or c.has_output_layer()) and c.word_embeddings_weight() is not None]
        if owners:
            weight = owners[0].word_embeddings_weight()
            attr = _grad_attr(weight)
            grad = getattr(weight, attr)
            grad = grad if grad is not None else torch.zeros_like(weight)
            all_reduce(grad, pg.embd)
            setattr(weight, attr, grad)
    if (pg.pipeline_model_parallel_split_rank is not None and pg.rank in pg.pos_embd_ranks
            and len(pg.pos_embd_ranks) > 1):
        owners = [c for c in chunks if getattr(c, "pre_process", False)
                  and getattr(c.language_model.embedding, "add_position_embedding", False)]
        if owners:
            weight = owners[0].language_model.embedding.position_embeddings.weight
            attr = _grad_attr(weight)
            grad = getattr(weight, attr)
            grad = grad if grad is not None else torch.zeros_like(weight)
            all_reduce(grad, pg.pos_embd)
            setattr(weight, attr, grad)


def reduce_model_parallel_grads(model_chunks: List[torch.nn.Module], pg: Optional[ProcessGroups] = None) -> None:
    """Every model-parallel gradient reduction, in the order Megatron-LM applies them."""
    pg = pg if pg is not None else get_process_groups()
    chunks = [unwrap_model(chunk) for chunk in model_chunks]
    allreduce_sequence_parallel_grads(chunks, pg)
    allreduce_embedding_grads(chunks, pg)
