"""T5: encoder-decoder with cross-attention, embeddings shared by both sides and a tied LM head.

With pipeline parallelism the encoder occupies stages ``[0, split)`` and the decoder
``[split, pp)`` (``pipeline_model_parallel_split_rank``). Stage flags, as the model provider
sets them: ``add_encoder`` / ``add_decoder`` say which side a stage belongs to, ``pre_process``
marks the first stage of each side (it owns an embedding), ``post_process`` the last (final
layer norm; on the decoder side also the LM head). Decoder stages pass ``[decoder hidden,
encoder output]`` to their successor, so every decoder layer can attend to the encoder.
"""
from typing import Optional

import torch
from torch import nn

from megatron.core.models.language_model import TransformerLanguageModel, logits_or_loss, parallel_lm_logits
from megatron.core.models.module import LanguageModule
from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel import init_rng_scope, set_tensor_model_parallel_attributes
from megatron.core.transformer import AttnMaskType, ModelType, TransformerConfig
from megatron.core.utils import divide


def t5_extended_attention_mask(keep_mask: torch.Tensor) -> torch.Tensor:
    """``[b, sq, sk]`` keep-mask (1 = may attend) to ``[b, 1, sq, sk]`` boolean, True where blocked."""
    return ~keep_mask.bool().unsqueeze(1)


class T5LMHead(nn.Module):
    """Logits against the shared word embeddings plus a vocab-parallel bias."""

    def __init__(self, config: TransformerConfig, vocab_size: int, parallel_output: bool, pg: ProcessGroups):
        super().__init__()
        self.config = config
        self.pg = pg
        self.parallel_output = parallel_output
        per_partition = divide(vocab_size, pg.tensor_model_parallel_size, "vocabulary size vs tensor_model_parallel_size")
        self.bias = nn.Parameter(torch.zeros(per_partition, dtype=config.params_dtype))
        set_tensor_model_parallel_attributes(self.bias, pg.tensor_model_parallel_size > 1, 0, 1)

    def forward(self, hidden_states: torch.Tensor, word_embeddings_weight: torch.Tensor) -> torch.Tensor:
        return parallel_lm_logits(hidden_states, word_embeddings_weight, self.parallel_output, self.pg,
                                  self.config.sequence_parallel, bias=self.bias,
                                  logit_multiplier=self.config.mup_output_multiplier)


class T5Model(LanguageModule):
    model_type = ModelType.encoder_and_decoder

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 parallel_output: bool = True, pre_process: bool = True, post_process: bool = True,
                 add_encoder: bool = True, add_decoder: bool = True, fp16_lm_cross_entropy: bool = False,
                 pg: Optional[ProcessGroups] = None):
        super().__init__(config, pre_process, post_process, pg)
        if not (add_encoder or add_decoder):
            raise ValueError("T5Model needs add_encoder or add_decoder")
        self.add_encoder = add_encoder
        self.add_decoder = add_decoder
        self.parallel_output = parallel_output
        self.fp16_lm_cross_entropy = fp16_lm_cross_entropy
        self.language_model = TransformerLanguageModel(
            config, vocab_size, max_sequence_length, AttnMaskType.padding, add_encoder=add_encoder,
            add_decoder=add_decoder, decoder_attn_mask_type=AttnMaskType.causal,
            pre_process=pre_process, post_process=post_process, pg=self.pg)
        self.initialize_word_embeddings(vocab_size)
        if post_process and add_decoder:
            with init_rng_scope(config.init_seed, "lm_head"):
                self.lm_head = T5LMHead(config, vocab_size, parallel_output, self.pg)

    def has_output_layer(self) -> bool:
        # The last encoder stage also has post_process, but only the decoder side ends in the LM head.
        return self.post_process and self.add_decoder

    def forward(self, encoder_input_ids: Optional[torch.Tensor], decoder_input_ids: Optional[torch.Tensor],
                encoder_attn_mask: torch.Tensor, decoder_attn_mask: torch.Tensor,
                encoder_decoder_attn_mask: torch.Tensor, lm_labels: Optional[torch.Tensor] = None,
                enc_hidden_states: Optional[torch.Tensor] = None):
        """Masks are ``[b, sq, sk]`` keep-masks (1 = may attend), as Megatron-LM's T5 dataset makes them."""
        output = self.language_model(
            encoder_input_ids, None, t5_extended_attention_mask(encoder_attn_mask),
            dec_input_ids=decoder_input_ids, dec_attn_mask=t5_extended_attention_mask(decoder_attn_mask),
            enc_dec_attn_mask=t5_extended_attention_mask(encoder_decoder_attn_mask),
            enc_hidden_states=enc_hidden_states)
        if not self.add_decoder:
            return output  # encoder hidden states [s, b, h]
        decoder_output, encoder_output = output
        if not self.post_process:
            # The schedule forwards the received encoder output alongside (see schedules.forward_step).
            return decoder_output
        logits = self.lm_head(decoder_output, self.word_embeddings_weight())
        if lm_labels is not None and not self.parallel_output:
            raise ValueError("T5Model computes the loss from vocab-parallel logits; use parallel_output=True with lm_labels")
        return logits_or_loss(logits, lm_labels, self.fp16_lm_cross_entropy, self.pg)
