"""Benchmark decontamination: find evaluation-set n-grams in training documents and cut them out.

Words are maximal runs of letters and digits, lower-cased, so punctuation, case and spacing
do not hide a copy. Every ``max_ngram``-word window of each task example goes into the index;
an example shorter than that goes in whole when it has at least ``min_ngram`` words (as in
Megatron-LM's tool). A document containing any indexed n-gram is either dropped
(``mode="remove"``) or split (``mode="split"``): each match is cut out together with
``remove_char_each_side`` characters on either side (widened to whole words, so no piece
begins or ends inside a word), the pieces shorter than ``filter_text_char_len`` characters are
dropped, and a document with more than ``splits_count`` matched regions (overlapping n-grams of one
copied passage are one region) is dropped whole.

Task files are read with the readers ``tasks/main.py`` uses (LAMBADA JSON lines, WikiText
text, RACE directories, GLUE TSV), so whatever evaluates a model is exactly what is removed.
"""
import collections
import json
import re
from dataclasses import dataclass
from typing import Dict, Iterable, List, Optional, Sequence, Tuple

from .jsonl import Batch, WebtextError, dumps, parse_line

_WORD = re.compile(r"[^\W_]+")
TASKS = ("lambada", "wikitext103", "race", "mnli", "qqp")


def words(text: str) -> List[str]:
    return _WORD.findall(text.lower())


# ----------------------------------------------------------------------------- task texts

def task_texts(task: str, paths: Sequence[str]) -> List[str]:
    """The evaluation text of ``task`` from files in the layout tasks/main.py reads."""
    from tasks.zeroshot_gpt.datasets import TaskDataError

    try:
        return _task_texts(task, paths)
    except TaskDataError as error:
        raise WebtextError(str(error)) from None


def _task_texts(task: str, paths: Sequence[str]) -> List[str]:
    texts: List[str] = []
    for path in paths:
        if task == "lambada":
            from tasks.zeroshot_gpt.datasets import read_lambada
            texts.extend(text for _, text in read_lambada(path))
        elif task == "wikitext103":
            from tasks.zeroshot_gpt.detokenizer import wikitext_detokenize
            try:
                with open(path, encoding="utf-8") as handle:
                    texts.append(wikitext_detokenize(handle.read()))
            except (OSError, UnicodeDecodeError) as error:
                raise WebtextError(f"{path}: cannot read: {error}") from None
        elif task == "race":
            texts.extend(_race_texts(path))
        elif task in ("mnli", "qqp"):
            from tasks.glue.data import read_mnli, read_qqp
            for example in (read_mnli if task == "mnli" else read_qqp)(path):
                texts.extend((example.text_a, example.text_b))
        else:
            raise WebtextError(f"--tasks {task}: unknown task (choose from {', '.join(TASKS)})")
    return texts


def _race_texts(path: str) -> Iterable[str]:
    from tasks.race.data import _question_with_option, race_files
    for file in race_files(path):
        try:
            with open(file, encoding="utf-8") as handle:
                lines = list(enumerate(handle, 1))
        except (OSError, UnicodeDecodeError) as error:
            raise WebtextError(f"{file}: cannot read: {error}") from None
        for number, line in lines:
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise WebtextError(f"{file}:{number}: not JSON: {error.msg}") from None
            if not isinstance(record, dict) or not isinstance(record.get("article"), str):
                raise WebtextError(f"{file}:{number}: expected an object with a string 'article'")
            yield record["article"]
            for question, options in zip(record.get("questions", []), record.get("options", [])):
                for option in options if isinstance(options, list) else []:
                    yield _question_with_option(str(question), str(option))


# ----------------------------------------------------------------------------- index

@dataclass
class NgramIndex:
    task_names: List[str]
    ngrams: Dict[str, int]  # ngram (words joined by one space) -> bit mask of tasks
    prefixes: set  # the first min_ngram words of every ngram
    lengths: List[int]  # n-gram lengths present, longest first
    min_ngram: int
    max_ngram: int

    def __len__(self):
        return len(self.ngrams)


def build_index(tasks: Dict[str, List[str]], max_ngram: int = 13, min_ngram: int = 8) -> NgramIndex:
    if not 1 <= min_ngram <= max_ngram:
        raise WebtextError(f"--min-ngram-size {min_ngram} must be in 1..--max-ngram-size {max_ngram}")
    names = list(tasks)
    ngrams: Dict[str, int] = {}
    for bit, name in enumerate(names):
        for text in tasks[name]:
            w = words(text)
            if len(w) >= max_ngram:
                grams = (" ".join(w[i:i + max_ngram]) for i in range(len(w) - max_ngram + 1))
            elif len(w) >= min_ngram:
                grams = (" ".join(w),)
            else:
                continue
            for gram in grams:
                ngrams[gram] = ngrams.get(gram, 0) | (1 << bit)
    prefixes = {" ".join(g.split(" ", min_ngram)[:min_ngram]) for g in ngrams}
    lengths = sorted({g.count(" ") + 1 for g in ngrams}, reverse=True)
    return NgramIndex(names, ngrams, prefixes, lengths, min_ngram, max_ngram)


def find_matches(text: str, index: NgramIndex) -> List[Tuple[int, int, int]]:
    """(start char, end char, task mask) of each indexed n-gram occurrence (the longest at each word)."""
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text.lower())]
    tokens = [s[2] for s in spans]
    matches = []
    k = index.min_ngram
    for i in range(len(tokens) - k + 1):
        if " ".join(tokens[i:i + k]) not in index.prefixes:
            continue
        for length in index.lengths:
            if i + length <= len(tokens):
                mask = index.ngrams.get(" ".join(tokens[i:i + length]))
                if mask:
                    matches.append((spans[i][0], spans[i + length - 1][1], mask))
                    break
    return matches


@dataclass
class FilterConfig:
    text_key: str = "text"
    mode: str = "split"
    remove_char_each_side: int = 200
    filter_text_char_len: int = 200
    splits_count: int = 10


def count_regions(matches: Sequence[Tuple[int, int, int]]) -> int:
    regions, end = 0, -1
    for start, stop, _ in matches:  # in text order
        if start > end:
            regions += 1
        end = max(end, stop)
    return regions


def split_text(text: str, matches: Sequence[Tuple[int, int, int]], config: FilterConfig) -> List[str]:
    """The pieces of ``text`` left after cutting out every match and its surroundings."""
    cuts = []
    for start, end, _ in matches:
        start = max(0, start - config.remove_char_each_side)
        end = min(len(text), end + config.remove_char_each_side)
        while start > 0 and not text[start - 1].isspace():  # widen to whole words
            start -= 1
        while end < len(text) and not text[end].isspace():
            end += 1
        if cuts and start <= cuts[-1][1]:
            cuts[-1][1] = max(cuts[-1][1], end)
        else:
            cuts.append([start, end])
    pieces, position = [], 0
    for start, end in cuts + [[len(text), len(text)]]:
        piece = text[position:start].strip()
        if len(piece) >= config.filter_text_char_len:
            pieces.append(piece)
        position = end
    return pieces


_state: Optional[Tuple[NgramIndex, FilterConfig]] = None


def init_worker(index: NgramIndex, config: FilterConfig) -> None:
    global _state
    _state = (index, config)


def filter_batch(batch: Batch) -> Tuple[List[str], collections.Counter]:
    """(output lines, counts) for one batch; counts keys: documents, clean, split, removed,
    pieces (written), and per task ``<task>:matches`` / ``<task>:documents``."""
    path, lines = batch
    index, config = _state
    out, counts = [], collections.Counter()
    for number, _, raw in lines:
        record = parse_line(path, number, raw, (config.text_key,))
        text = record[config.text_key]
        counts["documents"] += 1
        matches = find_matches(text, index)
        if not matches:
            counts["clean"] += 1
            out.append(raw.decode("utf-8").rstrip("\r\n") + "\n")
            continue
        hit_tasks = 0
        for _, _, mask in matches:
            hit_tasks |= mask
            for bit, name in enumerate(index.task_names):
                if mask >> bit & 1:
                    counts[f"{name}:matches"] += 1
        for bit, name in enumerate(index.task_names):
            if hit_tasks >> bit & 1:
                counts[f"{name}:documents"] += 1
        # Overlapping n-grams of one copied passage are one region, one split.
        if config.mode == "remove" or count_regions(matches) > config.splits_count:
            counts["removed"] += 1
            continue
        pieces = split_text(text, matches, config)
        counts["split"] += 1
        counts["pieces"] += len(pieces)
        for piece in pieces:
            out.append(dumps({**record, config.text_key: piece}))
    return out, counts
