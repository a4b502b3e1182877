"""``--need-pad-id``: give a tokenizer without a pad token (GPT-2 BPE, most SentencePiece models)
a ``<pad>`` token, as NeMo does for its RETRO data.

The pad token is appended after the last id, so every existing id keeps its meaning and
``vocab_size`` grows by one; the model's padded vocabulary (``vocab_size_with_padding``) is
computed from that size, so the embedding has a row for it. ``detokenize`` drops pad ids,
which is what chunk text for the retriever encoder needs.
"""
from .base import MegatronTokenizer

PAD_TOKEN = "<pad>"


class AddedPadTokenizer(MegatronTokenizer):
    """``tokenizer`` plus one ``<pad>`` token with id ``tokenizer.vocab_size``."""

    def __init__(self, tokenizer):
        self._inner = tokenizer
        self._pad_id = tokenizer.vocab_size
        self.name = getattr(tokenizer, "name", type(tokenizer).__name__)
        self._vocab = None
        self._inv_vocab = None

    @property
    def inner(self):
        return self._inner

    @property
    def vocab_size(self):
        return self._pad_id + 1

    @property
    def vocab(self):
        if self._vocab is None:
            self._vocab = {**self._inner.vocab, PAD_TOKEN: self._pad_id}
        return self._vocab

    @property
    def inv_vocab(self):
        if self._inv_vocab is None:
            self._inv_vocab = {**self._inner.inv_vocab, self._pad_id: PAD_TOKEN}
        return self._inv_vocab

    @property
    def pad(self):
        return self._pad_id

    def tokenize(self, text):
        return self._inner.tokenize(text)

    def tokenize_batch(self, texts):
        return self._inner.tokenize_batch(texts)

    def detokenize(self, token_ids):
        pad = self._pad_id
        return self._inner.detokenize([int(t) for t in token_ids if int(t) != pad])

    # The other special tokens are the inner tokenizer's (or its MissingSpecialTokenError).
    cls = property(lambda self: self._inner.cls)
    sep = property(lambda self: self._inner.sep)
    mask = property(lambda self: self._inner.mask)
    eod = property(lambda self: self._inner.eod)
    bos = property(lambda self: self._inner.bos)
    eos = property(lambda self: self._inner.eos)
    additional_special_tokens_ids = property(lambda self: self._inner.additional_special_tokens_ids)

    def __getattr__(self, name):
        # Anything else (convert_ids_to_tokens, vocab_file, ...) is the inner tokenizer's.
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._inner, name)


def has_pad(tokenizer):
    try:
        tokenizer.pad
    except (AttributeError, NotImplementedError, KeyError):
        return False
    return True


def with_pad_token(tokenizer):
    """``tokenizer`` itself when it has a pad token, else it wrapped with an added ``<pad>``."""
    return tokenizer if has_pad(tokenizer) else AddedPadTokenizer(tokenizer)
