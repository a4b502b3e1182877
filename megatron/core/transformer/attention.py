"""Tensor-parallel self- and cross-attention.

Heads are split across tensor-parallel ranks: the fused QKV projection is column-parallel, the
output projection row-parallel, so a whole attention block needs one all-reduce in forward and
one in backward. Inside the block tensors are ``[s, b, h]``.

Fused QKV rows are ordered per query group, ``[groups, heads_per_group + 2, head_dim]``: a
group's query heads, then its key head and its value head (Megatron's grouped-query layout).
With one group per head (multi-head attention) that is ``[heads, 3, head_dim]`` (Megatron
checkpoint version >= 2.0), so the released checkpoints load without permutation; either way a
contiguous slice of rows is a contiguous run of whole groups, which is how TP splits them.
Keys and values are kept per group (also in the inference cache) and repeated for their query
heads only inside the core attention.
"""
import contextlib
import math
from typing import Optional

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core.fusions import fused
from megatron.core.fusions.tracked_dropout import tracked_dropout
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import ColumnParallelLinear, RowParallelLinear, checkpoint, get_rng_tracker
from megatron.core.transformer.config import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType, AttnType
from megatron.core.utils import divide


class RotaryEmbedding(nn.Module):
    """Rotary position embedding frequencies for the first ``rotary_percent`` of each head."""

    def __init__(self, kv_channels: int, rotary_percent: float = 1.0, base: float = 10000.0):
        super().__init__()
        dim = int(kv_channels * rotary_percent)
        if dim % 2 != 0 or dim == 0:
            raise ValueError(f"rotary dimension {dim} (kv_channels {kv_channels} x rotary_percent {rotary_percent}) must be even and > 0")
        self.dim = dim
        self.register_buffer("inv_freq", 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.float32) / dim)), persistent=False)

    def forward(self, seq_length: int, offset: int = 0) -> torch.Tensor:
        """Frequencies of positions ``offset .. offset + seq_length - 1``."""
        positions = torch.arange(offset, offset + seq_length, dtype=torch.float32, device=self.inv_freq.device)
        freqs = torch.outer(positions, self.inv_freq)
        return torch.cat((freqs, freqs), dim=-1)[:, None, None, :]  # [s, 1, 1, dim]


def apply_rotary_pos_emb(t: torch.Tensor, freqs: torch.Tensor) -> torch.Tensor:
    """Rotate the first ``freqs.shape[-1]`` channels of ``t`` ([s, b, np, hn]) by position."""
    dim = freqs.shape[-1]
    rot, rest = t[..., :dim], t[..., dim:]
    half = dim // 2
    rotated_half = torch.cat((-rot[..., half:], rot[..., :half]), dim=-1)
    cos, sin = freqs.cos().to(t.dtype), freqs.sin().to(t.dtype)
    return torch.cat((rot * cos + rotated_half * sin, rest), dim=-1)


def build_attention_mask(attention_mask: Optional[torch.Tensor], attn_mask_type: AttnMaskType,
                         sq: int, sk: int, device) -> Optional[torch.Tensor]:
    """One boolean mask (True = masked) from the caller's mask and the causal structure."""
    if attn_mask_type == AttnMaskType.causal:
        # Queries are the last sq of the sk positions (sq < sk when earlier keys come from an
        # inference KV cache), so query i may see keys up to sk - sq + i.
        causal = torch.ones(sq, sk, dtype=torch.bool, device=device).triu(diagonal=sk - sq + 1)[None, None]
        return causal if attention_mask is None else (attention_mask | causal)
    return attention_mask


class CoreAttention(nn.Module):
    """softmax(QK^T / sqrt(d)) V for this rank's heads. No parameters."""

    def __init__(self, config: TransformerConfig, layer_number: int, attn_mask_type: AttnMaskType,
                 pg: ProcessGroups):
        super().__init__()
        self.config = config
        self.attn_mask_type = attn_mask_type
        self.dropout_p = config.attention_dropout
        self.softmax_in_fp32 = config.attention_softmax_in_fp32
        # Query-key layer scaling divides the scores by the layer number before they can overflow
        # fp16 and multiplies it back inside the fp32 softmax; the result is mathematically unchanged.
        self.coeff = float(max(1, layer_number)) if config.apply_query_key_layer_scaling else 1.0
        # μP scales scores by 1 / d_head (keys and queries become correlated during training, so their
        # dot product grows like d_head, not its root), times sqrt(base d_head) so the base width is unchanged.
        self.softmax_scale = None
        head_scale = math.sqrt(config.kv_channels)
        if config.use_mup:
            head_scale = config.kv_channels / math.sqrt(config.mup_base_kv_channels)
            self.softmax_scale = 1.0 / head_scale
        self.norm_factor = head_scale * self.coeff

    def forward(self, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                attention_mask: Optional[torch.Tensor]) -> torch.Tensor:
        # query [sq, b, np, hn]; key, value [sk, b, ng, hn] with ng dividing np
        sq, b, np_, hn = query.shape
        sk = key.shape[0]
        mask = build_attention_mask(attention_mask, self.attn_mask_type, sq, sk, query.device)
        # Compiled with attention dropout, the explicit path runs: SDPA's dropout needs the RNG
        # fork, which Dynamo cannot trace (fusions/tracked_dropout.py).
        compiled_dropout = torch.compiler.is_compiling() and self.training and self.dropout_p > 0
        if self.config.attention_backend == "sdpa" and not compiled_dropout:
            plain_causal = self.attn_mask_type == AttnMaskType.causal and attention_mask is None and sq == sk
            context = self._sdpa(query, key, value, None if plain_causal else mask, plain_causal)
        else:
            plain_causal = self.attn_mask_type == AttnMaskType.causal and attention_mask is None
            context = self._unfused(query, key, value, mask, plain_causal)
        return context.reshape(sq, b, np_ * hn)  # [sq, b, np * hn]

    def _sdpa(self, query, key, value, mask, is_causal):
        q, k, v = (t.permute(1, 2, 0, 3) for t in (query, key, value))  # [b, np, s, hn]; k, v [b, ng, s, hn]
        # Grouped-query attention: SDPA reads each group's keys for its heads without copying them
        # (query head j uses group j // (np / ng), the order of the fused QKV rows).
        gqa = {"enable_gqa": True} if k.shape[1] != q.shape[1] else {}
        attn_mask = None
        if mask is not None:
            # Additive -10000 rather than a boolean mask, matching the explicit path instead of
            # producing NaN for fully masked rows (padding queries).
            attn_mask = torch.zeros(mask.shape, dtype=q.dtype, device=q.device).masked_fill(mask, -10000.0)
        dropout_p = self.dropout_p if self.training else 0.0
        with get_rng_tracker().fork() if dropout_p > 0 else contextlib.nullcontext():
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=attn_mask, dropout_p=dropout_p, is_causal=is_causal,
                                                 scale=self.softmax_scale, **gqa)
        return out.permute(2, 0, 1, 3)  # [sq, b, np, hn]

    def _unfused(self, query, key, value, mask, causal: bool = False):
        sq, b, np_, hn = query.shape
        sk = key.shape[0]
        if key.shape[2] != np_:
            # Query head j of a rank uses key/value group j // (np / ng), as the fused rows are ordered.
            key = key.repeat_interleave(np_ // key.shape[2], dim=2)  # [sk, b, np, hn]
            value = value.repeat_interleave(np_ // value.shape[2], dim=2)
        q = query.reshape(sq, b * np_, hn).transpose(0, 1)  # [b * np, sq, hn]
        k = key.reshape(sk, b * np_, hn).transpose(0, 1)  # [b * np, sk, hn]
        v = value.reshape(sk, b * np_, hn).transpose(0, 1)
        scores = torch.bmm(q, k.transpose(1, 2)) * (1.0 / self.norm_factor)
        scores = scores.view(b, np_, sq, sk)
        probs = fused.masked_softmax(scores, mask, self.coeff, self.softmax_in_fp32, causal=causal,
                                     enabled=self.config.masked_softmax_fusion)
        if self.training and self.dropout_p > 0:
            # Each rank holds different heads, so their dropout must come from the per-rank stream.
            if torch.compiler.is_compiling():
                probs = tracked_dropout(probs, self.dropout_p)
            else:
                with get_rng_tracker().fork():
                    probs = F.dropout(probs, p=self.dropout_p)
        context = torch.bmm(probs.view(b * np_, sq, sk), v)  # [b * np, sq, hn]
        return context.view(b, np_, sq, hn).permute(2, 0, 1, 3)  # [sq, b, np, hn]


class ParallelAttention(nn.Module):
    """Self-attention (fused ``query_key_value``) or cross-attention (``query`` + ``key_value``)."""

    def __init__(self, config: TransformerConfig, layer_number: int,
                 attention_type: AttnType = AttnType.self_attn,
                 attn_mask_type: AttnMaskType = AttnMaskType.padding,
                 pg: Optional[ProcessGroups] = None):
        super().__init__()
        pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.attention_type = attention_type
        tp = pg.tensor_model_parallel_size
        config.validate_layout(tp)
        projection_size = config.kv_channels * config.num_attention_heads
        kv_projection_size = config.kv_channels * config.num_query_groups
        bias = config.add_bias_linear
        self.hidden_size_per_attention_head = config.kv_channels
        self.num_attention_heads_per_partition = divide(config.num_attention_heads, tp, "num_attention_heads vs tensor_model_parallel_size")
        self.num_query_groups_per_partition = divide(config.num_query_groups, tp, "num_query_groups vs tensor_model_parallel_size")
        if attention_type == AttnType.self_attn:
            self.query_key_value = ColumnParallelLinear(
                config.hidden_size, projection_size + 2 * kv_projection_size, config=config,
                init_method=config.init_method, bias=bias, pg=pg, mup_base_fan_in=config.mup_base_fan_in("hidden"))
        else:
            if config.num_query_groups != config.num_attention_heads:
                raise ValueError(f"cross-attention has no grouped-query form: num_query_groups {config.num_query_groups} "
                                 f"must equal num_attention_heads {config.num_attention_heads}")
            self.query = ColumnParallelLinear(
                config.hidden_size, projection_size, config=config, init_method=config.init_method, bias=bias, pg=pg,
                mup_base_fan_in=config.mup_base_fan_in("hidden"))
            self.key_value = ColumnParallelLinear(
                config.hidden_size, 2 * projection_size, config=config, init_method=config.init_method, bias=bias, pg=pg,
                mup_base_fan_in=config.mup_base_fan_in("hidden"))
        self.core_attention = CoreAttention(config, layer_number, attn_mask_type, pg)
        self.recompute_core_attention = config.recompute_granularity == "selective"
        self.dense = RowParallelLinear(
            projection_size, config.hidden_size, config=config, init_method=config.output_layer_init_method,
            bias=bias, input_is_parallel=True, skip_bias_add=True, pg=pg, mup_base_fan_in=config.mup_base_fan_in("attention"))
        # Incremental decoding (megatron/text_generation) sets an object with
        # ``update(key, value) -> (all_keys, all_values)`` that appends this step's keys and values
        # [s, b, ng, hn] to those of earlier steps, and ``rotary_frequencies(s)`` giving the rotary
        # frequencies of the s positions after the cached ones; None (training, recompute) attends
        # to the input only.
        self.inference_cache = None

    def forward(self, hidden_states: torch.Tensor, attention_mask: Optional[torch.Tensor],
                encoder_output: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None):
        np_, hn = self.num_attention_heads_per_partition, self.hidden_size_per_attention_head
        if self.attention_type == AttnType.self_attn:
            ng = self.num_query_groups_per_partition
            per_group = np_ // ng
            mixed, _ = self.query_key_value(hidden_states)  # [sq, b, ng * (np / ng + 2) * hn]
            mixed = mixed.view(mixed.shape[0], mixed.shape[1], ng, (per_group + 2) * hn)
            query, key, value = torch.split(mixed, [per_group * hn, hn, hn], dim=-1)
            query = query.reshape(query.shape[0], query.shape[1], np_, hn)  # [sq, b, np, hn]; key, value [sq, b, ng, hn]
        else:
            if encoder_output is None:
                raise ValueError("cross-attention needs encoder_output")
            mixed, _ = self.key_value(encoder_output)  # [sk, b, np * 2 * hn]
            mixed = mixed.view(mixed.shape[0], mixed.shape[1], np_, 2 * hn)
            key, value = torch.split(mixed, hn, dim=-1)
            query, _ = self.query(hidden_states)
            query = query.view(query.shape[0], query.shape[1], np_, hn)
        cache = self.inference_cache if self.attention_type == AttnType.self_attn else None
        if rotary_pos_emb is not None and cache is not None:
            # The caller's frequencies count from position 0 of its input; a cached step's input
            # continues after the cached positions, so its keys must be rotated by their absolute
            # positions before they are cached (as a full forward would have rotated them).
            rotary_pos_emb = cache.rotary_frequencies(query.shape[0]).to(rotary_pos_emb.device)
        if rotary_pos_emb is not None:
            # A pair gives queries and keys their own positions (RETRO's chunked cross-attention
            # offsets the queries against the neighbours' positions).
            q_freqs, k_freqs = rotary_pos_emb if isinstance(rotary_pos_emb, tuple) else (rotary_pos_emb, rotary_pos_emb)
            query = apply_rotary_pos_emb(query, q_freqs[: query.shape[0]])
            key = apply_rotary_pos_emb(key, k_freqs[: key.shape[0]])
        if cache is not None:
            key, value = cache.update(key, value)  # [sk, b, np, hn], sk >= sq
        if self.recompute_core_attention and self.training:
            context = checkpoint(self.core_attention, query, key, value, attention_mask)
        else:
            context = self.core_attention(query, key, value, attention_mask)
        return self.dense(context)  # (output [sq, b, h], bias)
