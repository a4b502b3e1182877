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

Common text is not contamination (Megatron-LM's ``--key-threshold``): a counting pass over the
corpus finds, for each task n-gram, how many documents contain it, and n-grams found in at least
``key_threshold`` documents (licence lines, boilerplate quoted everywhere) are left out of the
filtering pass (``drop_common``). The n-grams that remain are the dictionary: it can be saved as a
JSON object and loaded again instead of reading the tasks and counting (``save_dictionary``,
``load_dictionary``, which also reads the pickled dict Megatron-LM's tool saves).

Task files are read with the readers ``tasks/main.py`` uses (LAMBADA JSON lines, WikiText
text, RACE directories, GLUE TSV), so whatever evaluates a model is exactly what is removed.
"""
import collections
import io
import json
import pickle
import re
from dataclasses import dataclass
from typing import Dict, Iterable, Iterator, List, Optional, Sequence, Tuple

from megatron.core.fileio import atomic_open

from .jsonl import Batch, WebtextError, dumps, parse_line

_WORD = re.compile(r"[^\W_]+")
# Task -> the flag naming its local files.
TASK_FLAGS = {"lambada": "--lambada-path", "wikitext103": "--wikitext-path", "race": "--race-path",
              "mnli": "--mnli-path", "qqp": "--qqp-path"}
TASKS = tuple(TASK_FLAGS)
# Tasks Megatron-LM's tool downloads from the Hugging Face hub (besides race, which is read here
# from local RACE files); this tool runs offline.
HUB_TASKS = ("squad", "natural_questions", "triviaqa", "webqa", "drop", "coqa", "piqa")


def words(text: str) -> List[str]:
    return _WORD.findall(text.lower())


# ----------------------------------------------------------------------------- task texts

def check_task(task: str) -> None:
    """A one-line error for a task name this tool cannot read."""
    if task in TASK_FLAGS:
        return
    local = ", ".join(f"{name} ({flag})" for name, flag in TASK_FLAGS.items())
    if task in HUB_TASKS:
        raise WebtextError(f"--tasks {task}: not available offline (Megatron-LM downloads it from the Hugging Face "
                           f"hub); supported tasks, read from local files: {local}")
    raise WebtextError(f"--tasks {task}: unknown task; supported tasks, read from local files: {local}")


def task_texts(task: str, paths: Sequence[str]) -> List[str]:
    """The evaluation text of ``task`` from files in the layout tasks/main.py reads."""
    from tasks.zeroshot_gpt.datasets import TaskDataError

    try:
        return _task_texts(task, paths)
    except TaskDataError as error:
        raise WebtextError(str(error)) from None


def _task_texts(task: str, paths: Sequence[str]) -> List[str]:
    check_task(task)
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
    prefixes: set  # the first prefix_len words of every ngram
    lengths: List[int]  # n-gram lengths present, longest first
    prefix_len: int  # the shortest length present: a window of it starts every match

    def __len__(self):
        return len(self.ngrams)


def make_index(grams: Dict[str, int], task_names: Sequence[str]) -> NgramIndex:
    """The index over ``grams`` (n-gram -> task bit mask), however they were made."""
    lengths = sorted({g.count(" ") + 1 for g in grams}, reverse=True)
    k = lengths[-1] if lengths else 1
    prefixes = {" ".join(g.split(" ", k)[:k]) for g in grams}
    return NgramIndex(list(task_names), grams, prefixes, lengths, k)


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
    return make_index(ngrams, names)


def _indexed_ngrams(text: str, index: NgramIndex) -> Iterator[Tuple[int, int, str, int]]:
    """(start char, end char, n-gram, task mask) of every indexed n-gram in ``text``, in text
    order and, at each word, longest first. The one matcher: filtering and counting both use it."""
    spans = [(m.start(), m.end(), m.group()) for m in _WORD.finditer(text.lower())]
    tokens = [s[2] for s in spans]
    k = index.prefix_len
    for i in range(len(tokens) - k + 1):
        if " ".join(tokens[i:i + k]) not in index.prefixes:  # cheap test before each length
            continue
        for length in index.lengths:
            if i + length <= len(tokens):
                gram = " ".join(tokens[i:i + length])
                mask = index.ngrams.get(gram)
                if mask:
                    yield spans[i][0], spans[i + length - 1][1], gram, mask


def find_matches(text: str, index: NgramIndex) -> List[Tuple[int, int, int]]:
    """(start char, end char, task mask) of each indexed n-gram occurrence (the longest at each word)."""
    matches: List[Tuple[int, int, int]] = []
    for start, end, _, mask in _indexed_ngrams(text, index):
        if not matches or matches[-1][0] != start:
            matches.append((start, end, mask))
    return matches


# ----------------------------------------------------------------------------- common n-grams

def drop_common(index: NgramIndex, documents: Dict[str, int], key_threshold: int
                ) -> Tuple[NgramIndex, collections.Counter]:
    """The index without the n-grams found in at least ``key_threshold`` documents (``documents``:
    n-gram -> documents containing it, from ``count_batch``), and per task how many were left out.
    Common text such as a licence line is not a copied evaluation example; cutting it out would
    only shred many training documents."""
    kept: Dict[str, int] = {}
    common: collections.Counter = collections.Counter()
    for gram, mask in index.ngrams.items():
        if documents.get(gram, 0) < key_threshold:
            kept[gram] = mask
            continue
        for bit, name in enumerate(index.task_names):
            if mask >> bit & 1:
                common[name] += 1
    return make_index(kept, index.task_names), common


# ----------------------------------------------------------------------------- dictionary files

# The task a dictionary entry is counted under when the file does not name its tasks (Megatron-LM's pickles).
DICTIONARY_TASK = "dictionary"
# A pickle starts with PROTO (protocol 2 and later), MARK or EMPTY_DICT (protocols 0 and 1); JSON never does.
_PICKLE_STARTS = (b"\x80", b"(", b"}")


def save_dictionary(path: str, index: NgramIndex) -> None:
    """Write the index's n-grams atomically as one JSON object, one n-gram a line, sorted:
    ``{"<words joined by one space>": ["<task>", ...], ...}``."""
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        handle.write("{")
        for n, (gram, mask) in enumerate(sorted(index.ngrams.items())):
            names = [name for bit, name in enumerate(index.task_names) if mask >> bit & 1]
            handle.write(("\n" if n == 0 else ",\n") + json.dumps(gram, ensure_ascii=False) + ": " + json.dumps(names))
        handle.write("\n}\n")


class _NoGlobalsUnpickler(pickle.Unpickler):
    """Unpickling may call anything a pickle names; a dict of strings and ints names nothing (its
    opcodes build it), so every global is refused and no code from the file can run."""

    def find_class(self, module, name):
        raise pickle.UnpicklingError(f"it names {module}.{name}; only a dict of n-gram strings is accepted")


def load_dictionary(path: str) -> NgramIndex:
    """The index saved by ``save_dictionary``, or by Megatron-LM's ``--save-dictionary`` (a pickled
    dict whose keys are n-grams; its values are ignored). Keys are re-split into words the way
    this tool splits text, so every entry can match."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(1)
            handle.seek(0)
            if head in _PICKLE_STARTS:
                kind = "pickle"
                try:
                    table = _NoGlobalsUnpickler(handle).load()
                # Nothing from the file can run, so whatever a malformed pickle raises is bad input.
                except Exception as error:  # noqa: BLE001
                    raise WebtextError(f"{path}: not a pickled n-gram dictionary: {error}") from None
            else:
                kind = "JSON"
                try:
                    table = json.load(io.TextIOWrapper(handle, encoding="utf-8"))
                except UnicodeDecodeError as error:
                    raise WebtextError(f"{path}: not UTF-8 ({error.reason} at byte {error.start})") from None
                except json.JSONDecodeError as error:
                    raise WebtextError(f"{path}: not a JSON n-gram dictionary: {error.msg} "
                                       f"(line {error.lineno}, column {error.colno})") from None
    except OSError as error:
        raise WebtextError(f"{path}: cannot read: {error.strerror or error}") from None
    if not isinstance(table, dict):
        raise WebtextError(f"{path}: expected a dict of n-gram strings ({kind}), found {type(table).__name__}")
    names: List[str] = []
    bits: Dict[str, int] = {}
    grams: Dict[str, int] = {}
    for key, value in table.items():
        if not isinstance(key, str):
            raise WebtextError(f"{path}: n-gram keys must be strings, found {type(key).__name__} {key!r:.60}")
        gram = " ".join(words(key))
        if not gram:
            raise WebtextError(f"{path}: n-gram {key!r:.60} has no words")
        tasks = value if isinstance(value, list) and value and all(isinstance(v, str) for v in value) \
            else [DICTIONARY_TASK]
        for name in tasks:
            if name not in bits:
                bits[name] = len(names)
                names.append(name)
            grams[gram] = grams.get(gram, 0) | (1 << bits[name])
    return make_index(grams, names)


# ----------------------------------------------------------------------------- filtering

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


def count_batch(batch: Batch) -> collections.Counter:
    """n-gram -> how many documents of the batch contain it (several copies in one document count
    once, as in Megatron-LM's counting pass): the counts ``drop_common`` compares with the threshold."""
    path, lines = batch
    index, config = _state
    documents = collections.Counter()
    for number, _, raw in lines:
        record = parse_line(path, number, raw, (config.text_key,))
        documents.update({gram for _, _, gram, _ in _indexed_ngrams(record[config.text_key], index)})
    return documents
