"""Salient spans for REALM's masked-language-model queries: named entities, dates and numbers.

REALM masks one *salient span* of a sentence (an entity or a date) rather than random tokens, so
that predicting it needs world knowledge a retrieved document can supply. Google tagged its
corpus with a BERT-based CoNLL-2003 tagger plus a date regular expression; this module offers:

* **dates** by regular expression: ``December 20, 2018``, ``20 December 2018``, ``December 2018``,
  ``2018-12-20``, and years ``1000``-``2099`` (``1990s`` too);
* **numbers** by regular expression: digit runs with ``,``/``.`` groups and an optional ``%``,
  not glued to letters or underscores (``x86``, ``utf_8`` and ``3to2`` are not numbers);
* **named entities** from a spaCy pipeline when one is named (``ner_model``) and installed, else
  from the **capitalisation heuristic**: a maximal run of capitalised words (first letter upper
  case) separated by single spaces, possibly joined by the particles of name phrases (``of``,
  ``de``, ``van``, ``von``, ``der``, ``la``, ``le``, ``da``, ``di``, ``del``, ``du``), with
  leading articles and sentence-opening function words (``The``, ``See``, ``In``...) dropped.
  A lone capitalised word that opens a sentence (text start, or after ``.``, ``!``, ``?``, ``:``
  or a newline) is kept only when it is written in capitals (``NASA``) or has an inner capital
  (``PyPI``), since every sentence opens with a capital; those function words never count alone.

Overlaps are resolved in that order: dates, then numbers, then entities; a later span that
overlaps an earlier one is dropped. No torch import.
"""
import importlib.util
import re
from typing import List, Optional, Tuple

__all__ = ["SalientSpanTagger", "SalientSpanError", "tag_dates", "tag_numbers", "tag_capitalised_entities"]

Span = Tuple[int, int]

_MONTHS = ("January|February|March|April|May|June|July|August|September|October|November|December|"
           "Jan|Feb|Mar|Apr|Jun|Jul|Aug|Sep|Sept|Oct|Nov|Dec")
_DAY = r"\d{1,2}(?:st|nd|rd|th)?"
_DATE_RE = re.compile(
    rf"\b(?:(?:{_MONTHS})\.?\s+{_DAY},?\s+\d{{4}}"  # December 20, 2018
    rf"|{_DAY}\s+(?:{_MONTHS})\.?,?\s+\d{{4}}"  # 20 December 2018
    rf"|(?:{_MONTHS})\.?\s+\d{{4}}"  # December 2018
    r"|\d{4}-\d{2}-\d{2}"  # 2018-12-20
    r"|(?:1\d|20)\d{2}s?)\b")  # 1991, 1990s
_NUMBER_RE = re.compile(r"(?<![\w.])\d+(?:[.,]\d+)*%?(?![\w])")
_WORD_RE = re.compile(r"[^\W\d_][\w'\u2019-]*")
_PARTICLES = frozenset("of de van von der den la le da di del du".split())
# Capitalised only because they open a sentence (or a heading); never entities on their own.
_OPENERS = frozenset((
    "The A An This That These Those It Its In On At For From To By With As If When While Where Which Who "
    "What Why How There Here Then Thus So But And Or Not No Yes All Any Each Every Some Many Most Such "
    "Both Either Neither One Two Also However Note See Use Used Using Return Returns Otherwise Only "
    "After Before Since Unless Until Because Although Though Whether I We You He She They Our Your "
    "Their His Her My Do Does Is Are Was Were Be Been Can Could May Might Must Shall Should Will Would "
    "New Other Example Examples").split())


class SalientSpanError(ValueError):
    """A tagger that cannot run as configured (e.g. a spaCy pipeline that is not installed)."""


def tag_dates(text: str) -> List[Span]:
    return [m.span() for m in _DATE_RE.finditer(text)]


def tag_numbers(text: str) -> List[Span]:
    return [m.span() for m in _NUMBER_RE.finditer(text)]


def _opens_sentence(text: str, start: int) -> bool:
    before = text[:start].rstrip(" \t\"'([")
    return not before or before[-1] in ".!?:\n" or text[max(0, start - 2):start].count("\n") > 0


def _is_capitalised(word: str) -> bool:
    return word[0].isupper()


def _stands_out(word: str) -> bool:
    """Written in capitals (two letters or more) or with an inner capital."""
    letters = [c for c in word if c.isalpha()]
    return (len(letters) > 1 and all(c.isupper() for c in letters)) or any(c.isupper() for c in word[1:])


def tag_capitalised_entities(text: str) -> List[Span]:
    """Entity spans by the capitalisation heuristic (module docstring)."""
    words = [(m.start(), m.end(), m.group()) for m in _WORD_RE.finditer(text)]
    spans: List[Span] = []
    i = 0
    while i < len(words):
        if not _is_capitalised(words[i][2]):
            i += 1
            continue
        run = [i]
        j = i + 1
        while j < len(words):
            gap = text[words[run[-1]][1]:words[j][0]]
            if gap != " ":
                break
            if _is_capitalised(words[j][2]):
                run.append(j)
                j += 1
                continue
            # A particle joins two capitalised words: "Bank of England", "Ludwig van Beethoven".
            if words[j][2] in _PARTICLES and j + 1 < len(words) and _is_capitalised(words[j + 1][2]) \
                    and text[words[j][1]:words[j + 1][0]] == " ":
                run.extend([j, j + 1])
                j += 2
                continue
            break
        i = j
        while run and words[run[0]][2] in _OPENERS:
            run = run[1:]
        if not run:
            continue
        first = words[run[0]]
        if len(run) == 1:
            word = first[2]
            if word in _OPENERS or (_opens_sentence(text, first[0]) and not _stands_out(word)):
                continue
        spans.append((first[0], words[run[-1]][1]))
    return spans


def _resolve(groups: List[List[Span]]) -> List[Span]:
    """Union of the groups, earlier groups winning overlaps; sorted by start."""
    kept: List[Span] = []
    for group in groups:
        for start, end in group:
            if end > start and all(end <= s or start >= e for s, e in kept):
                kept.append((start, end))
    return sorted(kept)


class SalientSpanTagger:
    """``tag(text) -> [(start, end)]`` character spans; ``method`` says which entity tagger runs.

    ``ner_model`` names an installed spaCy pipeline (e.g. ``en_core_web_sm``); without one the
    capitalisation heuristic tags entities. Naming a pipeline that cannot be loaded is an error
    (``SalientSpanError``), never a silent fallback.
    """

    def __init__(self, ner_model: Optional[str] = None):
        self.ner_model = ner_model
        self._nlp = None
        if ner_model:
            if importlib.util.find_spec("spacy") is None:
                raise SalientSpanError(f"--ner-model {ner_model}: spaCy is not installed (pip install spacy and the "
                                       f"pipeline), or leave --ner-model out for the capitalisation heuristic")
            import spacy

            try:
                self._nlp = spacy.load(ner_model, disable=["parser", "lemmatizer"])
            except (OSError, ImportError, ValueError) as error:
                reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
                raise SalientSpanError(f"--ner-model {ner_model}: the spaCy pipeline cannot be loaded "
                                       f"({reason[:200]})") from None
            if "ner" not in self._nlp.pipe_names:
                raise SalientSpanError(f"--ner-model {ner_model}: the spaCy pipeline has no 'ner' component")
            self.method = f"spaCy pipeline {ner_model} (entities) + regular expressions (dates, numbers)"
        else:
            self.method = "capitalisation heuristic (entities) + regular expressions (dates, numbers)"

    def entities(self, text: str) -> List[Span]:
        if self._nlp is None:
            return tag_capitalised_entities(text)
        return [(ent.start_char, ent.end_char) for ent in self._nlp(text).ents]

    def tag(self, text: str) -> List[Span]:
        return _resolve([tag_dates(text), tag_numbers(text), self.entities(text)])
