"""Batched autoregressive decoding for a GPT model (one pipeline stage holding the whole model).

Prompts of different lengths share one token buffer: decoding starts at the shortest prompt, and
a row whose prompt is longer keeps its own prompt tokens until they run out (Megatron's scheme).
With the KV cache (default) each step feeds only the new positions and attention reads the keys
and values of earlier steps from the cache; ``use_cache=False`` re-runs the whole prefix every
step (Megatron's ``--recompute``). Both see the same causal attention, so greedy outputs agree.

Under tensor parallelism every rank computes the same gathered logits; the token chosen by
tensor-parallel rank 0 is broadcast so that sampling can never drift apart between ranks.
"""
import contextlib
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.transformer.attention import ParallelAttention
from megatron.core.transformer.enums import AttnType
from megatron.text_generation.sampling import SamplingParams, sample


class KVCache:
    """Keys and values [s, b, np, hn] of the positions one self-attention layer has already seen."""

    def __init__(self):
        self.key: Optional[torch.Tensor] = None
        self.value: Optional[torch.Tensor] = None

    def update(self, key: torch.Tensor, value: torch.Tensor):
        if self.key is None:
            self.key, self.value = key, value
        else:
            self.key = torch.cat((self.key, key), dim=0)
            self.value = torch.cat((self.value, value), dim=0)
        return self.key, self.value


@contextlib.contextmanager
def kv_cache(model: torch.nn.Module):
    """Give every self-attention layer of ``model`` a fresh, empty cache for the duration of the block."""
    layers = [m for m in model.modules()
              if isinstance(m, ParallelAttention) and m.attention_type == AttnType.self_attn]
    for layer in layers:
        layer.inference_cache = KVCache()
    try:
        yield
    finally:
        for layer in layers:
            layer.inference_cache = None


def _check_layout(model: torch.nn.Module, pg: ProcessGroups) -> None:
    if pg.pipeline_model_parallel_size > 1:
        raise ValueError(f"text generation runs on one pipeline stage; --pipeline-model-parallel-size "
                         f"{pg.pipeline_model_parallel_size} > 1 is not supported (reshard the checkpoint "
                         f"with tools/checkpoint_util.py --target-pipeline-parallel-size 1)")
    inner = getattr(model, "module", model)
    if getattr(inner, "parallel_output", False):
        raise ValueError("text generation needs the full-vocabulary logits: build GPTModel with parallel_output=False")


def _logits(model, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    output = model(tokens, position_ids, None)  # [b, s, v]
    return output[:, -1, :]


def _agree_across_tensor_parallel(tokens: torch.Tensor, pg: ProcessGroups) -> torch.Tensor:
    if pg.tensor_model_parallel_size > 1:
        dist.broadcast(tokens, src=pg.tp_src_rank, group=pg.tp)
    return tokens


@torch.no_grad()
def generate_tokens(model: torch.nn.Module, prompts: Sequence[Sequence[int]], tokens_to_generate: int,
                    params: SamplingParams, eod: int, max_sequence_length: int, vocab_size: Optional[int] = None,
                    use_cache: bool = True, generator: Optional[torch.Generator] = None,
                    pg: Optional[ProcessGroups] = None) -> List[Dict]:
    """Continue each prompt (token ids) by up to ``tokens_to_generate`` tokens, stopping at ``eod``.

    Returns one dict per prompt: ``tokens`` (the continuation, without the final ``eod``) and
    ``finished`` (True when ``eod`` ended it). A sequence never grows past ``max_sequence_length``.
    """
    pg = pg if pg is not None else get_process_groups()
    _check_layout(model, pg)
    if not prompts:
        return []
    if tokens_to_generate < 0:
        raise ValueError(f"tokens_to_generate must be >= 0, got {tokens_to_generate}")
    lengths_list = [len(p) for p in prompts]
    if min(lengths_list) == 0:
        raise ValueError("every prompt needs at least one token (use the eod token for unconditional generation)")
    if max(lengths_list) >= max_sequence_length:
        raise ValueError(f"a prompt of {max(lengths_list)} tokens leaves no room to generate within the "
                         f"maximum sequence length {max_sequence_length}")
    device = next(model.parameters()).device
    batch = len(prompts)
    total = min(max(lengths_list) + tokens_to_generate, max_sequence_length)
    tokens = torch.full((batch, total), eod, dtype=torch.long, device=device)
    for row, prompt in enumerate(prompts):
        tokens[row, :len(prompt)] = torch.tensor(list(prompt), dtype=torch.long, device=device)
    lengths = torch.tensor(lengths_list, device=device)
    limits = torch.clamp(lengths + tokens_to_generate, max=max_sequence_length)  # end position per row
    done = limits <= lengths  # nothing to generate (tokens_to_generate 0)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    ends = limits.clone()
    positions = torch.arange(total, device=device).unsqueeze(0).expand(batch, -1)

    was_training = model.training
    model.eval()
    try:
        with kv_cache(model) if use_cache else contextlib.nullcontext():
            fed = 0  # positions already in the cache
            for position in range(int(lengths.min()), total):
                if bool(done.all()):
                    break
                if use_cache:
                    logits = _logits(model, tokens[:, fed:position], positions[:, fed:position])
                    fed = position
                else:
                    logits = _logits(model, tokens[:, :position], positions[:, :position])
                chosen = _agree_across_tensor_parallel(sample(logits, params, vocab_size, generator), pg)
                generating = (lengths <= position) & ~done
                tokens[:, position] = torch.where(generating, chosen, tokens[:, position])
                hit_eod = generating & (chosen == eod)
                finished |= hit_eod
                ends = torch.where(hit_eod, torch.full_like(ends, position), ends)
                done |= hit_eod | (generating & (position + 1 >= limits))
    finally:
        model.train(was_training)
    return [{"tokens": tokens[row, lengths_list[row]:int(ends[row])].tolist(), "finished": bool(finished[row])}
            for row in range(batch)]


def generate(model: torch.nn.Module, tokenizer, prompts: Sequence[str], tokens_to_generate: int,
             params: SamplingParams, max_sequence_length: int, batch_size: int = 1, use_cache: bool = True,
             generator: Optional[torch.Generator] = None, pg: Optional[ProcessGroups] = None) -> List[Dict]:
    """Generate from text prompts; an empty prompt starts from the end-of-document token (unconditional).

    Returns ``{"prompt", "text" (prompt + continuation), "length" (tokens generated), "finished"}``
    per prompt, in order.
    """
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    eod = tokenizer.eod
    encoded = [tokenizer.tokenize(p) if p else [eod] for p in prompts]
    results = []
    for start in range(0, len(encoded), batch_size):
        outputs = generate_tokens(model, encoded[start:start + batch_size], tokens_to_generate, params, eod,
                                  max_sequence_length, tokenizer.vocab_size, use_cache, generator, pg)
        for prompt, output in zip(prompts[start:start + batch_size], outputs):
            results.append({"prompt": prompt, "text": prompt + tokenizer.detokenize(output["tokens"]),
                            "length": len(output["tokens"]), "finished": output["finished"]})
    return results
