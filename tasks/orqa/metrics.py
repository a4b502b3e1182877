"""Exact match with SQuAD's answer normalisation (the metric of ORQA and REALM open-domain QA):
lower case, punctuation removed, the articles a/an/the removed, whitespace collapsed."""
import re
import string
import unicodedata
from typing import Sequence

_ARTICLES = re.compile(r"\b(a|an|the)\b", re.UNICODE)
_PUNCTUATION = set(string.punctuation)


def squad_normalize(text: str) -> str:
    """SQuAD v1.1's ``normalize_answer``: lower, drop punctuation, drop articles, single spaces.
    Text is first NFD-normalised so that composed and decomposed accents compare equal."""
    text = unicodedata.normalize("NFD", text).lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def exact_match(prediction: str, answers: Sequence[str]) -> bool:
    """Whether the normalised prediction equals one of the normalised gold answers."""
    predicted = squad_normalize(prediction)
    return any(predicted == squad_normalize(answer) for answer in answers)
