"""Training-layer helpers: loss averaging across data-parallel ranks, GPT masks and position ids,
throughput (Megatron's FLOPs formula), and Megatron's names for rank-filtered messages."""
from typing import Dict, Iterable, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.rank_logging import log_rank_0, log_rank_last


# Megatron's names for the two rank-filtered messages; both go through the ``megatron`` logger.
print_rank_0 = log_rank_0
print_rank_last = log_rank_last


def is_last_rank() -> bool:
    return not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1


def average_losses_across_data_parallel_group(losses: List[torch.Tensor], group=None) -> torch.Tensor:
    """Mean of each loss over the data-parallel ranks (for reporting; gradients are already averaged)."""
    averaged = torch.cat([loss.detach().float().reshape(1) for loss in losses])
    if group is not None and dist.is_initialized() and dist.get_world_size(group) > 1:
        dist.all_reduce(averaged, group=group)
        averaged = averaged / dist.get_world_size(group)
    return averaged


def masked_mean(per_token: torch.Tensor, loss_mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``per_token`` [b, s] over the positions where ``loss_mask`` is 1."""
    mask = loss_mask.reshape(-1).float()
    # An all-zero mask (a micro-batch of padding) scores 0 instead of 0/0; no host sync to check it.
    return torch.sum(per_token.reshape(-1).float() * mask) / mask.sum().clamp(min=1.0)


def get_ltor_masks_and_position_ids(data: torch.Tensor, eod_token: Optional[int], reset_position_ids: bool,
                                    reset_attention_mask: bool, eod_mask_loss: bool
                                    ) -> Tuple[Optional[torch.Tensor], torch.Tensor, torch.Tensor]:
    """Left-to-right masks for GPT: (attention_mask, loss_mask, position_ids).

    ``attention_mask`` is ``[b, 1, s, s]`` bool, True where attention is forbidden (causal plus,
    with ``reset_attention_mask``, no attention across end-of-document tokens), or None when
    the model's own causal mask suffices. ``reset_position_ids`` restarts positions after each
    end-of-document token; ``eod_mask_loss`` drops the loss on end-of-document tokens.
    """
    micro_batch_size, seq_length = data.shape
    loss_mask = torch.ones(data.shape, dtype=torch.float, device=data.device)
    if eod_mask_loss:
        if eod_token is None:
            raise ValueError("--eod-mask-loss needs a tokenizer with an end-of-document token")
        loss_mask[data == eod_token] = 0.0
    position_ids = torch.arange(seq_length, dtype=torch.long, device=data.device).unsqueeze(0).expand_as(data).clone()
    if not (reset_position_ids or reset_attention_mask):
        return None, loss_mask, position_ids
    if eod_token is None:
        raise ValueError("--reset-position-ids/--reset-attention-mask need a tokenizer with an end-of-document token")
    keep = None
    if reset_attention_mask:
        keep = torch.tril(torch.ones((micro_batch_size, seq_length, seq_length), dtype=torch.bool, device=data.device))
    for b in range(micro_batch_size):
        eod_positions = (data[b] == eod_token).nonzero(as_tuple=True)[0].tolist()
        previous = 0
        for position in eod_positions:
            if reset_attention_mask:
                # Tokens after this end-of-document cannot see it or anything before it.
                keep[b, position + 1:, :position + 1] = False
            if reset_position_ids:
                position_ids[b, position + 1:] -= position + 1 - previous
                previous = position + 1
    attention_mask = None if keep is None else (~keep).unsqueeze(1)
    return attention_mask, loss_mask, position_ids



def causal_lm_batch(text: torch.Tensor, tokenizer, args):
    """(tokens, labels, loss_mask, attention_mask, position_ids) of a left-to-right LM batch: a
    ``[b, s + 1]`` id tensor shifted by one, with Megatron's masks (``--reset-position-ids``,
    ``--reset-attention-mask``, ``--eod-mask-loss``) at the tokenizer's end-of-document id."""
    text = text.long()
    tokens, labels = text[:, :-1].contiguous(), text[:, 1:].contiguous()
    eod = getattr(tokenizer, "eod", None) if tokenizer is not None else None
    attention_mask, loss_mask, position_ids = get_ltor_masks_and_position_ids(
        tokens, eod, args.reset_position_ids, args.reset_attention_mask, args.eod_mask_loss)
    return tokens, labels, loss_mask, attention_mask, position_ids

def num_floating_point_operations(batch_size: int, seq_length: int, num_layers: int, hidden_size: int,
                                  padded_vocab_size: int, recompute: bool, *, num_attention_heads: Optional[int] = None,
                                  num_query_groups: Optional[int] = None, kv_channels: Optional[int] = None,
                                  ffn_hidden_size: Optional[int] = None, swiglu: bool = False) -> float:
    """Megatron's FLOPs per iteration for a GPT-style model (Narayanan et al., 2021, eq. 3), generalised
    to grouped-query attention, any head size and MLP width, and SwiGLU.

    Forward matrix multiplies of one layer, 2 FLOPs per multiply-add, with ``p = heads x kv_channels``
    query channels and ``g = groups x kv_channels`` key (and value) channels:
    QKV ``2 B s h (p + 2g)``, scores and attention over values ``4 B s^2 p``, output projection
    ``2 B s p h``, MLP ``2 B s h f (2 with SwiGLU: gate and up) + 2 B s f h``; logits ``2 B s h V``.
    Backward costs twice the forward, so one iteration is 3 forward passes of the layers, 4 with
    full recomputation; the logits are never recomputed (3 passes). With the defaults (p = g = h,
    f = 4h, GeLU) and recomputation this is the paper's ``96 B s L h^2 (1 + s / 6h + V / 16 L h)``.
    (Megatron-LM's code scaled the logits term by 3/4 without recomputation; here they count in full.)
    """
    passes = 4 if recompute else 3
    h, s = hidden_size, seq_length
    if num_attention_heads is None:
        query = key = h
    else:
        channels = kv_channels if kv_channels is not None else h // num_attention_heads
        query = num_attention_heads * channels
        key = (num_query_groups if num_query_groups is not None else num_attention_heads) * channels
    ffn = ffn_hidden_size if ffn_hidden_size is not None else 4 * h
    per_token_layer = (2 * h * (query + 2 * key) + 4 * s * query + 2 * query * h
                       + 2 * h * ffn * (2 if swiglu else 1) + 2 * ffn * h)
    logits = 2 * h * padded_vocab_size
    return float(batch_size * s * (passes * num_layers * per_token_layer + 3 * logits))


def flops_per_iteration_from_args(args, batch_size: int) -> float:
    """``num_floating_point_operations`` for validated training ``args`` (GQA, SwiGLU, head size, MLP width)."""
    return num_floating_point_operations(
        batch_size, args.seq_length or args.encoder_seq_length, args.num_layers, args.hidden_size,
        args.padded_vocab_size, getattr(args, "recompute_granularity", None) == "full",
        num_attention_heads=getattr(args, "num_attention_heads", None), num_query_groups=getattr(args, "num_query_groups", None),
        kv_channels=getattr(args, "kv_channels", None), ffn_hidden_size=getattr(args, "ffn_hidden_size", None),
        swiglu=bool(getattr(args, "swiglu", False)))


def throughput(flops_per_iteration: float, seconds_per_iteration: float, world_size: int,
               peak_flops_per_gpu: float) -> Tuple[float, Optional[float]]:
    """(TFLOP/s per GPU, model FLOPs utilisation or None when the peak is unknown)."""
    if seconds_per_iteration <= 0:
        return 0.0, None
    per_gpu = flops_per_iteration / (seconds_per_iteration * world_size)
    mfu = per_gpu / peak_flops_per_gpu if peak_flops_per_gpu and peak_flops_per_gpu > 0 else None
    return per_gpu / 1e12, mfu


def calc_params_l2_norm(model_chunks: Iterable[torch.nn.Module], pg) -> float:
    """L2 norm of all parameters, each counted once across TP shards and pipeline stages."""
    squares = torch.zeros(1, dtype=torch.float64)
    for chunk in model_chunks:
        for name, param in chunk.named_parameters():
            # The last stage's copy of the tied word embedding is the first stage's weight.
            if "word_embeddings_for_head" in name:
                continue
            replicated = not getattr(param, "tensor_model_parallel", False)
            if replicated and pg.tp_rank != 0:
                continue
            squares += param.detach().double().pow(2).sum().cpu()
    if dist.is_initialized() and pg.mp is not None and len(pg.mp_ranks) > 1:
        dist.all_reduce(squares, group=pg.mp)
    return float(squares.sqrt().item())


def report_memory(name: str) -> Dict[str, float]:
    """CUDA allocator statistics in MB (empty on the CPU)."""
    if not torch.cuda.is_available():
        return {}
    mb = 1024 * 1024
    return {
        f"{name} allocated": torch.cuda.memory_allocated() / mb,
        f"{name} max allocated": torch.cuda.max_memory_allocated() / mb,
        f"{name} reserved": torch.cuda.memory_reserved() / mb,
    }
