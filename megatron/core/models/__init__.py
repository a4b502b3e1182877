"""Models built from the parallel transformer: GPT, BERT, T5 and the ICT biencoder."""
from megatron.core.models.bert import BertModel, bert_extended_attention_mask
from megatron.core.models.biencoder import BiEncoderModel, PretrainedBertModel
from megatron.core.models.gpt import GPTModel
from megatron.core.models.language_model import Embedding, Pooler, TransformerLanguageModel, parallel_lm_logits
from megatron.core.models.module import LanguageModule
from megatron.core.models.t5 import T5Model, t5_extended_attention_mask

__all__ = [
    "BertModel", "BiEncoderModel", "Embedding", "GPTModel", "LanguageModule", "Pooler", "PretrainedBertModel",
    "T5Model", "TransformerLanguageModel", "bert_extended_attention_mask", "parallel_lm_logits",
    "t5_extended_attention_mask",
]
