"""BERT WordPiece tokenizers with Megatron-LM's 2021 semantics.

The text is split the way Google's original BERT ``BasicTokenizer`` does (which is what
Megatron-LM ships): drop NUL, U+FFFD and control characters, turn whitespace into spaces,
put spaces around CJK ideographs, split on whitespace; for the uncased model lower-case and
strip accents (NFD, drop non-spacing marks); isolate punctuation. Each word is then cut by
greedy longest-match WordPiece (``##`` continuations, ``[UNK]`` for a word that cannot be
cut or is longer than 200 characters).

Character classes come from Python's own ``unicodedata`` (the reference runs on it), so the
basic step is done in Python with ``str.translate`` over lazily filled tables, which runs at
C speed. The Rust normalizer of ``tokenizers`` is not used for it: its Unicode tables are of
another version (a probe over all code points found 763 assigned characters, besides the
unassigned ones, that it handles differently) and it lower-cases the final sigma
differently. WordPiece itself is ``tokenizers``' Rust model, which implements exactly the
greedy algorithm above, behind a word cache.

No text is ever parsed as a special token: "[CLS]" in the input becomes ``[``, ``cl``,
``##s``, ``]`` as in Megatron-LM.
"""
import unicodedata
from itertools import chain

from .base import MegatronTokenizer

MAX_INPUT_CHARS_PER_WORD = 200  # Megatron's value; Hugging Face defaults to 100
UNK_TOKEN = "[UNK]"
REQUIRED_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
BOS_TOKEN = "[BOS]"
EOS_TOKEN = "[EOS]"

# BERT's CJK blocks: the CJK Unified Ideographs and their extensions, plus compatibility
# ideographs. Hangul, kana and CJK punctuation are deliberately not included.
_CJK_RANGES = (
    (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F),
    (0x2B740, 0x2B81F), (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F),
)


def _is_cjk(cp):
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def _is_control(ch):
    if ch in "\t\n\r":
        return False
    return unicodedata.category(ch).startswith("C")


def _is_whitespace(ch):
    # Besides BERT's own set (" \t\n\r" and Zs), anything str.split() splits on becomes a
    # space: BERT keeps such characters (U+2028, U+2029) but its later split() cuts there,
    # so mapping them to a space here gives the same words and lets the Rust side split on
    # plain spaces only.
    return ch in " \t\n\r" or unicodedata.category(ch) == "Zs" or ch.isspace()


def _is_punctuation(ch):
    cp = ord(ch)
    # BERT treats every non-alphanumeric ASCII character as punctuation ("$", "^", "`"...),
    # whatever its Unicode category.
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


class _CleanTable(dict):
    """``str.translate`` table for the cleaning step, filled on first sight of a character.

    Maps control characters (and NUL, U+FFFD) to deletion, whitespace to a space, CJK
    ideographs to themselves between spaces, and, when ``split_punctuation``, punctuation to
    itself between spaces.
    """

    def __init__(self, split_punctuation):
        super().__init__()
        self.split_punctuation = split_punctuation
        for cp in range(128):
            self[cp] = self.__missing__(cp)

    def __missing__(self, cp):
        ch = chr(cp)
        if cp == 0 or cp == 0xFFFD or _is_control(ch):
            value = None
        elif _is_whitespace(ch):
            value = " "
        elif _is_cjk(cp) or (self.split_punctuation and _is_punctuation(ch)):
            value = f" {ch} "
        else:
            value = ch
        self[cp] = value
        return value


class _StripAccentsSplitPunctuationTable(dict):
    """``str.translate`` table run after NFD: drops non-spacing marks, isolates punctuation."""

    def __missing__(self, cp):
        ch = chr(cp)
        if unicodedata.category(ch) == "Mn":
            value = None
        elif _is_punctuation(ch):
            value = f" {ch} "
        else:
            value = ch
        self[cp] = value
        return value


class _UncasedTable(dict):
    """``str.translate`` table doing the whole uncased basic step per character.

    Lower-casing, NFD, dropping non-spacing marks and isolating punctuation are all
    per-character except Python's final-sigma rule, so a text without a capital sigma can
    go through this one table. Punctuation is judged after decomposition, as BERT does:
    "≠" becomes "=" + U+0338, then the "=" is isolated.
    """

    def __init__(self):
        super().__init__()
        self._clean = _CleanTable(split_punctuation=False)

    def __missing__(self, cp):
        cleaned = self._clean[cp]
        if cleaned is None or cleaned == " ":
            value = cleaned
        else:
            ch = chr(cp)
            kept = []
            for part in unicodedata.normalize("NFD", ch.lower()):
                if unicodedata.category(part) == "Mn":
                    continue
                kept.append(f" {part} " if _is_punctuation(part) else part)
            value = "".join(kept)
            if _is_cjk(cp):
                value = f" {value} "
        self[cp] = value
        return value


class BasicTokenizer:
    """BERT's basic tokenization, returning the words separated by spaces.

    The result holds no whitespace other than U+0020, so ``str.split()`` yields BERT's words.
    """

    def __init__(self, lower_case):
        self.lower_case = lower_case
        self._clean_split = _CleanTable(split_punctuation=True)
        if lower_case:
            self._uncased = _UncasedTable()
            self._clean_only = _CleanTable(split_punctuation=False)
            self._strip_split = _StripAccentsSplitPunctuationTable()

    def __call__(self, text):
        if not self.lower_case:
            return text.translate(self._clean_split)
        if text.isascii():
            # ASCII has no accents, and lower() cannot create or remove punctuation.
            return text.translate(self._clean_split).lower()
        if "\u03a3" not in text:
            return text.translate(self._uncased)
        # Lower-casing the whole text equals lower-casing each word: the final-sigma rule
        # looks only across cased and case-ignorable characters, and a space is neither.
        text = text.translate(self._clean_only).lower()
        return unicodedata.normalize("NFD", text).translate(self._strip_split)


class _WordCache(dict):
    """word -> WordPiece ids, filled by the Rust model on a miss."""

    def __init__(self, model):
        super().__init__()
        self._model = model

    def __missing__(self, word):
        ids = [token.id for token in self._model.tokenize(word)]
        if len(word) <= 64:  # long words are rare and mostly unique: not worth the memory
            self[word] = ids
        return ids


def load_bert_vocab(vocab_file):
    """Read a BERT ``vocab.txt`` (one token per line, id = line number) into a dict."""
    try:
        with open(vocab_file, encoding="utf-8") as f:
            lines = f.read().split("\n")
    except OSError as exc:
        raise ValueError(f"--vocab-file {vocab_file}: cannot read ({exc.strerror})") from None
    except UnicodeDecodeError as exc:
        raise ValueError(f"--vocab-file {vocab_file}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    if lines and lines[-1] == "":
        lines.pop()
    vocab = {}
    for lineno, line in enumerate(lines, start=1):
        token = line.strip()
        if token in vocab:
            raise ValueError(f"{vocab_file}:{lineno}: duplicate token {token!r} (first at line {vocab[token] + 1})")
        vocab[token] = lineno - 1
    if not vocab:
        raise ValueError(f"--vocab-file {vocab_file}: empty vocabulary")
    missing = [t for t in REQUIRED_TOKENS if t not in vocab]
    if missing:
        raise ValueError(f"--vocab-file {vocab_file}: lacks the BERT token(s) {' '.join(missing)}")
    return vocab


class BertWordPieceTokenizer(MegatronTokenizer):
    """BERT WordPiece with Megatron's added ``[BOS]``, ``[EOS]`` and ``<extra_id_N>`` tokens.

    ``vocab_size`` counts the added tokens (30522 -> 30524 for the original BERT vocab);
    they are never produced by ``tokenize``, only placed by the data pipelines.

    The words of a text are looked up in a bounded cache of their WordPiece ids (natural
    text repeats its words, so most lookups hit); a miss is cut by ``tokenizers``' Rust
    WordPiece. This is faster than handing the whole text to ``tokenizers``, whose
    per-token bookkeeping (offsets, masks) dominates at these sizes.
    """

    #: entries kept in the word -> ids cache before it is emptied
    max_cached_words = 1 << 18

    name = "BertWordPiece"

    def __init__(self, vocab_file, lower_case=True, vocab_extra_ids=0):
        from tokenizers import models

        if vocab_extra_ids < 0:
            raise ValueError(f"--vocab-extra-ids {vocab_extra_ids} must be >= 0")
        self.vocab_file = vocab_file
        self.lower_case = lower_case
        wordpiece_vocab = load_bert_vocab(vocab_file)
        self._basic = BasicTokenizer(lower_case)
        self._wordpiece = models.WordPiece(
            wordpiece_vocab, unk_token=UNK_TOKEN, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD,
            continuing_subword_prefix="##")
        self._word_ids = _WordCache(self._wordpiece)

        self._vocab = dict(wordpiece_vocab)
        self._inv_vocab = {i: t for t, i in self._vocab.items()}
        self._bos_id = self._add_token(BOS_TOKEN)
        self._eos_id = self._add_token(EOS_TOKEN)
        self._extra_ids = [self._add_token(f"<extra_id_{i}>") for i in range(vocab_extra_ids)]

    def _add_token(self, token):
        # As in Megatron: a token already in vocab.txt keeps its id and adds nothing.
        if token not in self._vocab:
            new_id = len(self._vocab)
            self._vocab[token] = new_id
            self._inv_vocab[new_id] = token
        return self._vocab[token]

    @property
    def vocab_size(self):
        return len(self._vocab)

    @property
    def vocab(self):
        return self._vocab

    @property
    def inv_vocab(self):
        return self._inv_vocab

    def basic_tokenize(self, text):
        """The words of ``text`` before WordPiece (lower-cased and unaccented if uncased)."""
        return self._basic(text).split()

    def tokenize(self, text):
        if len(self._word_ids) > self.max_cached_words:
            self._word_ids.clear()
        return list(chain.from_iterable(map(self._word_ids.__getitem__, self._basic(text).split())))

    def tokenize_batch(self, texts):
        return [self.tokenize(text) for text in texts]

    def wordpiece(self, word):
        """The WordPiece tokens of one word (already basic-tokenized)."""
        return [self._inv_vocab[i] for i in self._word_ids[word]]

    def convert_ids_to_tokens(self, token_ids):
        inv = self._inv_vocab
        try:
            return [inv[i] for i in token_ids]
        except KeyError as exc:
            raise ValueError(
                f"{self.name}: token id {exc.args[0]!r} is not in the vocabulary of {self.vocab_size}") from None

    def detokenize(self, token_ids):
        # BERT's inverse: words joined by spaces, continuation pieces glued to the previous one.
        return " ".join(self.convert_ids_to_tokens(token_ids)).replace(" ##", "").strip()

    @property
    def cls(self):
        return self._vocab["[CLS]"]

    @property
    def sep(self):
        return self._vocab["[SEP]"]

    @property
    def pad(self):
        return self._vocab["[PAD]"]

    @property
    def mask(self):
        return self._vocab["[MASK]"]

    @property
    def bos(self):
        return self._bos_id

    @property
    def eos(self):
        return self._eos_id

    @property
    def additional_special_tokens_ids(self):
        return list(self._extra_ids)


class BertWordPieceLowerCase(BertWordPieceTokenizer):
    name = "BertWordPieceLowerCase"

    def __init__(self, vocab_file, vocab_extra_ids=0):
        super().__init__(vocab_file, lower_case=True, vocab_extra_ids=vocab_extra_ids)


class BertWordPieceCase(BertWordPieceTokenizer):
    name = "BertWordPieceCase"

    def __init__(self, vocab_file, vocab_extra_ids=0):
        super().__init__(vocab_file, lower_case=False, vocab_extra_ids=vocab_extra_ids)
