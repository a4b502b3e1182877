"""BERT: a bidirectional encoder with a masked-LM head (tied decoder) and an optional NSP head."""
from typing import Optional

import torch
from torch import nn

from megatron.core.fusions import fused
from megatron.core.models.language_model import (
    TransformerLanguageModel,
    logits_or_loss,
    mark_sequence_parallel,
    parallel_lm_logits,
    replicated_linear,
)
from megatron.core.models.module import LanguageModule
from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel import init_rng_scope, set_tensor_model_parallel_attributes
from megatron.core.transformer import AttnMaskType, TransformerConfig
from megatron.core.utils import divide


def bert_extended_attention_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """``[b, s]`` keep-mask (1 = token) to ``[b, 1, s, s]`` boolean, True where attention is blocked."""
    keep = attention_mask.bool()
    both = keep.unsqueeze(1) & keep.unsqueeze(2)  # [b, s, s]
    return ~both.unsqueeze(1)


class BertLMHead(nn.Module):
    """dense -> GeLU -> LayerNorm, then logits against the word embeddings plus a vocab-parallel bias."""

    def __init__(self, config: TransformerConfig, vocab_size: int, parallel_output: bool, pg: ProcessGroups):
        super().__init__()
        self.config = config
        self.pg = pg
        self.parallel_output = parallel_output
        per_partition = divide(vocab_size, pg.tensor_model_parallel_size, "vocabulary size vs tensor_model_parallel_size")
        self.bias = nn.Parameter(torch.zeros(per_partition, dtype=config.params_dtype))
        set_tensor_model_parallel_attributes(self.bias, pg.tensor_model_parallel_size > 1, 0, 1)
        self.dense = replicated_linear(config.hidden_size, config.hidden_size, config,
                                       mup_base_fan_in=config.mup_base_fan_in("hidden"))
        self.layernorm = fused.FusedLayerNorm(config.hidden_size, eps=config.layernorm_epsilon,
                                              dtype=config.params_dtype, enabled=config.persist_layer_norm)
        mark_sequence_parallel(self.dense, config, pg)
        mark_sequence_parallel(self.layernorm, config, pg)
        # GeLU of the dense output: the tanh form with --openai-gelu, else exact (erf); a Triton kernel on CUDA.
        self.gelu_approximate = "tanh" if config.openai_gelu else "none"

    def forward(self, hidden_states: torch.Tensor, word_embeddings_weight: torch.Tensor) -> torch.Tensor:
        hidden_states = fused.bias_gelu(None, self.dense(hidden_states), self.gelu_approximate,
                                        enabled=self.config.bias_gelu_fusion)
        hidden_states = self.layernorm(hidden_states)
        return parallel_lm_logits(hidden_states, word_embeddings_weight, self.parallel_output, self.pg,
                                  self.config.sequence_parallel, bias=self.bias,
                                  logit_multiplier=self.config.mup_output_multiplier)


class BertModel(LanguageModule):
    """One pipeline stage of BERT.

    On the last stage ``forward`` returns ``(lm_output, binary_logits)``: ``lm_output`` is the
    per-token loss ``[b, s]`` when ``lm_labels`` are given, else logits ``[b, s, v(/tp)]``;
    ``binary_logits`` is ``[b, 2]`` or ``None`` without the binary head.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 num_tokentypes: int = 2, add_binary_head: bool = True, parallel_output: bool = True,
                 pre_process: bool = True, post_process: bool = True, fp16_lm_cross_entropy: bool = False,
                 pg: Optional[ProcessGroups] = None):
        super().__init__(config, pre_process, post_process, pg)
        self.add_binary_head = add_binary_head
        self.parallel_output = parallel_output
        self.fp16_lm_cross_entropy = fp16_lm_cross_entropy
        self.language_model = TransformerLanguageModel(
            config, vocab_size, max_sequence_length, AttnMaskType.padding, num_tokentypes=num_tokentypes,
            add_pooler=add_binary_head, pre_process=pre_process, post_process=post_process, pg=self.pg)
        self.initialize_word_embeddings(vocab_size)
        if post_process:
            with init_rng_scope(config.init_seed, "lm_head"):
                self.lm_head = BertLMHead(config, vocab_size, parallel_output, self.pg)
            if add_binary_head:
                with init_rng_scope(config.init_seed, "binary_head"):
                    self.binary_head = replicated_linear(config.hidden_size, 2, config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                tokentype_ids: Optional[torch.Tensor] = None, lm_labels: Optional[torch.Tensor] = None):
        extended_mask = bert_extended_attention_mask(attention_mask)
        output = self.language_model(input_ids, None, extended_mask, tokentype_ids=tokentype_ids)
        if not self.post_process:
            return output
        pooled = None
        if self.add_binary_head:
            output, pooled = output
        logits = self.lm_head(output, self.word_embeddings_weight())
        binary_logits = None
        if pooled is not None:
            # A readout like the LM head: under μP its input is scaled by base / hidden size.
            scale = self.config.mup_output_multiplier
            binary_logits = self.binary_head(pooled * scale if scale != 1.0 else pooled)
        if lm_labels is not None and not self.parallel_output:
            raise ValueError("BertModel computes the loss from vocab-parallel logits; use parallel_output=True with lm_labels")
        return logits_or_loss(logits, lm_labels, self.fp16_lm_cross_entropy, self.pg), binary_logits
