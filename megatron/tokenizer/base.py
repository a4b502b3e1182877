"""The interface every tokenizer keeps, and the error for a special token it lacks."""
import abc


class MissingSpecialTokenError(AttributeError, NotImplementedError):
    """Raised by a special-token property the tokenizer does not define.

    It is an AttributeError so that ``hasattr(tokenizer, "eod")`` and
    ``getattr(tokenizer, "eod", None)`` answer honestly, and a NotImplementedError because
    that is what Megatron-LM raises in the same place.
    """


class MegatronTokenizer(abc.ABC):
    """Text <-> token ids, plus the vocabulary and the special ids a model needs.

    ``vocab_size`` is the unpadded size, added tokens included; the model pads it
    (see ``vocab_size_with_padding``). ``tokenize_batch`` must stay single-threaded: it is
    called inside multiprocessing workers that each own one core.
    """

    #: the ``--tokenizer-type`` name, used in messages
    name = "MegatronTokenizer"

    @property
    @abc.abstractmethod
    def vocab_size(self):
        """Number of ids, added tokens included, before padding."""

    @property
    @abc.abstractmethod
    def vocab(self):
        """Dict token -> id."""

    @property
    @abc.abstractmethod
    def inv_vocab(self):
        """Dict id -> token."""

    @abc.abstractmethod
    def tokenize(self, text):
        """Return the ids of ``text`` as a list of ints."""

    def tokenize_batch(self, texts):
        """Return ``[self.tokenize(t) for t in texts]``; subclasses make it faster."""
        return [self.tokenize(text) for text in texts]

    @abc.abstractmethod
    def detokenize(self, token_ids):
        """Return the text of ``token_ids``."""

    def _missing(self, what, why=None):
        reason = f" ({why})" if why else ""
        raise MissingSpecialTokenError(f"{self.name} has no {what} token{reason}")

    @property
    def cls(self):
        return self._missing("cls")

    @property
    def sep(self):
        return self._missing("sep")

    @property
    def pad(self):
        return self._missing("pad")

    @property
    def mask(self):
        return self._missing("mask")

    @property
    def eod(self):
        return self._missing("eod")

    @property
    def bos(self):
        return self._missing("bos")

    @property
    def eos(self):
        return self._missing("eos")

    @property
    def additional_special_tokens_ids(self):
        """Ids of extra special tokens (e.g. T5's ``<extra_id_N>``); empty when there are none."""
        return []

    def __repr__(self):
        return f"{type(self).__name__}(vocab_size={self.vocab_size})"
