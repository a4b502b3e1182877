"""Pieces every language model shares: embeddings, the encoder(/decoder) stack, pooler, output logits.

Parameter names follow Megatron-LM's 2021 layout (``language_model.embedding.word_embeddings``,
``language_model.encoder.layers.N...``, ``language_model.pooler.dense``) so released checkpoints
map one to one.
"""
from typing import List, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from megatron.core import mup
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import (
    ColumnParallelLinear,
    VocabParallelEmbedding,
    copy_to_tensor_model_parallel_region,
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    get_rng_tracker,
    init_rng_scope,
    scatter_to_sequence_parallel_region,
    vocab_parallel_cross_entropy,
)
from megatron.core.transformer import (
    AttnMaskType,
    LayerType,
    RotaryEmbedding,
    TransformerBlock,
    TransformerConfig,
)


def replicated_linear(in_features: int, out_features: int, config: TransformerConfig,
                      mup_base_fan_in: Optional[int] = None) -> nn.Linear:
    """An unpartitioned linear layer (pooler, heads), initialised like the rest of the model;
    ``mup_base_fan_in`` marks a μP hidden matrix (``core/mup.py``)."""
    layer = nn.Linear(in_features, out_features, dtype=config.params_dtype)
    init_method, lr_mult = mup.hidden_matrix_rule(config.init_method, in_features, mup_base_fan_in)
    with torch.no_grad():
        init_method(layer.weight)
        layer.bias.zero_()
    mup.set_lr_mult(layer.weight, lr_mult)
    return layer


def mark_sequence_parallel(module: nn.Module, config: TransformerConfig, pg: ProcessGroups) -> None:
    """Parameters applied to sequence shards get partial gradients under sequence parallelism."""
    flag = config.sequence_parallel and pg.tensor_model_parallel_size > 1
    for param in module.parameters():
        param.sequence_parallel = flag


class Embedding(nn.Module):
    """Word (vocab-parallel) + learned position (+ token-type) embeddings, then dropout; output ``[s, b, h]``."""

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 num_tokentypes: int = 0, pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.word_embeddings = VocabParallelEmbedding(
            vocab_size, config.hidden_size, config=config, init_method=config.init_method, pg=self.pg)
        self.add_position_embedding = config.position_embedding_type == "learned_absolute"
        if self.add_position_embedding:
            self.position_embeddings = nn.Embedding(max_sequence_length, config.hidden_size, dtype=config.params_dtype)
            with torch.no_grad():
                config.init_method(self.position_embeddings.weight)
        self.num_tokentypes = num_tokentypes
        if num_tokentypes > 0:
            self.tokentype_embeddings = nn.Embedding(num_tokentypes, config.hidden_size, dtype=config.params_dtype)
            with torch.no_grad():
                config.init_method(self.tokentype_embeddings.weight)
        self.embedding_dropout = nn.Dropout(config.hidden_dropout)

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor],
                tokentype_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        embeddings = self.word_embeddings(input_ids)  # [b, s, h]
        if self.add_position_embedding:
            if position_ids is None:
                position_ids = torch.arange(input_ids.shape[1], device=input_ids.device).unsqueeze(0).expand_as(input_ids)
            embeddings = embeddings + self.position_embeddings(position_ids)
        if tokentype_ids is not None:
            if self.num_tokentypes == 0:
                raise ValueError("tokentype_ids given to an embedding built with num_tokentypes=0")
            embeddings = embeddings + self.tokentype_embeddings(tokentype_ids)
        embeddings = embeddings.transpose(0, 1).contiguous()  # [s, b, h]
        if self.config.fp32_residual_connection:
            embeddings = embeddings.float()
        if self.config.sequence_parallel and self.pg.tensor_model_parallel_size > 1:
            embeddings = scatter_to_sequence_parallel_region(embeddings, self.pg.tp)  # [s / tp, b, h]
            if self.training and self.embedding_dropout.p > 0:
                # Each rank holds different positions, so their masks come from the per-rank stream.
                with get_rng_tracker().fork():
                    return self.embedding_dropout(embeddings)
        return self.embedding_dropout(embeddings)


class Pooler(nn.Module):
    """tanh(dense(hidden[sequence_index])): the ``[CLS]`` summary used by BERT's binary head."""

    def __init__(self, config: TransformerConfig, pg: ProcessGroups):
        super().__init__()
        self.pg = pg
        self.sequence_parallel = config.sequence_parallel and pg.tensor_model_parallel_size > 1
        self.dense = replicated_linear(config.hidden_size, config.hidden_size, config,
                                       mup_base_fan_in=config.mup_base_fan_in("hidden"))

    def forward(self, hidden_states: torch.Tensor, sequence_index: int = 0) -> torch.Tensor:
        if self.sequence_parallel:
            # The pooled position may live on another rank; every rank needs the same output.
            hidden_states = gather_from_sequence_parallel_region(hidden_states, self.pg.tp, tensor_parallel_output_grad=False)
        return torch.tanh(self.dense(hidden_states[sequence_index]))  # [b, h]


def parallel_lm_logits(input_: torch.Tensor, word_embeddings_weight: torch.Tensor, parallel_output: bool,
                       pg: ProcessGroups, sequence_parallel: bool, bias: Optional[torch.Tensor] = None,
                       logit_multiplier: float = 1.0) -> torch.Tensor:
    """Logits against the (vocab-parallel) word embeddings: ``[s, b, v / tp]`` or gathered ``[s, b, v]``.

    ``logit_multiplier`` scales the input before the projection (not the bias), as μP's readout
    does; models pass ``config.mup_output_multiplier``."""
    if logit_multiplier != 1.0:
        input_ = input_ * logit_multiplier
    if sequence_parallel and pg.tensor_model_parallel_size > 1:
        input_parallel = gather_from_sequence_parallel_region(input_, pg.tp, tensor_parallel_output_grad=True)
    else:
        input_parallel = copy_to_tensor_model_parallel_region(input_, pg.tp)
    logits = F.linear(input_parallel, word_embeddings_weight, bias)
    if parallel_output:
        return logits
    return gather_from_tensor_model_parallel_region(logits, pg.tp)


def logits_or_loss(logits: torch.Tensor, labels: Optional[torch.Tensor], fp16_lm_cross_entropy: bool,
                   pg: ProcessGroups, label_smoothing: float = 0.0) -> torch.Tensor:
    """``[b, s, v(/tp)]`` logits without labels; otherwise the per-token loss ``[b, s]``."""
    if labels is None:
        return logits.transpose(0, 1).contiguous()
    logits = logits if fp16_lm_cross_entropy else logits.float()
    loss = vocab_parallel_cross_entropy(logits, labels.transpose(0, 1), label_smoothing, pg)  # [s, b]
    return loss.transpose(0, 1).contiguous()


class TransformerLanguageModel(nn.Module):
    """Embedding, encoder and optional decoder/pooler for one pipeline stage.

    ``pre_process`` (first stage, or first decoder stage) owns the embedding; otherwise the
    stage's input comes from ``set_input_tensor``. ``post_process`` (last stage, or last
    encoder stage) owns the final layer norm and pooler, and with ``add_output_layer`` (GPT under
    ``untie_embeddings_and_output_weights``) the vocab-parallel ``output_layer`` (no bias), a weight
    of its own rather than the word embedding, so no stage keeps a tied copy.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 encoder_attn_mask_type: AttnMaskType, num_tokentypes: int = 0,
                 add_encoder: bool = True, add_decoder: bool = False,
                 decoder_attn_mask_type: AttnMaskType = AttnMaskType.causal, add_pooler: bool = False,
                 pre_process: bool = True, post_process: bool = True, pg: Optional[ProcessGroups] = None,
                 add_output_layer: bool = False):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        self.config = config
        if config.untie_embeddings_and_output_weights and not add_output_layer:
            raise ValueError("untie_embeddings_and_output_weights applies to GPT only: this model's head is tied "
                             "to the word embeddings or has no LM output layer")
        self.pre_process = pre_process
        self.post_process = post_process
        self.add_encoder = add_encoder
        self.add_decoder = add_decoder
        self.add_pooler = add_pooler and post_process
        self.encoder_hidden_state = None
        if pre_process:
            with init_rng_scope(config.init_seed, "embedding"):
                self.embedding = Embedding(config, vocab_size, max_sequence_length, num_tokentypes, self.pg)
        self.rotary_pos_emb = None
        if config.position_embedding_type == "rope":
            self.rotary_pos_emb = RotaryEmbedding(config.kv_channels, config.rotary_percent, config.rotary_base)
        if add_encoder:
            self.encoder = TransformerBlock(config, LayerType.encoder, encoder_attn_mask_type,
                                            pre_process=pre_process, post_process=post_process, pg=self.pg)
        if add_decoder:
            self.decoder = TransformerBlock(config, LayerType.decoder, decoder_attn_mask_type,
                                            pre_process=pre_process, post_process=post_process, pg=self.pg)
        if self.add_pooler:
            with init_rng_scope(config.init_seed, "pooler"):
                self.pooler = Pooler(config, self.pg)
        if add_output_layer and post_process:
            # Rows follow the vocab-parallel split of the embedding and the cross entropy.
            with init_rng_scope(config.init_seed, "output_layer"):
                self.output_layer = ColumnParallelLinear(config.hidden_size, vocab_size, config=config,
                                                         init_method=config.init_method, bias=False, pg=self.pg)

    def set_input_tensor(self, input_tensor: Union[torch.Tensor, List[Optional[torch.Tensor]], None]) -> None:
        if not isinstance(input_tensor, (list, tuple)):
            input_tensor = [input_tensor]
        if self.add_encoder:
            if len(input_tensor) != 1:
                raise ValueError(f"an encoder stage takes 1 input tensor, got {len(input_tensor)}")
            self.encoder.set_input_tensor(input_tensor[0])
        elif self.add_decoder:
            if len(input_tensor) == 2:
                self.decoder.set_input_tensor(input_tensor[0])
                self.encoder_hidden_state = input_tensor[1]
            elif len(input_tensor) == 1:
                # The first decoder stage embeds its own tokens and receives only the encoder output.
                self.decoder.set_input_tensor(None)
                self.encoder_hidden_state = input_tensor[0]
            else:
                raise ValueError(f"a decoder stage takes 1 or 2 input tensors, got {len(input_tensor)}")

    def _rotary(self, input_ids: Optional[torch.Tensor], block: TransformerBlock) -> Optional[torch.Tensor]:
        """Rotary frequencies for the full sequence, whether this stage embeds tokens or receives activations."""
        if self.rotary_pos_emb is None:
            return None
        if input_ids is not None:
            seq_length, device = input_ids.shape[1], input_ids.device
        else:
            received = block.input_tensor
            seq_length, device = received.shape[0], received.device
            if self.config.sequence_parallel:
                seq_length *= self.pg.tensor_model_parallel_size
        return self.rotary_pos_emb(seq_length).to(device)

    def forward(self, enc_input_ids: Optional[torch.Tensor], enc_position_ids: Optional[torch.Tensor],
                enc_attn_mask: Optional[torch.Tensor],
                dec_input_ids: Optional[torch.Tensor] = None, dec_position_ids: Optional[torch.Tensor] = None,
                dec_attn_mask: Optional[torch.Tensor] = None, enc_dec_attn_mask: Optional[torch.Tensor] = None,
                tokentype_ids: Optional[torch.Tensor] = None, enc_hidden_states: Optional[torch.Tensor] = None,
                pooling_sequence_index: int = 0):
        encoder_output = enc_hidden_states
        if self.add_encoder and encoder_output is None:
            encoder_input = None
            if self.pre_process:
                encoder_input = self.embedding(enc_input_ids, enc_position_ids, tokentype_ids)
            rotary = self._rotary(enc_input_ids, self.encoder)
            encoder_output = self.encoder(encoder_input, enc_attn_mask, rotary_pos_emb=rotary)
        elif encoder_output is None:
            encoder_output = self.encoder_hidden_state
        if not self.add_decoder:
            if self.add_pooler:
                return encoder_output, self.pooler(encoder_output, pooling_sequence_index)
            return encoder_output
        decoder_input = None
        if self.pre_process:
            decoder_input = self.embedding(dec_input_ids, dec_position_ids)
        rotary = self._rotary(dec_input_ids, self.decoder)
        decoder_output = self.decoder(decoder_input, dec_attn_mask, encoder_output=encoder_output,
                                      enc_dec_attn_mask=enc_dec_attn_mask, rotary_pos_emb=rotary)
        return decoder_output, encoder_output
