"""Punkt sentence boundaries, the same decisions as NLTK's tokenizer at several times the speed.

NLTK's ``PunktSentenceTokenizer.span_tokenize`` finds candidate boundaries (a ``.``, ``?``
or ``!`` followed by punctuation or by whitespace and a token) and, for each, builds a
small context (the word before, the candidate, what follows), word-tokenizes it into
token objects and runs its two annotation passes to decide. Most of its time goes into
those per-candidate objects and into the time-limit wrappers NLTK puts around every
regular expression. This module makes the same decisions with plain strings and the very
same compiled patterns (taken from NLTK at run time, unwrapped), so its output is equal
to NLTK's span for span; ``tests/unit/test_sentence_splitter.py`` checks that on real and
adversarial text.

The decision logic follows the Punkt paper (Kiss & Strunk, 2006) as NLTK implements it:
a type-based first pass (sentence-final punctuation, ellipses, known abbreviations) and
a token-based second pass (collocations, the orthographic heuristic, frequent sentence
starters, initials and ordinals).
"""
import string


def _unwrap(pattern):
    """The engine's compiled pattern behind NLTK's time-limited wrapper (if any)."""
    return getattr(pattern, "_rx", pattern)


_WHITESPACE = frozenset(string.whitespace)


class FastPunktSplitter:
    """Sentence spans for a text, given trained ``PunktParameters`` (NLTK's class)."""

    def __init__(self, params, punkt):
        lang_vars = punkt.PunktLanguageVars()
        self._period_context = _unwrap(lang_vars.period_context_re())
        self._word_tokenizer = _unwrap(lang_vars._word_tokenizer_re())
        self._realignment = _unwrap(lang_vars.re_boundary_realignment)
        self._sent_end_chars = frozenset(lang_vars.sent_end_chars)
        token = punkt.PunktToken
        self._numeric = _unwrap(token._RE_NUMERIC)
        self._ellipsis = _unwrap(token._RE_ELLIPSIS)
        self._initial = _unwrap(token._RE_INITIAL)
        self._punctuation = frozenset(punkt.PunktSentenceTokenizer.PUNCTUATION)
        self._ortho_lc, self._ortho_uc = punkt._ORTHO_LC, punkt._ORTHO_UC
        self._ortho_mid_uc, self._ortho_beg_lc = punkt._ORTHO_MID_UC, punkt._ORTHO_BEG_LC
        self._abbrev_types = params.abbrev_types
        self._collocations = params.collocations
        self._sent_starters = params.sent_starters
        # A plain dict: reading NLTK's defaultdict would insert every unseen type.
        self._ortho_context = dict(params.ortho_context)

    # -- token properties -------------------------------------------------------------
    def _type(self, tok):
        lowered = tok.lower()
        return "##number##" if self._numeric.match(lowered) else lowered

    @staticmethod
    def _without_period(typ):
        return typ[:-1] if len(typ) > 1 and typ[-1] == "." else typ

    def _first_pass(self, tok):
        """(sentbreak, abbreviation, ellipsis) from the token's type alone."""
        if tok in self._sent_end_chars:
            return True, False, False
        if self._ellipsis.match(tok):
            return False, False, True
        if tok.endswith(".") and not tok.endswith(".."):
            stem = tok[:-1].lower()
            if stem in self._abbrev_types or stem.split("-")[-1] in self._abbrev_types:
                return False, True, False
            return True, False, False
        return False, False, False

    def _starts_sentence(self, tok, typ):
        """The orthographic heuristic: True, False or 'unknown'."""
        if tok in self._punctuation:
            return False
        context = self._ortho_context.get(typ, 0)
        first = tok[0]
        if first.isupper() and (context & self._ortho_lc) and not (context & self._ortho_mid_uc):
            return True
        if first.islower() and ((context & self._ortho_uc) or not (context & self._ortho_beg_lc)):
            return False
        return "unknown"

    def _second_pass(self, tok, first, next_tok, next_first):
        """Whether ``tok`` ends a sentence, given the token that follows it."""
        sentbreak, abbreviation, ellipsis = first
        if not tok.endswith("."):
            return sentbreak
        typ = self._without_period(self._type(tok))
        next_type = self._type(next_tok)
        if next_first[0]:
            next_type = self._without_period(next_type)
        is_initial = self._initial.match(tok) is not None
        if (typ, next_type) in self._collocations:
            return False
        if (abbreviation or ellipsis) and not is_initial:
            if self._starts_sentence(next_tok, next_type) is True:
                return True
            if next_tok[0].isupper() and next_type in self._sent_starters:
                return True
        if is_initial or typ == "##number##":
            starts = self._starts_sentence(next_tok, next_type)
            if starts is False:
                return False
            if (starts == "unknown" and is_initial and next_tok[0].isupper()
                    and not (self._ortho_context.get(next_type, 0) & self._ortho_lc)):
                return False
        return sentbreak

    def contains_sentbreak(self, context):
        """True when a token of ``context`` other than the last ends a sentence."""
        tokens = []
        for line in context.split("\n"):
            if line.strip():
                tokens.extend(self._word_tokenizer.findall(line))
        if len(tokens) < 2:
            return False
        first = self._first_pass(tokens[0])
        for i in range(len(tokens) - 1):
            next_first = self._first_pass(tokens[i + 1])
            if self._second_pass(tokens[i], first, tokens[i + 1], next_first):
                return True
            first = next_first
        return False

    # -- boundaries -------------------------------------------------------------------
    @staticmethod
    def _last_whitespace(text, start, stop):
        """Index (relative to ``start``) of the last whitespace in text[start:stop], else 0."""
        for i in range(stop - 1, start - 1, -1):
            if text[i] in _WHITESPACE:
                return i - start
        return 0

    def _candidates(self, text):
        """(match, context) for each candidate boundary whose word does not overlap the next."""
        previous_start, previous_stop = 0, 0
        previous_match = None
        for match in self._period_context.finditer(text):
            whitespace = self._last_whitespace(text, previous_stop, match.start())
            # NLTK treats whitespace at offset 0 of the gap like no whitespace at all.
            word_start = whitespace + previous_stop + 1 if whitespace else previous_start
            if previous_match is not None and previous_stop <= word_start:
                yield previous_match, (text[previous_start:previous_stop] + previous_match.group()
                                       + previous_match.group("after_tok"))
            previous_match = match
            previous_start, previous_stop = word_start, match.start()
        if previous_match is not None:
            yield previous_match, (text[previous_start:previous_stop] + previous_match.group()
                                   + previous_match.group("after_tok"))

    def _raw_spans(self, text):
        last_break = 0
        for match, context in self._candidates(text):
            if self.contains_sentbreak(context):
                yield last_break, match.end()
                last_break = match.start("next_tok") if match.group("next_tok") else match.end()
        yield last_break, len(text.rstrip())

    def span_tokenize(self, text):
        """(start, stop) of each sentence, closing quotes and brackets realigned."""
        spans = []
        realign = 0
        raw = list(self._raw_spans(text))
        for i, (start, stop) in enumerate(raw):
            start += realign
            if i + 1 == len(raw):
                if stop > start:
                    spans.append((start, stop))
                continue
            next_start, next_stop = raw[i + 1]
            m = self._realignment.match(text[next_start:next_stop])
            if m:
                spans.append((start, next_start + len(m.group(0).rstrip())))
                realign = m.end()
            else:
                realign = 0
                if stop > start:
                    spans.append((start, stop))
        return spans
