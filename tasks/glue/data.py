"""Reading GLUE TSV files (MNLI, QQP) and turning sentence pairs into BERT samples.

Files are validated row by row; a bad row names the file and its line. Samples are
``[CLS] a [SEP] b [SEP]`` with token types 0 then 1, truncated longest-first to fit.
"""
import csv
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional

import numpy as np

from tasks.zeroshot_gpt.datasets import TaskDataError

MNLI_LABELS = {"contradiction": 0, "entailment": 1, "neutral": 2}
QQP_LABELS = {"0": 0, "1": 1}
NUM_CLASSES = {"MNLI": 3, "QQP": 2}


@dataclass
class PairExample:
    uid: str
    text_a: str
    text_b: str
    label: int
    line: int


def _rows(path: str):
    """(line number, columns) per data row after the header; GLUE fields contain quotes, so no quoting."""
    try:
        with open(path, encoding="utf-8", newline="") as handle:
            reader = csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE)
            header = next(reader, None)
            if header is None:
                raise TaskDataError(f"{path}: the file is empty (a GLUE TSV starts with a header line)")
            yield 1, header
            for columns in reader:
                if columns and any(c.strip() for c in columns):
                    yield reader.line_num, columns
    except UnicodeDecodeError as error:
        raise TaskDataError(f"{path}: not UTF-8 text ({error.reason} at byte {error.start})") from None
    except OSError as error:
        raise TaskDataError(f"{path}: cannot read: {error.strerror}") from None


def read_mnli(path: str) -> List[PairExample]:
    """text_a = column 9, text_b = column 10, label = the last column. A 10-column header marks
    a test file (no labels): its rows are labelled "contradiction", as Megatron does."""
    rows = _rows(path)
    _, header = next(rows)
    is_test = len(header) == 10
    if len(header) < 10:
        raise TaskDataError(f"{path}:1: an MNLI header has at least 10 columns, found {len(header)}")
    examples = []
    for line, columns in rows:
        if len(columns) != len(header):
            raise TaskDataError(f"{path}:{line}: {len(columns)} columns, the header has {len(header)}")
        text_a, text_b = columns[8].strip(), columns[9].strip()
        if not text_a or not text_b:
            raise TaskDataError(f"{path}:{line}: empty sentence1 or sentence2")
        label_text = "contradiction" if is_test else columns[-1].strip()
        if label_text not in MNLI_LABELS:
            raise TaskDataError(f"{path}:{line}: unknown MNLI label {label_text!r} "
                                f"(expected one of {', '.join(MNLI_LABELS)})")
        examples.append(PairExample(columns[0].strip(), text_a, text_b, MNLI_LABELS[label_text], line))
    if not examples:
        raise TaskDataError(f"{path}: no examples after the header")
    return examples


def read_qqp(path: str) -> List[PairExample]:
    """Train/dev rows: id, qid1, qid2, question1, question2, is_duplicate; test rows: id, question1, question2."""
    rows = _rows(path)
    _, header = next(rows)
    if len(header) not in (3, 6):
        raise TaskDataError(f"{path}:1: a QQP header has 6 columns (3 for a test file), found {len(header)}")
    is_test = len(header) == 3
    examples = []
    for line, columns in rows:
        if len(columns) != len(header):
            raise TaskDataError(f"{path}:{line}: {len(columns)} columns, the header has {len(header)}")
        if is_test:
            uid, text_a, text_b, label_text = columns[0], columns[1], columns[2], "0"
        else:
            uid, text_a, text_b, label_text = columns[0], columns[3], columns[4], columns[5].strip()
        if not text_a.strip() or not text_b.strip():
            raise TaskDataError(f"{path}:{line}: empty question1 or question2")
        if label_text not in QQP_LABELS:
            raise TaskDataError(f"{path}:{line}: unknown QQP label {label_text!r} (expected 0 or 1)")
        examples.append(PairExample(uid.strip(), text_a.strip(), text_b.strip(), QQP_LABELS[label_text], line))
    if not examples:
        raise TaskDataError(f"{path}: no examples after the header")
    return examples


READERS: Dict[str, Callable[[str], List[PairExample]]] = {"MNLI": read_mnli, "QQP": read_qqp}


def truncate_pair(a: List[int], b: Optional[List[int]], max_tokens: int) -> None:
    """Drop tokens from the end of the longer side until both fit in ``max_tokens`` (in place)."""
    while len(a) + (len(b) if b else 0) > max_tokens:
        longer = a if not b or len(a) >= len(b) else b
        longer.pop()


def build_pair_sample(a: List[int], b: Optional[List[int]], max_seq_length: int, cls_id: int, sep_id: int,
                      pad_id: int) -> Dict[str, np.ndarray]:
    """``text`` [CLS] a [SEP] (b [SEP]), ``types`` 0 for a, 1 for b, ``padding_mask`` 1 on real tokens."""
    a, b = list(a), (list(b) if b is not None else None)
    specials = 3 if b is not None else 2
    if max_seq_length <= specials:
        raise ValueError(f"--seq-length {max_seq_length} leaves no room for text after {specials} special tokens")
    truncate_pair(a, b, max_seq_length - specials)
    ids = [cls_id] + a + [sep_id]
    types = [0] * len(ids)
    if b is not None:
        ids += b + [sep_id]
        types += [1] * (len(b) + 1)
    text = np.full(max_seq_length, pad_id, dtype=np.int64)
    text[:len(ids)] = ids
    token_types = np.zeros(max_seq_length, dtype=np.int64)
    token_types[:len(types)] = types
    padding_mask = np.zeros(max_seq_length, dtype=np.int64)
    padding_mask[:len(ids)] = 1
    return {"text": text, "types": token_types, "padding_mask": padding_mask}
