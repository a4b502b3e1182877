"""Samples for zero-shot GPT evaluation, independent of torch.distributed.

Every sample is ``(tokens [seq_length + 1], loss_mask [seq_length])``: the model reads
``tokens[:-1]`` and is scored on ``tokens[1:]`` where the mask is 1.
"""
import json
from dataclasses import dataclass
from typing import Callable, List, Sequence, Tuple

import numpy as np

from tasks.zeroshot_gpt.detokenizer import wikitext_detokenize


class TaskDataError(ValueError):
    """An input file the task cannot use; the message names the file (and line)."""


Sample = Tuple[np.ndarray, np.ndarray]


def _pad(tokens: Sequence[int], mask: Sequence[int], seq_length: int, pad_id: int) -> Sample:
    padded = np.full(seq_length + 1, pad_id, dtype=np.int64)
    padded[:len(tokens)] = tokens
    loss_mask = np.zeros(seq_length, dtype=np.float32)
    loss_mask[:len(mask)] = mask
    return padded, loss_mask


# ----------------------------------------------------------------------------- WikiText-103

@dataclass
class WikitextData:
    tokens: List[int]
    num_original_tokens: int

    @property
    def num_tokenized_tokens(self) -> int:
        return len(self.tokens)


def read_wikitext(path: str, tokenize: Callable[[str], List[int]]) -> WikitextData:
    """The whole file as one token stream; the word count is of the raw (stripped) text, split on spaces."""
    try:
        with open(path, encoding="utf-8") as handle:
            raw = handle.read()
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise TaskDataError(f"{path}: cannot read: {error.strerror}") from None
    stripped = raw.strip()
    num_original_tokens = len(stripped.split(" ")) if stripped else 0
    if num_original_tokens < 2:
        raise TaskDataError(f"{path}:1: needs at least two words of text, found {num_original_tokens}")
    tokens = tokenize(wikitext_detokenize(stripped))
    if len(tokens) < 2:
        raise TaskDataError(f"{path}:1: tokenizes to {len(tokens)} token(s); at least 2 are needed")
    return WikitextData(list(tokens), num_original_tokens)


def sliding_windows(num_tokens: int, seq_length: int, stride: int) -> List[Tuple[int, int, int]]:
    """``(start, first_counted, end)`` per window over targets 1..num_tokens-1.

    A window reads tokens ``[start, start + seq_length)`` and predicts targets ``start+1 ..
    end``; the first window counts all of them, each later one (advanced by ``stride``) only
    the targets no earlier window counted, i.e. its last ``stride`` ones. Every target is
    counted exactly once and (after the first window) with at least ``seq_length - stride``
    tokens of context.
    """
    if not 0 < stride <= seq_length:
        raise ValueError(f"--overlapping-eval {stride} must be in 1..--seq-length {seq_length}")
    last_target = num_tokens - 1
    windows = []
    counted_up_to, start = 0, 0
    while counted_up_to < last_target:
        end = min(start + seq_length, last_target)
        windows.append((start, counted_up_to + 1, end))
        counted_up_to = end
        start += stride
    return windows


def wikitext_samples(data: WikitextData, seq_length: int, stride: int, pad_id: int) -> List[Sample]:
    samples = []
    for start, first_counted, end in sliding_windows(len(data.tokens), seq_length, stride):
        window = data.tokens[start:end + 1]
        # Label i of the window is target start + 1 + i.
        mask = [1 if start + 1 + i >= first_counted else 0 for i in range(end - start)]
        samples.append(_pad(window, mask, seq_length, pad_id))
    return samples


# ----------------------------------------------------------------------------- LAMBADA

def read_lambada(path: str) -> List[Tuple[int, str]]:
    """``(line number, text)`` per non-blank line of a JSON-lines file of ``{"text": ...}``."""
    texts = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, line in enumerate(handle, 1):
                if not line.strip():
                    continue
                try:
                    record = json.loads(line)
                except json.JSONDecodeError as error:
                    raise TaskDataError(f"{path}:{number}: not JSON: {error.msg}") from None
                if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                    raise TaskDataError(f"{path}:{number}: expected an object with a string \"text\"")
                if len(record["text"].split()) < 2:
                    raise TaskDataError(f"{path}:{number}: \"text\" needs a context and a last word")
                texts.append((number, record["text"]))
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise TaskDataError(f"{path}: cannot read: {error.strerror}") from None
    if not texts:
        raise TaskDataError(f"{path}: no examples (the file is empty)")
    return texts


def lambada_tokens(text: str, tokenize: Callable[[str], List[int]], strict: bool) -> Tuple[List[int], List[int]]:
    """(context, target) token ids. Non-strict: the target is the text's last BPE token.
    Strict: the target is every token of the last whitespace-separated word (with its leading space)."""
    if not strict:
        tokens = tokenize(text)
        return tokens[:-1], tokens[-1:]
    last_word = text.split()[-1]
    start = text.rfind(last_word)
    return tokenize(text[:start].strip()), tokenize(" " + last_word)


def lambada_samples(texts: List[Tuple[int, str]], tokenize: Callable[[str], List[int]], seq_length: int,
                    pad_id: int, strict: bool, path: str = "<lambada>") -> List[Sample]:
    samples = []
    for number, text in texts:
        context, target = lambada_tokens(text, tokenize, strict)
        if not context or not target:
            raise TaskDataError(f"{path}:{number}: the text tokenizes to no context or no target")
        if len(target) > seq_length:
            raise TaskDataError(f"{path}:{number}: the last word is {len(target)} tokens, longer than "
                                f"--seq-length {seq_length}")
        # Keep the end: the context nearest the target matters, and the target must fit.
        tokens = (context + target)[-(seq_length + 1):]
        mask = [0] * (len(tokens) - 1 - len(target)) + [1] * len(target)
        samples.append(_pad(tokens, mask, seq_length, pad_id))
    return samples
