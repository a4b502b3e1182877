"""Varied test lines shared by the tokenizer tests, and tests of the common interface."""
import random
import subprocess
import sys

import pytest

from megatron.tokenizer import MegatronTokenizer, MissingSpecialTokenError

# Characters chosen for the ways tokenizers go wrong: accents (precomposed and combining),
# Greek capitals (final sigma), dotted I, sharp s, CJK inside and just outside BERT's
# ranges, kana and Hangul, emoji (with ZWJ and skin tones), controls, NUL, U+FFFD, odd
# whitespace (NBSP, ideographic space, line/paragraph separators, \x1c, \x85), zero-width
# and bidi marks, letters unassigned in Python's Unicode tables but letters for the
# ``regex`` module, and punctuation of every kind.
_SPECIALS = (
    "é", "e\u0301", "ñ", "n\u0303", "ü", "Å", "ΣΑΣ", "ΟΔΟΣ", "ς", "İ", "ı", "ß", "ẞ", "ﬁ", "Ⅻ", "½", "²",
    "中", "文", "𠀀", "\U0002B820", "\U0002B91F", "\U0002CEA1", "\uf900", "の", "カ", "한", "국",
    "😀", "👩\u200d💻", "👍🏽", "🥲", "\x00", "\x01", "\x07", "\x7f", "\ufffd", "\x1c", "\x85", "\xa0",
    "\u3000", "\u2028", "\u2029", "\u200b", "\u200d", "\ufeff", "\u202e", "\u180e", "\u0c5c", "\U00010940",
    "\u0378", "¿", "¡", "«", "»", "—", "–", "…", "’", "“", "”", "‹", "·", "、", "。", "§", "¶", "$", "^", "`",
    "~", "\\", "|", "@", "#", "%", "&", "*", "(", ")", "[", "]", "{", "}", "<", ">", "'s", "'ll", "n't",
    "≠", "a≠b", "≮", "\u1fef", "\u1fed", "\u037e", "\u0387", "Ǆ", "ǅ", "\u0130", "\u1e9e", "ΣΑΣ.Α", "ᾼ", "Ω",
)
_WORDS = ("the", "The", "THE", "naïve", "café", "Straße", "İstanbul", "ΑΘΗΝΑ", "東京", "def", "self.x",
          "x_1", "0x1F", "3.14159", "1,000,000", "e-mail", "don't", "we're", "it's", "a+b=c", "==", "->")
_SPACES = (" ", "  ", "\t", "\n", "\n\n", " \t ", "\r\n", "   ")


def _adversarial_line(rng):
    parts = []
    for _ in range(rng.randint(1, 24)):
        choice = rng.random()
        if choice < 0.35:
            parts.append(rng.choice(_WORDS))
        elif choice < 0.65:
            parts.append(rng.choice(_SPECIALS))
        elif choice < 0.75:
            parts.append(chr(rng.choice([rng.randint(0x20, 0x7E), rng.randint(0xA0, 0x2FFF),
                                         rng.randint(0x3000, 0xD7FF), rng.randint(0xE000, 0x2FFFF)])))
        elif choice < 0.8:
            parts.append(str(rng.randint(0, 10**rng.randint(1, 12))))
        else:
            parts.append(rng.choice(_SPACES))
        if rng.random() < 0.5:
            parts.append(" ")
    return "".join(parts)


def varied_lines(n_topic_lines=1500, n_adversarial=1500, seed=1234):
    """Lines from ``pydoc_data.topics`` (prose and code) plus generated adversarial lines.

    Also a few fixed edge cases: empty text, whitespace only, words of 199-201 and 400
    characters (BERT's 200-character limit), long runs of spaces and digits.
    """
    from pydoc_data.topics import topics

    rng = random.Random(seed)
    text_lines = [line for name in sorted(topics) for line in topics[name].split("\n")]
    picked = rng.sample(text_lines, min(n_topic_lines, len(text_lines)))
    # Whole multi-line paragraphs too, so newline and indentation runs are exercised.
    paragraphs = [topics[name][:2000] for name in sorted(topics)[:40]]
    fixed = ["", " ", "\n", "\t\t", "a" * 199, "b" * 200, "c" * 201, "x" * 400 + " end", "é" * 201,
             "word" + " " * 30 + "word", "1" * 50, "<|endoftext|>", "a<|endoftext|>b", "[CLS] [SEP] [MASK]",
             "<extra_id_0> [BOS] [EOS]", "    def f(x):\n        return x  # comment\n"]
    return fixed + paragraphs + picked + [_adversarial_line(rng) for _ in range(n_adversarial)]


class _Minimal(MegatronTokenizer):
    name = "Minimal"

    vocab_size = property(lambda self: 2)
    vocab = property(lambda self: {"a": 0, "b": 1})
    inv_vocab = property(lambda self: {0: "a", 1: "b"})

    def tokenize(self, text):
        return [self.vocab[c] for c in text]

    def detokenize(self, token_ids):
        return "".join(self.inv_vocab[i] for i in token_ids)


@pytest.mark.parametrize("role", ["cls", "sep", "pad", "mask", "eod", "bos", "eos"])
def test_missing_special_token_names_tokenizer_and_role(role):
    tokenizer = _Minimal()
    with pytest.raises(MissingSpecialTokenError, match=f"^Minimal has no {role} token$"):
        getattr(tokenizer, role)
    with pytest.raises(NotImplementedError):
        getattr(tokenizer, role)
    assert not hasattr(tokenizer, role)
    assert tokenizer.additional_special_tokens_ids == []


def test_default_tokenize_batch_equals_tokenize():
    tokenizer = _Minimal()
    assert tokenizer.tokenize_batch(["ab", "", "ba"]) == [[0, 1], [], [1, 0]]


def test_varied_lines_are_deterministic_and_varied():
    lines = varied_lines(50, 50)
    assert lines == varied_lines(50, 50)
    joined = "".join(lines)
    assert any(ord(c) > 0xFFFF for c in joined) and "\x00" in joined and "\t" in joined


def test_import_is_light_and_fast():
    # The preprocessing tool's workers import this package; torch/transformers would cost seconds.
    code = ("import sys, time; t = time.perf_counter(); import megatron.tokenizer; "
            "dt = time.perf_counter() - t; "
            "print(dt, [m for m in ('torch', 'transformers', 'sentencepiece', 'tiktoken') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split(" ", 1)
    assert float(out[0]) < 0.5
    assert out[1].strip() == "[]"
