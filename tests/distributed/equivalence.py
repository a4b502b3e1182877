"""Helpers for layout-equivalence tests: one model, same weights and micro-batches, any layout.

The reference is the whole model built in-process with the trivial one-process groups (every
rank builds it locally, no communication). A parallel model is loaded from the reference's
weights by slicing (``load_from_reference``); after the schedule its gradients are gathered back
to full tensors under their global names (``gathered_grads``) and compared with the
reference's. Names are global once layer indices are shifted by each layer's global number and
the last stage's ``word_embeddings_for_head`` is mapped to the tied input embedding.
"""
from typing import Callable, Dict, List

import torch
import torch.distributed as dist

from megatron.checkpoint_tools.reshard import merge_tp, take_tp
from megatron.core.parallel_state import ProcessGroups
from megatron.core.pipeline_parallel import get_forward_backward_func, reduce_model_parallel_grads
from megatron.core.transformer import TransformerLayer

TIED_HEAD = "word_embeddings_for_head.weight"
TIED_INPUT = "language_model.embedding.word_embeddings.weight"


def global_names(model: torch.nn.Module) -> Dict[str, str]:
    """Local parameter name -> the name it has in the one-process model."""
    prefixes = {}
    for name, module in model.named_modules():
        if isinstance(module, TransformerLayer):
            head, _, _ = name.rpartition(".")
            prefixes[name + "."] = f"{head}.{module.layer_number - 1}."
    mapping = {}
    for name, _ in model.named_parameters():
        mapped = TIED_INPUT if name == TIED_HEAD else name
        for local, global_ in prefixes.items():
            if name.startswith(local):
                mapped = global_ + name[len(local):]
                break
        mapping[name] = mapped
    return mapping


def _shard(full: torch.Tensor, param: torch.Tensor, pg: ProcessGroups) -> torch.Tensor:
    if getattr(param, "tensor_model_parallel", False):
        # A strided parameter (SwiGLU's gate and up halves) splits each of its blocks over the ranks.
        return take_tp(full, param.partition_dim, pg.tensor_model_parallel_size, pg.tp_rank,
                       getattr(param, "partition_stride", 1))
    return full


def gather_tp(tensor: torch.Tensor, param: torch.Tensor, pg: ProcessGroups) -> torch.Tensor:
    """The full tensor of a tensor-parallel ``param``'s shard ``tensor`` (its value or gradient)."""
    parts = [torch.empty_like(tensor) for _ in range(pg.tensor_model_parallel_size)]
    dist.all_gather(parts, tensor.contiguous(), group=pg.tp)
    return merge_tp(parts, param.partition_dim, getattr(param, "partition_stride", 1))


def load_from_reference(chunks: List[torch.nn.Module], reference_state: Dict[str, torch.Tensor],
                        pg: ProcessGroups, prefix: str = "") -> None:
    for chunk in chunks:
        names = global_names(chunk)
        params = dict(chunk.named_parameters())
        with torch.no_grad():
            for local, global_ in names.items():
                params[local].copy_(_shard(reference_state[prefix + global_], params[local], pg))


def gathered_grads(chunks: List[torch.nn.Module], pg: ProcessGroups, prefix: str = "") -> Dict[str, torch.Tensor]:
    grads = {}
    for chunk in chunks:
        names = global_names(chunk)
        for local, param in chunk.named_parameters():
            grad = param.grad if param.grad is not None else torch.zeros_like(param)
            if getattr(param, "tensor_model_parallel", False):
                grad = gather_tp(grad, param, pg)
            grads[prefix + names[local]] = grad.detach().clone()
    return grads


def relative_error(got: torch.Tensor, want: torch.Tensor, atol: float = 1e-7, rtol: float = 1e-5) -> float:
    """||got - want|| / ||want||, with ||want|| floored at ``atol / rtol``.

    The floor exists for gradients that are zero analytically (e.g. the context projection's
    bias under an in-batch softmax, which is invariant to a shared shift) and so hold only
    rounding noise of order 1e-9 in either run.
    """
    scale = max(want.norm().item(), atol / rtol)
    return (got - want).norm().item() / scale


def assert_grads_match(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], label: str,
                       rtol: float = 1e-5) -> float:
    """Every gradient this rank holds equals the reference's to ``rtol`` (norm-relative); returns the worst."""
    worst = 0.0
    for name, grad in got.items():
        if name not in want:
            raise AssertionError(f"{label}: parameter {name} has no reference counterpart")
        if grad.shape != want[name].shape:
            raise AssertionError(f"{label}: {name} has shape {tuple(grad.shape)}, reference {tuple(want[name].shape)}")
        err = relative_error(grad, want[name], rtol=rtol)
        worst = max(worst, err)
        if err > rtol:
            raise AssertionError(f"{label}: gradient of {name} differs by {err:.2e} (relative) from the reference")
    return worst


def assert_all_covered(got: Dict[str, torch.Tensor], want: Dict[str, torch.Tensor], label: str) -> None:
    """Collectively, the ranks compared every reference parameter."""
    names = [None] * dist.get_world_size()
    dist.all_gather_object(names, sorted(got))
    covered = set().union(*map(set, names))
    missing = set(want) - covered
    if missing:
        raise AssertionError(f"{label}: no rank compared {sorted(missing)[:5]}")


def mean_loss(output: torch.Tensor) -> torch.Tensor:
    """The micro-batch loss: the mean of the per-token losses the model returns."""
    return output.float().mean()


def run_reference(model: torch.nn.Module, batches: list, forward: Callable) -> (List[float], Dict[str, torch.Tensor]):
    """Mean-over-micro-batches loss gradients of the one-process model; per-micro-batch losses.

    ``forward(model, batch)`` returns the model's per-token loss.
    """
    model.zero_grad(set_to_none=True)
    losses = []
    for batch in batches:
        loss = mean_loss(forward(model, batch))
        (loss / len(batches)).backward()
        losses.append(loss.item())
    grads = {n: (p.grad if p.grad is not None else torch.zeros_like(p)).detach().clone()
             for n, p in model.named_parameters()}
    return losses, grads


def run_schedule(chunks: List[torch.nn.Module], batches: list, forward: Callable, config, pg: ProcessGroups,
                 seq_length: int, micro_batch_size: int, decoder_seq_length=None) -> List[float]:
    """The schedule for ``pg``'s layout over ``batches``; per-micro-batch losses on the last stage."""
    def loss_func(output):
        loss = mean_loss(output)
        return loss, {"loss": loss.detach()}

    def forward_step_func(data_iterator, model):
        return forward(model, next(data_iterator)), loss_func

    for chunk in chunks:
        chunk.zero_grad(set_to_none=True)
    iterators = [iter(batches) for _ in chunks]
    schedule = get_forward_backward_func(pg)
    model_arg = chunks if len(chunks) > 1 else chunks[0]
    data_arg = iterators if len(chunks) > 1 else iterators[0]
    store = schedule(forward_step_func=forward_step_func, data_iterator=data_arg, model=model_arg,
                     num_microbatches=len(batches), seq_length=seq_length, micro_batch_size=micro_batch_size,
                     decoder_seq_length=decoder_seq_length, config=config, pg=pg,
                     finalize_model_grads_func=lambda models: reduce_model_parallel_grads(models, pg))
    return [entry["loss"].item() for entry in store]


def build_chunks(provider: Callable, pg: ProcessGroups) -> List[torch.nn.Module]:
    """One model per virtual stage (or a single one), with pre/post-process set by position."""
    virtual = pg.virtual_pipeline_model_parallel_size
    if virtual is None:
        return [provider(pg.is_pipeline_first_stage(), pg.is_pipeline_last_stage())]
    chunks = []
    for index in range(virtual):
        pg.virtual_pipeline_model_parallel_rank = index
        chunks.append(provider(pg.is_pipeline_first_stage(), pg.is_pipeline_last_stage()))
    pg.virtual_pipeline_model_parallel_rank = 0
    return chunks


REFERENCE_ONLY_FIELDS = ("sequence_parallel", "recompute_granularity", "recompute_method", "recompute_num_layers")


def check_layout(build: Callable, forward: Callable, make_config: Callable, overrides: dict, layout: tuple,
                 batches: list, seq_length: int, micro_batch_size: int, decoder_seq_length=None, seed: int = 7):
    """Compare one layout with the one-process model; returns (worst loss error, worst gradient error).

    ``build(config, pre_process, post_process, add_encoder, add_decoder, pg)`` makes one stage,
    ``forward(model, batch)`` runs a micro-batch (the scalar or per-token loss on the last stage).
    ``layout`` is ``(label, tp, pp, vpp, split_rank)``. Options that only change how the layout
    computes (sequence parallelism, recomputation) are left out of the reference.
    """
    from megatron.core import parallel_state

    label, tp, pp, vpp, split = layout
    config = make_config(**overrides)
    reference_config = make_config(**{k: v for k, v in overrides.items() if k not in REFERENCE_ONLY_FIELDS})
    torch.manual_seed(seed)
    reference = build(reference_config, True, True, True, True, ProcessGroups())
    ref_losses, ref_grads = run_reference(reference, batches, forward)

    pg = parallel_state.initialize_model_parallel(tp, pp, vpp, split)
    try:
        from megatron.core.tensor_parallel import model_parallel_manual_seed

        model_parallel_manual_seed(seed, pg.tp_rank)

        def provider(pre_process, post_process):
            if split is None:
                return build(config, pre_process, post_process, True, True, pg)
            rank = pg.pp_rank
            return build(config, rank in (0, split), rank in (split - 1, pp - 1),
                         pg.is_pipeline_stage_before_split(), pg.is_pipeline_stage_after_split(), pg)

        chunks = build_chunks(provider, pg)
        load_from_reference(chunks, reference.state_dict(), pg)
        losses = run_schedule(chunks, batches, forward, config, pg, seq_length, micro_batch_size, decoder_seq_length)
        loss_err = 0.0
        if pg.is_pipeline_last_stage(ignore_virtual=True):
            if len(losses) != len(ref_losses):
                raise AssertionError(f"{label}: {len(losses)} losses, expected {len(ref_losses)}")
            for got, want in zip(losses, ref_losses):
                loss_err = max(loss_err, abs(got - want) / abs(want))
            if loss_err > 1e-5:
                raise AssertionError(f"{label}: loss differs by {loss_err:.2e} (relative)")
        elif losses:
            raise AssertionError(f"{label}: a stage other than the last reported losses")
        grads = gathered_grads(chunks, pg)
        grad_err = assert_grads_match(grads, ref_grads, label)
        assert_all_covered(grads, ref_grads, label)
        return loss_err, grad_err
    finally:
        parallel_state.destroy_model_parallel()
