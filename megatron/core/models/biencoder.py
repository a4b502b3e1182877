"""The ICT biencoder: a query tower and a context tower (separate or shared), each a BERT encoder
whose ``[CLS]`` output, optionally projected, is the embedding used for retrieval.

State-dict names follow Megatron-LM: ``query_model`` / ``context_model`` (or ``shared_model``),
each holding ``language_model`` and, with a projection, ``projection_enc``. The towers are
tensor-parallel; like Megatron-LM's, the biencoder runs on a single pipeline stage.

``only_query_model`` / ``only_context_model`` build one tower (for embedding queries or indexing
blocks); its state-dict names are those of the full model, so it loads from a full checkpoint by
ignoring the other tower's entries.
"""
import dataclasses
import zlib
from typing import Dict, Optional, Tuple

import torch
from torch import nn

from megatron.core.models.bert import bert_extended_attention_mask
from megatron.core.models.language_model import TransformerLanguageModel, replicated_linear
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import gather_from_sequence_parallel_region, init_rng_scope
from megatron.core.transformer import AttnMaskType, TransformerConfig


class PretrainedBertModel(nn.Module):
    """A BERT encoder returning the (projected) ``[CLS]`` hidden state ``[b, h or projection_dim]``."""

    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 num_tokentypes: int = 2, projection_dim: int = 0, pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.language_model = TransformerLanguageModel(
            config, vocab_size, max_sequence_length, AttnMaskType.padding, num_tokentypes=num_tokentypes,
            pre_process=True, post_process=True, pg=self.pg)
        self.projection_dim = projection_dim
        if projection_dim > 0:
            with init_rng_scope(config.init_seed, "projection_enc"):
                self.projection_enc = replicated_linear(config.hidden_size, projection_dim, config)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                tokentype_ids: Optional[torch.Tensor] = None) -> torch.Tensor:
        hidden = self.language_model(input_ids, None, bert_extended_attention_mask(attention_mask),
                                     tokentype_ids=tokentype_ids)  # [s(/tp), b, h]
        if self.config.sequence_parallel and self.pg.tensor_model_parallel_size > 1:
            hidden = gather_from_sequence_parallel_region(hidden, self.pg.tp, tensor_parallel_output_grad=False)
        pooled = hidden[0]  # [CLS]: [b, h]
        if self.projection_dim > 0:
            pooled = self.projection_enc(pooled)
        return pooled


class BiEncoderModel(nn.Module):
    def __init__(self, config: TransformerConfig, vocab_size: int, max_sequence_length: int,
                 num_tokentypes: int = 2, projection_dim: int = 0, shared_query_context_model: bool = False,
                 pg: Optional[ProcessGroups] = None, only_query_model: bool = False,
                 only_context_model: bool = False):
        super().__init__()
        if only_query_model and only_context_model:
            raise ValueError("only_query_model and only_context_model are mutually exclusive")
        if config.use_mup:
            # The retrieval score is a dot product of two width-sized embeddings, a readout μP would
            # have to rescale; no rule for it is implemented, so --use-mup would not do what it says.
            raise ValueError("use_mup (--use-mup) is not supported for the biencoder (ICT/REALM retriever): its "
                             "retrieval score has no muP rule here")
        self.pg = pg if pg is not None else get_process_groups()
        if self.pg.pipeline_model_parallel_size != 1:
            raise ValueError(
                f"BiEncoderModel runs on one pipeline stage; got pipeline_model_parallel_size "
                f"{self.pg.pipeline_model_parallel_size}")
        self.shared_query_context_model = shared_query_context_model
        self.only_query_model = only_query_model
        self.only_context_model = only_context_model

        def tower(name):
            # Each tower draws from its own seed (when init_seed is set): two towers built from
            # one seed would otherwise start identical.
            tower_config = config if config.init_seed is None else dataclasses.replace(
                config, init_seed=config.init_seed + zlib.crc32(name.encode("utf-8")))
            return PretrainedBertModel(tower_config, vocab_size, max_sequence_length, num_tokentypes,
                                       projection_dim, self.pg)

        self.query_model: Optional[PretrainedBertModel] = None
        self.context_model: Optional[PretrainedBertModel] = None
        if shared_query_context_model:
            # One tower serves both sides, so a "half" model is the whole model.
            self.shared_model = tower("shared_model")
        else:
            if not only_context_model:
                self.query_model = tower("query_model")
            if not only_query_model:
                self.context_model = tower("context_model")

    def set_input_tensor(self, input_tensor) -> None:
        """The schedules' hook; a single-stage model never receives activations."""
        received = input_tensor if isinstance(input_tensor, (list, tuple)) else [input_tensor]
        if any(t is not None for t in received):
            raise ValueError("BiEncoderModel runs on one pipeline stage and cannot take received activations")

    def towers(self) -> Tuple[Optional[PretrainedBertModel], Optional[PretrainedBertModel]]:
        """(query tower, context tower); None for a tower a half model did not build."""
        if self.shared_query_context_model:
            return self.shared_model, self.shared_model
        return self.query_model, self.context_model

    def absent_tower_prefixes(self) -> Tuple[str, ...]:
        """State-dict prefixes of the towers this (half) model leaves out."""
        if self.shared_query_context_model:
            return ()
        return tuple(f"{name}." for name in ("query_model", "context_model") if getattr(self, name) is None)

    def forward(self, query_tokens: Optional[torch.Tensor], query_attention_mask: Optional[torch.Tensor],
                query_types: Optional[torch.Tensor], context_tokens: Optional[torch.Tensor],
                context_attention_mask: Optional[torch.Tensor], context_types: Optional[torch.Tensor]):
        """(query embeddings [b, d], context embeddings [b, d]); a side given no tokens returns None."""
        query_tower, context_tower = self.towers()
        query_logits = context_logits = None
        if query_tokens is not None:
            if query_tower is None:
                raise ValueError("this BiEncoderModel was built with only_context_model: it cannot embed queries")
            query_logits = query_tower(query_tokens, query_attention_mask, query_types)
        if context_tokens is not None:
            if context_tower is None:
                raise ValueError("this BiEncoderModel was built with only_query_model: it cannot embed contexts")
            context_logits = context_tower(context_tokens, context_attention_mask, context_types)
        return query_logits, context_logits

    def init_from_bert_state_dict(self, bert_state_dict: Dict[str, torch.Tensor]) -> None:
        """Start both towers from a BERT model's embedding and encoder (pooler and heads are dropped)."""
        prefix = "language_model."
        encoder_state = {key[len(prefix):]: value for key, value in bert_state_dict.items()
                         if key.startswith(prefix) and not key.startswith(prefix + "pooler.")}
        if not encoder_state:
            raise ValueError("the BERT state dict has no 'language_model.' entries to initialise the biencoder from")
        for model in {id(t): t for t in self.towers() if t is not None}.values():
            model.language_model.load_state_dict(encoder_state, strict=True)
