"""RETRO (Borgeaud et al.; NeMo's token-level encoder-decoder): a causal decoder whose CCA layers
attend to neighbours retrieved for each earlier chunk, encoded by a small bidirectional encoder.

Forward, with ``n`` tokens, chunk size ``m``, ``l = n // m`` chunks and ``k`` neighbours of
``2m`` tokens each (``retrieved_ids [b, l, k, 2m]``):

1. the word embedding (shared with the neighbours and the tied output layer) embeds the tokens;
2. decoder layers run causally; the input of the first CCA layer conditions the encoder;
3. the encoder embeds each neighbour, runs ``encoder_num_layers`` padding-masked layers (those in
   ``encoder_cca_layers`` cross-attend to the decoder states of the chunk the neighbour was
   retrieved for) and a final norm, giving ``[k * 2m, b * l, h]``;
4. decoder layers in ``decoder_cca_layers`` add chunked cross-attention to those states: chunk u's
   neighbours are seen by the last token of chunk u and the first ``m - 1`` tokens of chunk u+1
   (``retro_layers.chunk_shift``), never by the tokens they were retrieved with;
5. final norm, logits against the word embedding, vocab-parallel cross entropy.

Layer indices in ``RetroConfig`` are 0-based (NeMo's convention: ``[3, 5]`` of 6 layers).
Rotary embedding is partial as in NeMo: ``min(head_dim, 32)`` channels. Pipeline parallelism is
refused (the encoder needs the decoder's mid-stack states and feeds later layers).
"""
import contextlib
import dataclasses
from typing import List, Optional, Sequence

import torch
from torch import nn

from megatron.core.models.language_model import Embedding, logits_or_loss, parallel_lm_logits
from megatron.core.models.module import LanguageModule
from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel import (
    checkpoint,
    gather_from_sequence_parallel_region,
    get_rng_tracker,
    init_rng_scope,
)
from megatron.core.transformer import AttnMaskType, LayerType, RotaryEmbedding, TransformerConfig, TransformerLayer
from megatron.core.transformer.layer import make_layernorm
from megatron.core.transformer.retro_layers import RetroCCALayer, RetroEncoderCALayer, without_sequence_parallel

MAX_ROTARY_DIM = 32  # NeMo's MIN_DIM_HEAD: rotary on at most 32 channels of each head


@dataclasses.dataclass
class RetroConfig:
    """What RETRO adds to the decoder's ``TransformerConfig``."""

    chunk_size: int = 64
    num_neighbors: int = 2
    """Neighbours per chunk the model is fed (``retrieved_ids.shape[2]``; blanked inputs use it)."""
    encoder_num_layers: int = 2
    encoder_cca_layers: Sequence[int] = (0,)
    """0-based encoder layers that cross-attend to the decoder chunk."""
    decoder_cca_layers: Sequence[int] = (3, 5)
    """0-based decoder layers with chunked cross-attention."""
    pad_id: int = 0
    """The id padding neighbours (and blanked ones) hold; masked as keys."""

    def validate(self, num_layers: int) -> None:
        if self.chunk_size < 2:
            raise ValueError(f"retro chunk_size must be >= 2, got {self.chunk_size}")
        if self.num_neighbors < 1:
            raise ValueError(f"retro num_neighbors must be >= 1, got {self.num_neighbors}")
        if self.encoder_num_layers < 1:
            raise ValueError(f"retro encoder_num_layers must be >= 1, got {self.encoder_num_layers}")
        dec, enc = list(self.decoder_cca_layers), list(self.encoder_cca_layers)
        if not dec:
            raise ValueError("retro decoder_cca_layers is empty: a RETRO decoder needs at least one CCA layer")
        if sorted(set(dec)) != dec or dec[0] < 0 or dec[-1] >= num_layers:
            raise ValueError(f"retro decoder_cca_layers {dec} must be increasing 0-based indices below num_layers "
                             f"{num_layers}")
        if sorted(set(enc)) != enc or (enc and (enc[0] < 0 or enc[-1] >= self.encoder_num_layers)):
            raise ValueError(f"retro encoder_cca_layers {enc} must be increasing 0-based indices below "
                             f"encoder_num_layers {self.encoder_num_layers}")


class RetroStack(nn.Module):
    """Layers (``layers.0..``) and a final norm; the owner decides how each layer is called."""

    def __init__(self, layers: List[nn.Module], final_layernorm: nn.Module):
        super().__init__()
        self.layers = nn.ModuleList(layers)
        self.final_layernorm = final_layernorm


class RetroLanguageModel(nn.Module):
    """Embedding, decoder and retrieval encoder (names as Megatron's language model: ``embedding``,
    ``decoder.layers.N``, ``encoder.layers.N``)."""

    def __init__(self, config: TransformerConfig, retro: RetroConfig, vocab_size: int, max_sequence_length: int,
                 pg: ProcessGroups):
        super().__init__()
        self.config, self.retro, self.pg = config, retro, pg
        self.sequence_parallel = config.sequence_parallel and pg.tensor_model_parallel_size > 1
        if config.position_embedding_type == "learned_absolute" and max_sequence_length < 2 * retro.chunk_size:
            raise ValueError(f"max_sequence_length {max_sequence_length} is shorter than a neighbour "
                             f"(2 x chunk_size {retro.chunk_size}) that needs learned positions")
        with init_rng_scope(config.init_seed, "embedding"):
            self.embedding = Embedding(config, vocab_size, max_sequence_length, 0, pg)
        self.rotary_pos_emb = None
        if config.position_embedding_type == "rope":
            self.rotary_pos_emb = RotaryEmbedding(min(config.kv_channels, MAX_ROTARY_DIM), 1.0, config.rotary_base)
        dec_cca = set(retro.decoder_cca_layers)
        layers = []
        for i in range(config.num_layers):
            with init_rng_scope(config.init_seed, "decoder", i + 1):
                if i in dec_cca:
                    layers.append(RetroCCALayer(config, i + 1, retro.chunk_size, pg))
                else:
                    layers.append(TransformerLayer(config, i + 1, LayerType.encoder, AttnMaskType.causal, pg))
        with init_rng_scope(config.init_seed, "decoder_final_layernorm"):
            self.decoder = RetroStack(layers, make_layernorm(config, pg))
        enc_config = dataclasses.replace(without_sequence_parallel(config), num_layers=retro.encoder_num_layers)
        self.encoder_config = enc_config
        enc_cca = set(retro.encoder_cca_layers)
        layers = []
        for i in range(retro.encoder_num_layers):
            with init_rng_scope(config.init_seed, "retro_encoder", i + 1):
                if i in enc_cca:
                    layers.append(RetroEncoderCALayer(enc_config, i + 1, pg))
                else:
                    layers.append(TransformerLayer(enc_config, i + 1, LayerType.encoder, AttnMaskType.padding, pg))
        with init_rng_scope(config.init_seed, "encoder_final_layernorm"):
            self.encoder = RetroStack(layers, make_layernorm(enc_config, pg))

    def set_input_tensor(self, input_tensor) -> None:
        # One stage only: the schedule hands the (absent) previous stage's output.
        if input_tensor is not None and not (isinstance(input_tensor, (list, tuple)) and
                                             all(t is None for t in input_tensor)):
            raise ValueError("RETRO runs as a single pipeline stage and takes no input tensor")

    # -- recomputation ---------------------------------------------------------------------
    def _run(self, calls: List, hidden: torch.Tensor, *tensors) -> torch.Tensor:
        """Run ``calls[i](hidden, *tensors)`` in turn, with full recompute as configured."""
        config = self.config
        if config.recompute_granularity != "full" or not self.training:
            for call in calls:
                hidden = call(hidden, *tensors)
            return hidden

        def group(start, end):
            def run(h, *ts):
                for call in calls[start:end]:
                    h = call(h, *ts)
                return h
            return run

        step = config.recompute_num_layers
        if config.recompute_method == "uniform":
            for start in range(0, len(calls), step):
                hidden = checkpoint(group(start, min(start + step, len(calls))), hidden, *tensors)
        else:
            for index in range(len(calls)):
                run = group(index, index + 1)
                hidden = checkpoint(run, hidden, *tensors) if index < step else run(hidden, *tensors)
        return hidden

    # -- encoder ---------------------------------------------------------------------------
    def encode(self, retrieved_ids: torch.Tensor, decoder_hidden: torch.Tensor) -> torch.Tensor:
        """Neighbours ``[b, l, k, 2m]`` conditioned on the decoder states ``[n(/tp), b, h]`` ->
        encoded neighbours ``[k * 2m, b * l, h]``."""
        b, chunks, k, r = retrieved_ids.shape
        m = self.retro.chunk_size
        ids = retrieved_ids.reshape(b * chunks * k, r)
        embedding = self.embedding
        hidden = embedding.word_embeddings(ids)  # [b*l*k, 2m, h]
        if embedding.add_position_embedding:
            hidden = hidden + embedding.position_embeddings(torch.arange(r, device=ids.device))[None]
        hidden = hidden.transpose(0, 1).contiguous()  # [2m, b*l*k, h]
        if self.config.fp32_residual_connection:
            hidden = hidden.float()
        # Neighbours are whole on every rank, so their dropout draws from the default stream.
        hidden = embedding.embedding_dropout(hidden)
        if self.sequence_parallel:
            decoder_hidden = gather_from_sequence_parallel_region(decoder_hidden, self.pg.tp,
                                                                  tensor_parallel_output_grad=False)
        h = decoder_hidden.shape[-1]
        chunk_states = decoder_hidden[: chunks * m].view(chunks, m, b, h).permute(1, 2, 0, 3)  # [m, b, l, h]
        chunk_states = chunk_states.unsqueeze(3).expand(m, b, chunks, k, h).reshape(m, b * chunks * k, h)
        pad_mask = (ids == self.retro.pad_id)[:, None, None, :]  # [b*l*k, 1, 1, 2m], True = padding
        rotary = self.rotary_pos_emb(r).to(ids.device) if self.rotary_pos_emb is not None else None

        def call(layer):
            if isinstance(layer, RetroEncoderCALayer):
                return lambda x, states, mask: layer(x, mask, states, None, rotary)
            return lambda x, states, mask: layer(x, mask, rotary_pos_emb=rotary)

        hidden = self._run([call(layer) for layer in self.encoder.layers], hidden, chunk_states, pad_mask)
        norm = self.encoder.final_layernorm
        hidden = norm(hidden.to(norm.weight.dtype))  # [2m, b*l*k, h]
        return hidden.view(r, b * chunks, k, h).permute(2, 0, 1, 3).reshape(k * r, b * chunks, h)

    # -- decoder ---------------------------------------------------------------------------
    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor],
                attention_mask: Optional[torch.Tensor], retrieved_ids: torch.Tensor) -> torch.Tensor:
        n = input_ids.shape[1]
        m = self.retro.chunk_size
        if retrieved_ids.dim() != 4 or retrieved_ids.shape[0] != input_ids.shape[0] or \
                retrieved_ids.shape[1] != n // m or retrieved_ids.shape[3] != 2 * m:
            raise ValueError(f"retrieved_ids has shape {tuple(retrieved_ids.shape)}; {n} tokens in chunks of {m} "
                             f"need [{input_ids.shape[0]}, {n // m}, neighbours, {2 * m}]")
        hidden = self.embedding(input_ids, position_ids)  # [n(/tp), b, h]
        rotary = cca_rotary = None
        if self.rotary_pos_emb is not None:
            device = input_ids.device
            rotary = self.rotary_pos_emb(n).to(device)
            # CCA query j of a chunk row is chunk position m-1+j against neighbour positions 0..2m-1
            # (the neighbour chunk aligned with the chunk it was retrieved for).
            cca_rotary = (self.rotary_pos_emb(m, offset=m - 1).to(device),
                          self.rotary_pos_emb(2 * m).to(device).repeat(retrieved_ids.shape[2], 1, 1, 1))
        cca_mask = (retrieved_ids == self.retro.pad_id)  # [b, l, k, 2m]
        b, chunks, k, r = cca_mask.shape
        cca_mask = cca_mask.reshape(b * chunks, 1, 1, k * r)  # [b*l, 1, 1, k*2m]

        def call(layer):
            if isinstance(layer, RetroCCALayer):
                return lambda x, mask, neighbours, nmask: layer(x, mask, neighbours, nmask, rotary, cca_rotary)
            return lambda x, mask, neighbours, nmask: layer(x, mask, rotary_pos_emb=rotary)

        first = min(self.retro.decoder_cca_layers)
        layers = list(self.decoder.layers)
        # Under sequence parallelism each rank holds other positions: hidden dropout from the per-rank stream.
        per_rank = self.sequence_parallel and self.training and self.config.hidden_dropout > 0
        fork = (lambda: get_rng_tracker().fork()) if per_rank else contextlib.nullcontext
        with fork():
            hidden = self._run([call(layer) for layer in layers[:first]], hidden, attention_mask, None, None)
        neighbours = self.encode(retrieved_ids, hidden) if n >= m else None
        with fork():
            hidden = self._run([call(layer) for layer in layers[first:]], hidden, attention_mask, neighbours, cca_mask)
        norm = self.decoder.final_layernorm
        return norm(hidden.to(norm.weight.dtype))  # [n(/tp), b, h]


class RetroModel(LanguageModule):
    """RETRO as one module (pre- and post-process: no pipeline stages).

    ``forward(input_ids, position_ids, attention_mask, retrieved_ids, labels)`` returns the
    per-token loss ``[b, s]`` with labels, else logits ``[b, s, v / tp]`` (gathered with
    ``parallel_output=False``). ``retrieved_ids=None`` means retrieval off: every neighbour is
    all padding (``blank_neighbours``), which is what validation without retrieval feeds.
    """

    def __init__(self, config: TransformerConfig, retro: RetroConfig, vocab_size: int, max_sequence_length: int,
                 pre_process: bool = True, post_process: bool = True, parallel_output: bool = True,
                 fp16_lm_cross_entropy: bool = False, pg: Optional[ProcessGroups] = None):
        super().__init__(config, pre_process, post_process, pg)
        if self.pg.pipeline_model_parallel_size > 1 or not (pre_process and post_process):
            raise ValueError(f"RETRO does not support pipeline parallelism (pipeline_model_parallel_size is "
                             f"{self.pg.pipeline_model_parallel_size}; it has to be 1, as in NeMo)")
        retro.validate(config.num_layers)
        self.retro = retro
        self.vocab_size = vocab_size
        self.parallel_output = parallel_output
        self.fp16_lm_cross_entropy = fp16_lm_cross_entropy
        self.language_model = RetroLanguageModel(config, retro, vocab_size, max_sequence_length, self.pg)

    def blank_neighbours(self, input_ids: torch.Tensor, num_neighbors: Optional[int] = None) -> torch.Tensor:
        """All-pad ``retrieved_ids`` for ``input_ids [b, n]``: ``[b, n // m, k, 2m]``."""
        m, k = self.retro.chunk_size, num_neighbors or self.retro.num_neighbors
        return torch.full((input_ids.shape[0], input_ids.shape[1] // m, k, 2 * m), self.retro.pad_id,
                          dtype=torch.long, device=input_ids.device)

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, retrieved_ids: Optional[torch.Tensor] = None,
                labels: Optional[torch.Tensor] = None) -> torch.Tensor:
        if retrieved_ids is None:
            retrieved_ids = self.blank_neighbours(input_ids)
        hidden = self.language_model(input_ids, position_ids, attention_mask, retrieved_ids.long())
        logits = parallel_lm_logits(hidden, self.word_embeddings_weight(), self.parallel_output, self.pg,
                                    self.config.sequence_parallel, logit_multiplier=self.config.mup_output_multiplier)
        if labels is not None and not self.parallel_output:
            raise ValueError("RetroModel computes the loss from vocab-parallel logits; use parallel_output=True with labels")
        return logits_or_loss(logits, labels, self.fp16_lm_cross_entropy, self.pg)
