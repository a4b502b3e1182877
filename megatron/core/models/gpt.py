"""GPT: a causal decoder-only language model with the output layer tied to the word embeddings, or
with an output layer of its own (``untie_embeddings_and_output_weights``, as Llama)."""
from typing import Optional

import torch

from megatron.core.models.language_model import TransformerLanguageModel, logits_or_loss, parallel_lm_logits
from megatron.core.models.module import LanguageModule
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import AttnMaskType, TransformerConfig


class GPTModel(LanguageModule):
    """One pipeline stage of GPT (the whole model when ``pre_process`` and ``post_process``).

    ``forward`` returns the per-token loss ``[b, s]`` when ``labels`` are given, else logits
    ``[b, s, v / tp]`` (``[b, s, v]`` with ``parallel_output=False``); stages without
    ``post_process`` return their hidden states ``[s, b, h]``.
    """

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 pre_process: bool = True, post_process: bool = True, parallel_output: bool = True,
                 fp16_lm_cross_entropy: bool = False, num_tokentypes: int = 0, label_smoothing: float = 0.0,
                 pg: Optional[ProcessGroups] = None):
        super().__init__(config, pre_process, post_process, pg)
        self.vocab_size = vocab_size
        self.parallel_output = parallel_output
        self.fp16_lm_cross_entropy = fp16_lm_cross_entropy
        self.label_smoothing = label_smoothing
        self.language_model = TransformerLanguageModel(
            config, vocab_size, max_sequence_length, AttnMaskType.causal, num_tokentypes=num_tokentypes,
            pre_process=pre_process, post_process=post_process, pg=self.pg,
            add_output_layer=config.untie_embeddings_and_output_weights)
        self.initialize_word_embeddings(vocab_size)

    def has_output_layer(self) -> bool:
        return self.post_process and not self.config.untie_embeddings_and_output_weights

    def word_embeddings_weight(self) -> Optional[torch.Tensor]:
        if self.config.untie_embeddings_and_output_weights:
            # Nothing is tied: no stage keeps a copy and none joins the embedding-group all-reduce.
            return None
        return super().word_embeddings_weight()

    def output_weight(self) -> torch.Tensor:
        """The vocab-parallel weight the logits are computed with ``[v / tp, h]``."""
        if self.config.untie_embeddings_and_output_weights:
            return self.language_model.output_layer.weight
        return super().word_embeddings_weight()

    def forward(self, input_ids: torch.Tensor, position_ids: Optional[torch.Tensor] = None,
                attention_mask: Optional[torch.Tensor] = None, labels: Optional[torch.Tensor] = None,
                tokentype_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.language_model(input_ids, position_ids, attention_mask, tokentype_ids=tokentype_ids)
        if not self.post_process:
            return hidden
        logits = parallel_lm_logits(hidden, self.output_weight(), self.parallel_output, self.pg,
                                    self.config.sequence_parallel, logit_multiplier=self.config.mup_output_multiplier)
        if labels is not None and not self.parallel_output:
            raise ValueError("GPTModel computes the loss from vocab-parallel logits; use parallel_output=True with labels")
        return logits_or_loss(logits, labels, self.fp16_lm_cross_entropy, self.pg, self.label_smoothing)
