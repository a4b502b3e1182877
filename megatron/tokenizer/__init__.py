"""Tokenizers: BERT WordPiece, GPT-2 BPE, Hugging Face tokenizer.json, SentencePiece.

Importing this package is cheap (no torch, no transformers); each tokenizer imports its
library when it is built.
"""
from .base import MegatronTokenizer, MissingSpecialTokenError
from .bert import BertWordPieceCase, BertWordPieceLowerCase, BertWordPieceTokenizer
from .build import TOKENIZER_TYPES, bert_uncased_vocab_path, build_tokenizer, vocab_size_with_padding
from .gpt2 import GPT2BPETokenizer
from .huggingface import HuggingFaceTokenizer
from .sentencepiece_tokenizer import SentencePieceTokenizer

__all__ = [
    "MegatronTokenizer", "MissingSpecialTokenError", "BertWordPieceTokenizer", "BertWordPieceLowerCase",
    "BertWordPieceCase", "GPT2BPETokenizer", "HuggingFaceTokenizer", "SentencePieceTokenizer",
    "TOKENIZER_TYPES", "build_tokenizer", "vocab_size_with_padding", "bert_uncased_vocab_path",
]
