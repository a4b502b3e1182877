"""Inputs of retrieval: question files, evidence passages and the ICT block corpus.

- Questions: the Natural Questions open format, one ``question<TAB>answers`` (or comma-separated
  CSV) row per line, ``answers`` a Python or JSON list literal such as ``['Paris', "the city"]``;
  JSON lines ``{"question": ..., "answer": [...]}`` are accepted too.
- Evidence: the DPR Wikipedia TSV, a header ``id<TAB>text<TAB>title`` then one passage per line.
- Blocks: every block of this project's body + titles datasets (ICT blocks), once.

Every item a corpus yields is a dict with ``row_id`` (the id the embedding store keys on),
``tokens`` and ``pad_mask`` (``[seq_length]``, 1 = real token); blocks add ``meta`` (start
sentence, end sentence, document). Bad input lines are reported as ``path:line: reason``.
"""
from __future__ import annotations

import ast
import csv
import io
import json
import os
from typing import List, Optional, Sequence, Tuple

import numpy as np
import torch

# Passages of DPR's Wikipedia split are long quoted fields; the default csv limit (128 KiB) is
# too small for some real-world TSV dumps.
csv.field_size_limit(1 << 30)


def pad_tokens(token_ids: Sequence[int], seq_length: int, pad_id: int) -> Tuple[np.ndarray, np.ndarray]:
    """``(tokens, pad_mask)``, both int64 ``[seq_length]``."""
    if len(token_ids) > seq_length:
        raise ValueError(f"{len(token_ids)} tokens do not fit the sequence length {seq_length}")
    num_pad = seq_length - len(token_ids)
    tokens = np.array(list(token_ids) + [pad_id] * num_pad, dtype=np.int64)
    pad_mask = np.array([1] * len(token_ids) + [0] * num_pad, dtype=np.int64)
    return tokens, pad_mask


def question_tokens(tokenizer, question: str, seq_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """``[CLS] question [SEP]``, the question cut to ``seq_length - 2`` tokens, padded."""
    if seq_length < 3:
        raise ValueError(f"--retriever-seq-length {seq_length} leaves no room for [CLS] question [SEP]")
    ids = tokenizer.tokenize(question)[:seq_length - 2]
    return pad_tokens([tokenizer.cls, *ids, tokenizer.sep], seq_length, tokenizer.pad)


def passage_tokens(tokenizer, title: str, text: str, seq_length: int) -> Tuple[np.ndarray, np.ndarray]:
    """``[CLS] title [SEP] text [SEP]``: the title keeps at most ``seq_length - 4`` tokens (so at
    least one text token fits) and the text is cut to what remains; padded."""
    if seq_length < 4:
        raise ValueError(f"--retriever-seq-length {seq_length} leaves no room for [CLS] title [SEP] text [SEP]")
    title_ids = tokenizer.tokenize(title)[:seq_length - 4] if title else []
    text_ids = tokenizer.tokenize(text)[:seq_length - 3 - len(title_ids)]
    return pad_tokens([tokenizer.cls, *title_ids, tokenizer.sep, *text_ids, tokenizer.sep], seq_length,
                      tokenizer.pad)


# ---------------------------------------------------------------------------------------------
# Questions


def _parse_answers(field: str, where: str) -> List[str]:
    field = field.strip()
    answers = None
    try:
        answers = json.loads(field)
    except ValueError:
        try:
            # literal_eval reads Python literals only (never calls anything): DPR writes the
            # answers with Python's repr, single quotes included.
            answers = ast.literal_eval(field)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            raise ValueError(f"{where}: the answers field {field[:60]!r} is not a list literal "
                             "such as ['answer one', 'answer two']") from None
    if isinstance(answers, str):
        answers = [answers]
    if not isinstance(answers, (list, tuple)) or not all(isinstance(a, str) for a in answers):
        raise ValueError(f"{where}: the answers field must be a list of strings, got {field[:60]!r}")
    if not answers:
        raise ValueError(f"{where}: the question has no answers")
    return list(answers)


def _is_header(row: Sequence[str]) -> bool:
    return len(row) >= 2 and row[0].strip().lower() == "question" and row[1].strip().lower().startswith("answer")


def read_qa_file(path: str) -> Tuple[List[str], List[List[str]]]:
    """``(questions, answers per question)`` from an NQ-open CSV/TSV or JSON-lines file.

    The delimiter is a tab when the first line has one (DPR's ``nq-dev.csv`` is tab-separated
    despite its name), else a comma. An optional ``question, answers`` header is skipped.
    """
    if not os.path.isfile(path):
        raise ValueError(f"{path}: question file not found")
    questions: List[str] = []
    answers: List[List[str]] = []
    with open(path, encoding="utf-8", newline="") as handle:
        first = handle.readline()
        handle.seek(0)
        if path.endswith((".jsonl", ".json")) or first.lstrip().startswith("{"):
            for line_no, line in enumerate(handle, start=1):
                if not line.strip():
                    continue
                where = f"{path}:{line_no}"
                try:
                    record = json.loads(line)
                except ValueError as exc:
                    raise ValueError(f"{where}: not a JSON object ({exc.msg})") from None
                if not isinstance(record, dict) or "question" not in record:
                    raise ValueError(f"{where}: expected an object with 'question' and 'answer' (or 'answers')")
                raw = record.get("answer", record.get("answers"))
                if raw is None:
                    raise ValueError(f"{where}: the record has no 'answer' or 'answers' field")
                questions.append(str(record["question"]))
                answers.append(_parse_answers(json.dumps(raw), where))
        else:
            delimiter = "\t" if "\t" in first else ","
            reader = csv.reader(handle, delimiter=delimiter)
            for row in reader:
                where = f"{path}:{reader.line_num}"
                if not row or (len(row) == 1 and not row[0].strip()):
                    continue
                if not questions and _is_header(row):
                    continue
                if len(row) != 2:
                    raise ValueError(f"{where}: expected 2 fields (question, answers) separated by "
                                     f"{'a tab' if delimiter == chr(9) else 'a comma'}, got {len(row)}")
                if not row[0].strip():
                    raise ValueError(f"{where}: the question is empty")
                questions.append(row[0].strip())
                answers.append(_parse_answers(row[1], where))
    if not questions:
        raise ValueError(f"{path}: no questions")
    return questions, answers


class QuestionDataset(torch.utils.data.Dataset):
    """Tokenised questions (``row_id`` = position in the file)."""

    def __init__(self, path: str, tokenizer, seq_length: int):
        self.path = path
        self.questions, self.answers = read_qa_file(path)
        self.tokenizer = tokenizer
        self.seq_length = seq_length

    def __len__(self):
        return len(self.questions)

    def __getitem__(self, idx):
        tokens, pad_mask = question_tokens(self.tokenizer, self.questions[idx], self.seq_length)
        return {"row_id": np.int64(idx), "tokens": tokens, "pad_mask": pad_mask}


# ---------------------------------------------------------------------------------------------
# DPR evidence passages


def _split_tsv_line(raw: bytes, where: str) -> List[str]:
    try:
        line = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"{where}: not UTF-8 ({exc.reason} at byte {exc.start})") from None
    try:
        rows = list(csv.reader(io.StringIO(line), delimiter="\t", strict=True))
    except csv.Error as exc:
        raise ValueError(f"{where}: a passage must be one well-quoted line ({exc})") from None
    if len(rows) != 1:
        raise ValueError(f"{where}: a passage must be one well-quoted line")
    return rows[0]


class EvidenceDataset(torch.utils.data.Dataset):
    """DPR evidence TSV as a dataset of tokenised passages.

    One scan records each line's byte offset (passages are re-read on demand, so a 21M-passage
    file is not held in memory). Row ids: the ``id`` column when every id is an integer (DPR's
    ``psgs_w100.tsv``), else the passage's 0-based position, with ``source_id(row_id)`` giving
    the original string (``wiki:123``).
    """

    def __init__(self, path: str, tokenizer, seq_length: int):
        if not os.path.isfile(path):
            raise ValueError(f"--evidence-data-path {path}: file not found")
        self.path = path
        self.tokenizer = tokenizer
        self.seq_length = seq_length
        offsets, lines, source_ids = [], [], []
        with open(path, "rb") as handle:
            header = handle.readline()
            fields = [f.strip().lower() for f in _split_tsv_line(header, f"{path}:1")]
            if fields[:3] != ["id", "text", "title"]:
                raise ValueError(f"{path}:1: expected the header 'id<TAB>text<TAB>title', got {header[:80]!r}")
            offset, line_no = len(header), 1
            for raw in handle:
                line_no += 1
                if raw.strip():
                    row = _split_tsv_line(raw, f"{path}:{line_no}")
                    if len(row) != 3:
                        raise ValueError(f"{path}:{line_no}: expected 3 tab-separated fields (id, text, title), "
                                         f"got {len(row)}")
                    if not row[0].strip():
                        raise ValueError(f"{path}:{line_no}: the passage id is empty")
                    offsets.append(offset)
                    lines.append(line_no)
                    source_ids.append(row[0].strip())
                offset += len(raw)
        if not offsets:
            raise ValueError(f"{path}: no passages after the header")
        self._offsets = np.array(offsets, dtype=np.int64)
        self._lines = np.array(lines, dtype=np.int64)
        numeric = all(_is_int(s) for s in source_ids)
        if numeric:
            self.row_ids = np.array([int(s) for s in source_ids], dtype=np.int64)
            self._source_ids = None
        else:
            self.row_ids = np.arange(len(source_ids), dtype=np.int64)
            self._source_ids = source_ids
        self._order = np.argsort(self.row_ids, kind="stable")
        self._sorted_ids = self.row_ids[self._order]
        duplicate = np.nonzero(np.diff(self._sorted_ids) == 0)[0]
        if len(duplicate):
            second = self._order[duplicate[0] + 1]
            raise ValueError(f"{path}:{self._lines[second]}: duplicate passage id {self.row_ids[second]}")
        self._handle = None

    def __len__(self):
        return len(self._offsets)

    def __getstate__(self):
        # DataLoader workers pickle the dataset: each opens its own file handle.
        state = dict(self.__dict__)
        state["_handle"] = None
        return state

    def source_id(self, row_id: int) -> str:
        if self._source_ids is None:
            return str(int(row_id))
        return self._source_ids[int(row_id)]

    def all_row_ids(self) -> np.ndarray:
        return self.row_ids

    def _row(self, position: int) -> List[str]:
        if self._handle is None:
            self._handle = open(self.path, "rb")
        self._handle.seek(int(self._offsets[position]))
        return _split_tsv_line(self._handle.readline(), f"{self.path}:{self._lines[position]}")

    def passage(self, row_id: int) -> Tuple[str, str]:
        """``(text, title)`` of a passage by row id."""
        _, text, title = self._row(_position(self._sorted_ids, self._order, row_id, self.path))
        return text, title

    def __getitem__(self, idx):
        _, text, title = self._row(idx)
        tokens, pad_mask = passage_tokens(self.tokenizer, title, text, self.seq_length)
        return {"row_id": self.row_ids[idx], "tokens": tokens, "pad_mask": pad_mask}


def _position(sorted_ids: np.ndarray, order: np.ndarray, row_id: int, where: str) -> int:
    """Dataset position of ``row_id`` (a binary search: no per-id dict for 21M passages)."""
    at = int(np.searchsorted(sorted_ids, int(row_id)))
    if at >= len(sorted_ids) or sorted_ids[at] != int(row_id):
        raise KeyError(f"{where}: no passage with row id {row_id}")
    return int(order[at])


def _is_int(text: str) -> bool:
    try:
        int(text)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------------------------------
# ICT blocks of this project's indexed datasets


class BlockCorpus(torch.utils.data.Dataset):
    """Every block of a body + titles corpus exactly once: ``row_id`` = block id, ``meta`` =
    (start sentence, end sentence, document), tokens ``[CLS] title [SEP] block [SEP]``.

    The blocks are those ICT trains on (``build_blocks_mapping`` over one epoch, the query kept in
    its block), so a retriever is evaluated on the units it learned to retrieve.
    """

    def __init__(self, data_prefix: str, titles_prefix: str, seq_length: int, seed: int, tokenizer,
                 use_one_sent_docs: bool = False, cache_dir: Optional[str] = None, barrier_groups=None):
        from megatron.core.datasets.builders import open_indexed_dataset
        from megatron.core.datasets.ict_dataset import ICTDataset

        body = open_indexed_dataset(data_prefix)
        try:
            titles = open_indexed_dataset(titles_prefix)
        except FileNotFoundError:
            raise ValueError(f"--titles-data-path {titles_prefix}: no {titles_prefix}.bin / .idx found") from None
        self.tokenizer = tokenizer
        self.ict = ICTDataset("blocks", body, titles, data_prefix, 1, None, seq_length, 1.0, seed, tokenizer,
                              use_one_sent_docs=use_one_sent_docs, cache_dir=cache_dir,
                              barrier_groups=barrier_groups)
        self.mapping = self.ict.samples_mapping
        ids = np.asarray(self.mapping[:, 3], dtype=np.int64)
        self._order = np.argsort(ids, kind="stable")
        self._sorted_ids = ids[self._order]
        if np.any(np.diff(self._sorted_ids) == 0):
            raise ValueError(f"{data_prefix}: the one-epoch blocks mapping repeats block ids")
        self.data_prefix = data_prefix

    def __len__(self):
        return len(self.mapping)

    def all_row_ids(self) -> np.ndarray:
        return np.asarray(self.mapping[:, 3], dtype=np.int64)

    def __getitem__(self, idx):
        start, end, doc, block_id = (int(x) for x in self.mapping[idx])
        tokens, pad_mask = self.ict.get_block(start, end, doc)
        return {"row_id": np.int64(block_id), "tokens": tokens, "pad_mask": pad_mask,
                "meta": np.array([start, end, doc], dtype=np.int64)}

    def passage(self, row_id: int) -> Tuple[str, str]:
        """``(text, title)`` of a block, detokenised (for answer matching)."""
        position = _position(self._sorted_ids, self._order, row_id, self.data_prefix)
        start, end, doc, _ = (int(x) for x in self.mapping[position])
        body = [int(t) for sentence in self.ict.block_dataset[start:end] for t in sentence]
        return self.tokenizer.detokenize(body), self.tokenizer.detokenize(self.ict._title(doc))
