"""A SentencePiece ``.model`` (``--tokenizer-model``) behind the common interface."""
import os

from .base import MegatronTokenizer


class SentencePieceTokenizer(MegatronTokenizer):
    """SentencePiece ids as the model file defines them.

    ``bos``, ``eos``, ``pad`` (and ``eod`` = ``eos``) are the model's own ids; a role the
    model disables (id -1) raises. No tokens are added and no text is parsed as a special
    token, so ``vocab_size`` is the model's piece count (Megatron's GPTSentencePieceTokenizer
    semantics).
    """

    name = "SentencePieceTokenizer"

    def __init__(self, tokenizer_model):
        import sentencepiece

        path = os.fspath(tokenizer_model)
        if not os.path.isfile(path):
            raise ValueError(f"--tokenizer-model {path}: no such file")
        self._sp = sentencepiece.SentencePieceProcessor()
        try:
            self._sp.Load(path)
        except (OSError, RuntimeError) as exc:
            raise ValueError(f"--tokenizer-model {path}: not a SentencePiece model ({exc})") from None
        self.tokenizer_model = path
        self._inv_vocab = {i: self._sp.IdToPiece(i) for i in range(self._sp.GetPieceSize())}
        self._vocab = {piece: i for i, piece in self._inv_vocab.items()}

    def _model_id(self, role, model_id):
        if model_id < 0:
            return self._missing(role, "the model disables it")
        return model_id

    @property
    def vocab_size(self):
        return self._sp.GetPieceSize()

    @property
    def vocab(self):
        return self._vocab

    @property
    def inv_vocab(self):
        return self._inv_vocab

    def tokenize(self, text):
        return self._sp.EncodeAsIds(text)

    def tokenize_batch(self, texts):
        # One text at a time: a list argument makes sentencepiece start its own threads.
        encode = self._sp.EncodeAsIds
        return [encode(text) for text in texts]

    def detokenize(self, token_ids):
        return self._sp.DecodeIds(list(token_ids))

    @property
    def bos(self):
        return self._model_id("bos", self._sp.bos_id())

    @property
    def eos(self):
        return self._model_id("eos", self._sp.eos_id())

    @property
    def eod(self):
        return self._model_id("eod", self._sp.eos_id())

    @property
    def pad(self):
        return self._model_id("pad", self._sp.pad_id())
