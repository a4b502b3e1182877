"""Answer matching for open-domain QA retrieval accuracy (the DPR evaluation protocol).

A retrieved passage is a *hit* for a question when it contains one of the question's
answers:

- ``match_type="string"`` (Natural Questions, TriviaQA...): passage and answer are unicode
  NFD-normalised and split into tokens (runs of letters, digits and combining marks; every
  other non-space character is a token of its own), words lower-cased; a hit is the
  answer's token sequence appearing contiguously in the passage's. So "cat" matches
  "The Cat sat" but not "category", and "U.S." matches "u . s ." token for token.
- ``match_type="regex"`` (CuratedTREC): each answer is a regular expression searched
  case-insensitively in the NFD-normalised passage.

``top_k_hits`` turns per-question hit lists (in rank order) into top-k accuracy: the
percentage of questions whose first hit is at rank <= k, non-decreasing in k.
"""
import multiprocessing
import unicodedata
from functools import lru_cache
from typing import Dict, List, Sequence

import regex

__all__ = ["normalize", "SimpleTokenizer", "has_answer", "top_k_hits", "match_questions",
           "MATCH_TYPES"]

MATCH_TYPES = ("string", "regex")


def normalize(text: str) -> str:
    """Unicode NFD: accents become combining marks, so "é" and "e\u0301" compare equal."""
    return unicodedata.normalize("NFD", text)


class SimpleTokenizer:
    """Regex tokenizer: alphanumeric runs (with combining marks) or single other characters."""

    _WORD = r"[\p{L}\p{N}\p{M}]+"
    _OTHER = r"[^\p{Z}\p{C}]"

    def __init__(self):
        self._pattern = regex.compile(f"{self._WORD}|{self._OTHER}", flags=regex.UNICODE)

    def tokenize(self, text: str, uncased: bool = True) -> List[str]:
        tokens = [m.group() for m in self._pattern.finditer(text)]
        return [t.lower() for t in tokens] if uncased else tokens


_TOKENIZER = SimpleTokenizer()


@lru_cache(maxsize=4096)
def _compile_answer_regex(pattern: str):
    try:
        return regex.compile(pattern, flags=regex.IGNORECASE | regex.UNICODE | regex.MULTILINE)
    except regex.error as exc:
        raise ValueError(f"--faiss-match regex: answer {pattern!r} is not a valid regex ({exc})") from None


def _contains(tokens: List[str], answer: List[str]) -> bool:
    n = len(answer)
    first = answer[0]
    for i in range(len(tokens) - n + 1):
        if tokens[i] == first and tokens[i:i + n] == answer:
            return True
    return False


def has_answer(answers: Sequence[str], text: str, match_type: str = "string") -> bool:
    """Whether ``text`` contains one of ``answers`` (see the module docstring for the rules)."""
    if match_type not in MATCH_TYPES:
        raise ValueError(f"--faiss-match {match_type!r}: expected one of {', '.join(MATCH_TYPES)}")
    if isinstance(answers, str):
        answers = [answers]
    text = normalize(text or "")
    if match_type == "regex":
        return any(_compile_answer_regex(normalize(a)).search(text) is not None for a in answers)
    tokens = _TOKENIZER.tokenize(text)
    for answer in answers:
        answer_tokens = _TOKENIZER.tokenize(normalize(answer))
        if answer_tokens and _contains(tokens, answer_tokens):
            return True
    return False


def top_k_hits(hits: List[List[bool]], ks: Sequence[int]) -> Dict[int, float]:
    """Percent of questions whose first hit (rank order) is within the top k, for each k."""
    if len(hits) == 0:
        raise ValueError("top_k_hits: no questions to score")
    bad = [k for k in ks if int(k) < 1]
    if bad:
        raise ValueError(f"--retriever-report-topk-accuracies must be positive, got {bad}")
    first_hit = []
    for row in hits:
        rank = next((i for i, hit in enumerate(row) if hit), None)
        first_hit.append(rank)
    total = len(hits)
    return {int(k): 100.0 * sum(1 for r in first_hit if r is not None and r < int(k)) / total
            for k in ks}


def _match_one(job):
    answers, passages, match_type = job
    return [has_answer(answers, passage, match_type) for passage in passages]


def match_questions(answers_per_question: Sequence[Sequence[str]],
                    passages_per_question: Sequence[Sequence[str]],
                    match_type: str = "string", workers: int = 0) -> List[List[bool]]:
    """Hit lists: ``result[q][r]`` is whether passage r retrieved for question q has an answer.

    ``workers > 1`` spreads the questions over a process pool (forkserver where available:
    forking a process that holds torch threads or a process group can deadlock).
    """
    if match_type not in MATCH_TYPES:
        raise ValueError(f"--faiss-match {match_type!r}: expected one of {', '.join(MATCH_TYPES)}")
    if len(answers_per_question) != len(passages_per_question):
        raise ValueError(f"match_questions: {len(answers_per_question)} answer lists but "
                         f"{len(passages_per_question)} passage lists")
    jobs = [(list(a), list(p), match_type)
            for a, p in zip(answers_per_question, passages_per_question)]
    if match_type == "regex":
        # Fail here, once, naming the bad answer, rather than inside a worker.
        for answers, _, _ in jobs:
            for answer in answers:
                _compile_answer_regex(normalize(answer))
    if workers is None or int(workers) <= 1 or len(jobs) < 2:
        return [_match_one(job) for job in jobs]
    methods = multiprocessing.get_all_start_methods()
    ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
    workers = min(int(workers), len(jobs))
    chunksize = max(1, len(jobs) // (4 * workers))
    with ctx.Pool(workers) as pool:
        return pool.map(_match_one, jobs, chunksize=chunksize)
