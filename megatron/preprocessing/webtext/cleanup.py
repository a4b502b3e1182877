"""Document cleaning: repair mojibake with ftfy, keep the wanted languages, drop short documents.

Language identification uses py3langid (langid.py's model, offline, pip-installable): on the
comparison in benchmarks/RESULTS.md it was both faster and more accurate than langdetect, and
unlike langdetect it is deterministic. Token counts are GPT-2 tokens when a GPT-2 vocabulary
is given; otherwise the pieces of GPT-2's pre-tokenizer regex, which every BPE encoding has at
least as many tokens as (a lower bound, so ``--min-tokens`` never drops a document that would
reach it).
"""
import collections
from dataclasses import dataclass, field
from typing import List, Optional, Sequence, Tuple

from .jsonl import Batch, dumps, parse_line

REASONS = ("kept", "empty", "language", "too_short")


@dataclass
class CleanupConfig:
    text_key: str = "text"
    languages: Sequence[str] = ("en",)
    min_lang_prob: float = 0.0
    langid_chars: int = 0  # 0: classify the whole document
    min_tokens: int = 128
    fix_text: bool = True
    vocab_file: Optional[str] = None
    merge_file: Optional[str] = None
    keep_language_field: Optional[str] = None


class TokenCounter:
    def __init__(self, vocab_file: Optional[str] = None, merge_file: Optional[str] = None):
        if vocab_file:
            from megatron.tokenizer.gpt2 import GPT2BPETokenizer
            self._tokenizer = GPT2BPETokenizer(vocab_file, merge_file)
            self._pattern = None
        else:
            import regex

            from megatron.tokenizer.gpt2 import GPT2_SPLIT_PATTERN
            self._tokenizer = None
            self._pattern = regex.compile(GPT2_SPLIT_PATTERN)

    def count(self, text: str, stop_at: int) -> int:
        """Tokens in ``text``, counting no further than ``stop_at`` (enough to compare with it)."""
        if self._tokenizer is not None:
            return len(self._tokenizer.tokenize(text))
        n = 0
        for _ in self._pattern.finditer(text):
            n += 1
            if n >= stop_at:
                break
        return n


class LanguageFilter:
    def __init__(self, languages: Sequence[str], min_prob: float = 0.0, max_chars: int = 0):
        from py3langid.langid import MODEL_FILE, LanguageIdentifier
        # Normalised probabilities only when a probability floor is asked for: they cost an exp per class.
        self._identifier = LanguageIdentifier.from_model_file(MODEL_FILE, norm_probs=min_prob > 0)
        self.languages = set(languages)
        self.min_prob = min_prob
        self.max_chars = max_chars

    def classify(self, text: str) -> Tuple[str, float]:
        return self._identifier.classify(text[:self.max_chars] if self.max_chars else text)

    def keep(self, language: str, prob: float) -> bool:
        return language in self.languages and (self.min_prob <= 0 or prob >= self.min_prob)


@dataclass
class _State:
    config: CleanupConfig
    language: LanguageFilter
    tokens: TokenCounter
    counts: collections.Counter = field(default_factory=collections.Counter)


_state: Optional[_State] = None


def init_worker(config: CleanupConfig) -> None:
    global _state
    _state = _State(config, LanguageFilter(config.languages, config.min_lang_prob, config.langid_chars),
                    TokenCounter(config.vocab_file, config.merge_file))


def clean_text(text: str, state: _State) -> Tuple[Optional[str], str, str]:
    """(cleaned text or None, reason, detected language)."""
    import ftfy

    if state.config.fix_text:
        text = ftfy.fix_text(text)
    if not text.strip():
        return None, "empty", ""
    language, prob = state.language.classify(text)
    if not state.language.keep(language, prob):
        # A wanted language below --min-lang-prob is told apart from a foreign one in the report.
        return None, "language", language if language not in state.language.languages else f"{language} (low prob)"
    if state.tokens.count(text, state.config.min_tokens) < state.config.min_tokens:
        return None, "too_short", language
    return text, "kept", language


def clean_batch(batch: Batch) -> Tuple[List[str], collections.Counter, collections.Counter]:
    """(output lines, counts per reason, counts per dropped language) for one batch."""
    path, lines = batch
    state = _state
    key = state.config.text_key
    out, reasons, languages = [], collections.Counter(), collections.Counter()
    for number, _, raw in lines:
        record = parse_line(path, number, raw, (key,))
        original = record[key]
        text, reason, language = clean_text(original, state)
        reasons[reason] += 1
        if text is None:
            if reason == "language":
                languages[language] += 1
            continue
        if text != original:
            reasons["fixed_by_ftfy"] += 1
        record[key] = text
        if state.config.keep_language_field:
            record[state.config.keep_language_field] = language
        out.append(dumps(record))
    return out, reasons, languages
