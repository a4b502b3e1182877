"""Undo WikiText's tokenisation (" @-@ ", spaced punctuation, " 's") before BPE, so the GPT sees
ordinary text; the word count for the adjusted perplexity is taken from the raw text instead."""
import re

# (pattern, replacement) applied in order; each undoes one convention of the WikiText dump.
_RULES = [
    (re.compile(r" @([-,.])@ "), r"\1"),          # 1 @,@ 000 -> 1,000 ; well @-@ known -> well-known
    (re.compile(r" ([.,:;?!%])(?= |$)"), r"\1"),   # word , word -> word, word
    (re.compile(r" ' s\b"), "'s"),                  # the city ' s -> the city's
    (re.compile(r" (n't|'s|'re|'ve|'ll|'d|'m)\b"), r"\1"),
    (re.compile(r"\( "), "("),
    (re.compile(r" \)"), ")"),
    (re.compile(r"\[ "), "["),
    (re.compile(r" \]"), "]"),
    (re.compile(r"\{ "), "{"),
    (re.compile(r" \}"), "}"),
    # Section markers: "= = Title = =" -> "== Title ==" (longest runs first).
    (re.compile(r"= = = ="), "===="),
    (re.compile(r"= = ="), "==="),
    (re.compile(r"= ="), "=="),
    (re.compile(r" \n"), "\n"),
    (re.compile(r"\n "), "\n"),
]


def _join_quotes(text: str) -> str:
    """' " word word " ' -> '"word word"': the opening and closing quotes alternate."""
    pieces = text.split(' " ')
    if len(pieces) < 2:
        return text
    out = pieces[0]
    for i, piece in enumerate(pieces[1:]):
        out += (' "' if i % 2 == 0 else '" ') + piece
    return out


def wikitext_detokenize(text: str) -> str:
    for pattern, replacement in _RULES:
        text = pattern.sub(replacement, text)
    return _join_quotes(text)
