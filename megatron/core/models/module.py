"""Base class of the language models: the word embedding shared by the input and the output layer.

With one pipeline stage the output layer simply reuses ``language_model.embedding.word_embeddings``.
With several, the last stage holds a copy, ``word_embeddings_for_head`` (the name Megatron-LM
saves it under). The copy starts equal to the first stage's table (broadcast over the embedding
group at construction) and stays equal because both gradients are all-reduced over that group
after every backward (``pipeline_parallel.finalize.allreduce_embedding_grads``).
"""
from typing import Optional

import torch
import torch.distributed as dist
from torch import nn

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import VocabParallelEmbedding
from megatron.core.tensor_parallel.mappings import broadcast_tensors
from megatron.core.transformer import ModelType, TransformerConfig


class LanguageModule(nn.Module):
    model_type = ModelType.encoder_or_decoder

    def __init__(self, config: TransformerConfig, pre_process: bool, post_process: bool,
                 pg: Optional[ProcessGroups] = None):
        super().__init__()
        self.pg = pg if pg is not None else get_process_groups()
        self.config = config
        self.pre_process = pre_process
        self.post_process = post_process
        config.validate_layout(self.pg.tensor_model_parallel_size)

    def has_output_layer(self) -> bool:
        """Whether this stage ends in the output layer that is tied to the word embedding."""
        return self.post_process

    def word_embeddings_weight(self) -> Optional[torch.Tensor]:
        if self.pre_process:
            return self.language_model.embedding.word_embeddings.weight
        if self.has_output_layer() and hasattr(self, "word_embeddings_for_head"):
            return self.word_embeddings_for_head.weight
        return None

    def set_input_tensor(self, input_tensor) -> None:
        self.language_model.set_input_tensor(input_tensor)

    def _owns_embedding_copy(self) -> bool:
        """Whether this module is the one on its rank that takes part in the embedding group."""
        pg = self.pg
        return (pg.pipeline_model_parallel_size > 1 and len(pg.embd_ranks) > 1
                and pg.rank in pg.embd_ranks and (self.pre_process or self.has_output_layer()))

    def initialize_word_embeddings(self, vocab_size: int) -> None:
        """Create the last stage's copy of the word embedding and make every copy equal."""
        pg = self.pg
        if self.has_output_layer() and not self.pre_process and pg.pipeline_model_parallel_size > 1:
            # Zeros until the broadcast below: drawing it would shift the default generator.
            zeros = lambda tensor: nn.init.zeros_(tensor)  # noqa: E731
            self.word_embeddings_for_head = VocabParallelEmbedding(
                vocab_size, self.config.hidden_size, config=self.config, init_method=zeros, pg=pg)
        if not self._owns_embedding_copy():
            return
        weight = self.word_embeddings_weight()
        if weight is None:
            return
        weight.shared = True
        if dist.is_initialized():
            broadcast_tensors([weight.data], src=pg.embd_ranks[0], group=pg.embd)
        self._initialize_position_embeddings()

    def _initialize_position_embeddings(self) -> None:
        """An encoder-decoder split keeps a position table on the first encoder and first decoder stage."""
        pg = self.pg
        if (pg.pipeline_model_parallel_split_rank is None or not self.pre_process or len(pg.pos_embd_ranks) < 2
                or pg.rank not in pg.pos_embd_ranks or not dist.is_initialized()):
            return
        embedding = self.language_model.embedding
        if not embedding.add_position_embedding:
            return
        broadcast_tensors([embedding.position_embeddings.weight.data], src=pg.pos_embd_ranks[0], group=pg.pos_embd)
