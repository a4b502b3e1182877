"""Batched autoregressive decoding for a GPT model, on one process or under tensor/pipeline parallelism.

Prompts of different lengths share one token buffer: decoding starts at the shortest prompt, and
a row whose prompt is longer keeps its own prompt tokens until they run out (Megatron's scheme).
With the KV cache (default) each step feeds only the new positions and attention reads the keys
and values of earlier steps from the cache; ``use_cache=False`` re-runs the whole prefix every
step (Megatron's ``--recompute``). Both see the same causal attention, so greedy outputs agree.

Under tensor parallelism every rank computes the same gathered logits; the token chosen by
tensor-parallel rank 0 is broadcast so that sampling can never drift apart between ranks.

Under pipeline parallelism every step runs the stages in turn: the first stage embeds the fed
positions, each stage sends its hidden states ``[s, b, h]`` to the next (the shape is known to
all stages from the step, so no handshake is needed), and the last stage computes the logits and
samples. Its tokens are then broadcast over the pipeline group, so every stage holds the same
token buffer and stopping state for the next step. Each stage keeps the KV cache of its own layers.
"""
import contextlib
from typing import Dict, List, Optional, Sequence

import torch
import torch.distributed as dist

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.pipeline_parallel.finalize import unwrap_model
from megatron.core.pipeline_parallel.p2p import P2PCommunicator
from megatron.core.transformer.attention import ParallelAttention, RotaryEmbedding
from megatron.core.transformer.enums import AttnType
from megatron.text_generation.sampling import SamplingParams, sample


class KVCache:
    """Keys and values [s, b, ng, hn] of the positions one self-attention layer has already seen
    (ng: this rank's key/value groups, its heads without grouped-query attention).

    ``rotary`` is the model's rotary embedding (None for learned absolute positions): a cached
    step's new keys and queries are rotated by their absolute positions, which follow the cached ones.
    """

    def __init__(self, rotary: Optional[RotaryEmbedding] = None):
        self.key: Optional[torch.Tensor] = None
        self.value: Optional[torch.Tensor] = None
        self.rotary = rotary

    @property
    def length(self) -> int:
        return 0 if self.key is None else self.key.shape[0]

    def rotary_frequencies(self, count: int) -> torch.Tensor:
        if self.rotary is None:
            raise ValueError("the model applies rotary position embeddings but the KV cache was given none "
                             "(use text_generation.kv_cache(model), which finds the model's RotaryEmbedding)")
        return self.rotary(count, offset=self.length)

    def update(self, key: torch.Tensor, value: torch.Tensor):
        if self.key is None:
            self.key, self.value = key, value
        else:
            self.key = torch.cat((self.key, key), dim=0)
            self.value = torch.cat((self.value, value), dim=0)
        return self.key, self.value


def _rotary_embedding(model: torch.nn.Module) -> Optional[RotaryEmbedding]:
    """The model's rotary embedding; every copy (one per language model) is built from one config."""
    found = [m for m in model.modules() if isinstance(m, RotaryEmbedding)]
    if not found:
        return None
    for other in found[1:]:
        if other.dim != found[0].dim or not torch.equal(other.inv_freq, found[0].inv_freq):
            raise ValueError("the model holds rotary embeddings of different sizes; the KV cache needs one")
    return found[0]


@contextlib.contextmanager
def kv_cache(model: torch.nn.Module):
    """Give every self-attention layer of ``model`` a fresh, empty cache for the duration of the block."""
    layers = [m for m in model.modules()
              if isinstance(m, ParallelAttention) and m.attention_type == AttnType.self_attn]
    rotary = _rotary_embedding(model)
    for layer in layers:
        layer.inference_cache = KVCache(rotary)
    try:
        yield
    finally:
        for layer in layers:
            layer.inference_cache = None


def _check_layout(model: torch.nn.Module, pg: ProcessGroups) -> None:
    inner = unwrap_model(model)
    if pg.virtual_pipeline_model_parallel_size is not None:
        raise ValueError(f"text generation runs one model chunk per pipeline stage; "
                         f"--num-layers-per-virtual-pipeline-stage (virtual size "
                         f"{pg.virtual_pipeline_model_parallel_size}) is not supported")
    config = getattr(inner, "config", None)
    if config is not None and config.sequence_parallel and pg.tensor_model_parallel_size > 1:
        raise ValueError("text generation feeds one position per step, which sequence parallelism cannot split; "
                         "build the model with sequence_parallel=False (the weights are the same)")
    if pg.pipeline_model_parallel_size > 1 and config is None:
        raise ValueError("pipeline-parallel generation needs a model with a TransformerConfig (.config)")
    if getattr(inner, "parallel_output", False):
        raise ValueError("text generation needs the full-vocabulary logits: build GPTModel with parallel_output=False")


def _logits(model, tokens: torch.Tensor, position_ids: torch.Tensor) -> torch.Tensor:
    output = model(tokens, position_ids, None)  # [b, s, v]
    return output[:, -1, :]


def _agree_across_tensor_parallel(tokens: torch.Tensor, pg: ProcessGroups) -> torch.Tensor:
    if pg.tensor_model_parallel_size > 1:
        dist.broadcast(tokens, src=pg.tp_src_rank, group=pg.tp)
    return tokens


class _Stages:
    """One decoding step across the pipeline: returns last-position logits on the last stage, else None."""

    def __init__(self, model: torch.nn.Module, pg: ProcessGroups, device):
        self.model = model
        self.pg = pg
        self.pipelined = pg.pipeline_model_parallel_size > 1
        if self.pipelined:
            config = unwrap_model(model).config
            # Hidden states leave a stage in fp32 when the residual stream is kept in fp32.
            dtype = torch.float32 if config.fp32_residual_connection else config.pipeline_dtype
            self.hidden_size = config.hidden_size
            self.comm = P2PCommunicator(pg, dtype, device)
            self.last = pg.is_pipeline_last_stage(ignore_virtual=True)

    def logits(self, tokens: torch.Tensor, position_ids: torch.Tensor) -> Optional[torch.Tensor]:
        if not self.pipelined:
            return _logits(self.model, tokens, position_ids)
        shape = (tokens.shape[1], tokens.shape[0], self.hidden_size)  # [s, b, h]
        received = self.comm.recv_forward([shape])
        unwrap_model(self.model).set_input_tensor(received[0] if received else None)
        output = self.model(tokens, position_ids, None)
        if not self.last:
            self.comm.send_forward([output])
            return None
        return output[:, -1, :]

    def choose(self, logits: Optional[torch.Tensor], params: SamplingParams, vocab_size: Optional[int],
               generator: Optional[torch.Generator], batch: int, device) -> torch.Tensor:
        """The next token of every row, identical on every rank of the model-parallel group."""
        if logits is not None:
            chosen = _agree_across_tensor_parallel(sample(logits, params, vocab_size, generator), self.pg)
        else:
            chosen = torch.empty(batch, dtype=torch.long, device=device)
        if self.pipelined:
            dist.broadcast(chosen, src=self.pg.pipeline_last_rank, group=self.pg.pp)
        return chosen


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

    stages = _Stages(model, pg, device)
    was_training = model.training
    model.eval()
    try:
        with kv_cache(model) if use_cache else contextlib.nullcontext():
            fed = 0  # positions already in the cache
            for position in range(int(lengths.min()), total):
                if bool(done.all()):
                    break
                start = fed if use_cache else 0
                logits = stages.logits(tokens[:, start:position], positions[:, start:position])
                fed = position
                chosen = stages.choose(logits, params, vocab_size, generator, batch, device)
                generating = (lengths <= position) & ~done
                tokens[:, position] = torch.where(generating, chosen, tokens[:, position])
                hit_eod = generating & (chosen == eod)
                finished |= hit_eod
                ends = torch.where(hit_eod, torch.full_like(ends, position), ends)
                done |= hit_eod | (generating & (position + 1 >= limits))
    finally:
        model.train(was_training)
        if stages.pipelined:
            unwrap_model(model).set_input_tensor(None)
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
