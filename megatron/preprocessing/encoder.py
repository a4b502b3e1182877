"""The per-worker half of ``tools/preprocess_data.py``: JSON lines in, token arrays out.

A worker receives a chunk of raw input lines, parses and checks them, splits each
document into sentences, tokenizes all sentences of the chunk in one batch, and returns
flat NumPy arrays per JSON key, ready to be appended to the output datasets. Returning a
few arrays per chunk (instead of Python lists per document) keeps the traffic between
processes small.
"""
import itertools
import json
from dataclasses import dataclass, field

import numpy as np


@dataclass
class EncodedKey:
    """The sequences of one JSON key for the documents of a chunk that were not empty."""

    tokens: np.ndarray  # every token of the chunk, back to back
    sequence_lengths: np.ndarray  # int32, one per sequence (sentence or document)
    document_lengths: np.ndarray  # int32, number of sequences of each kept document
    empty_documents: int = 0


@dataclass
class EncodedChunk:
    index: int
    keys: dict
    documents: int = 0
    sentences: int = 0
    tokens: int = 0
    bytes: int = 0
    bad_lines: list = field(default_factory=list)  # (path, line number, message)


def _type_name(value):
    return "null" if value is None else type(value).__name__


class Encoder:
    """Turns chunks of JSON lines into token arrays (one instance per worker process)."""

    def __init__(self, json_keys, tokenizer, splitter, append_eod, dtype, apply_ftfy=False):
        self.json_keys = list(json_keys)
        self.tokenizer = tokenizer
        self.splitter = splitter
        self.append_eod = append_eod
        self.eod = tokenizer.eod if append_eod else None
        self.dtype = np.dtype(dtype)
        self.apply_ftfy = apply_ftfy
        if apply_ftfy:
            import ftfy  # noqa: F401 (fail at start-up, in the main process, when it is missing)

    def _parse(self, path, lineno, line, bad_lines):
        try:
            doc = json.loads(line)
        except ValueError as e:
            bad_lines.append((path, lineno, f"not valid JSON ({e})"))
            return None
        if not isinstance(doc, dict):
            bad_lines.append((path, lineno, f"expected a JSON object, got {_type_name(doc)}"))
            return None
        texts = []
        for key in self.json_keys:
            if key not in doc:
                present = ", ".join(sorted(doc)[:8])
                bad_lines.append((path, lineno, f"missing key '{key}' (keys present: {present})"))
                return None
            value = doc[key]
            if not isinstance(value, str):
                bad_lines.append((path, lineno, f"key '{key}' holds a {_type_name(value)}, not a string"))
                return None
            texts.append(value)
        return texts

    def encode(self, chunk):
        """``chunk`` is ``(index, path, first_line_number, [raw lines])``."""
        index, path, first_lineno, lines = chunk
        result = EncodedChunk(index=index, keys={})
        documents = []  # per kept line: list of texts, one per key
        for offset, line in enumerate(lines):
            result.bytes += len(line)
            if not line.strip():
                continue  # blank lines are not documents
            texts = self._parse(path, first_lineno + offset, line, result.bad_lines)
            if texts is not None:
                documents.append(texts)
        result.documents = len(documents)
        for k, key in enumerate(self.json_keys):
            result.keys[key] = self._encode_key([texts[k] for texts in documents], result)
        return result

    def _encode_key(self, texts, result):
        if self.apply_ftfy:
            import ftfy

            texts = [ftfy.fix_text(text) for text in texts]
        sentences_per_doc = [self.splitter.split(text) for text in texts]
        flat = [s for sentences in sentences_per_doc for s in sentences]
        ids = self.tokenizer.tokenize_batch(flat) if flat else []
        sequence_lengths, document_lengths, pieces = [], [], []
        empty = 0
        position = 0
        for sentences in sentences_per_doc:
            kept = 0
            last = -1
            for ids_of_sentence in ids[position:position + len(sentences)]:
                if ids_of_sentence:
                    pieces.append(ids_of_sentence)
                    sequence_lengths.append(len(ids_of_sentence))
                    kept += 1
                    last = len(pieces) - 1
            position += len(sentences)
            if kept == 0:
                empty += 1
                continue
            if self.append_eod:
                # The end-of-document token goes on the document's last sentence.
                pieces[last] = list(pieces[last]) + [self.eod]
                sequence_lengths[-1] += 1
            document_lengths.append(kept)
        total = sum(sequence_lengths)
        tokens = np.fromiter(itertools.chain.from_iterable(pieces), dtype=np.int64, count=total)
        if total and (tokens.min() < np.iinfo(self.dtype).min or tokens.max() > np.iinfo(self.dtype).max):
            raise ValueError(f"token ids up to {tokens.max()} do not fit the output dtype {self.dtype}")
        result.sentences += len(sequence_lengths)
        result.tokens += total
        return EncodedKey(
            tokens=tokens.astype(self.dtype, copy=False),
            sequence_lengths=np.asarray(sequence_lengths, dtype=np.int32),
            document_lengths=np.asarray(document_lengths, dtype=np.int32),
            empty_documents=empty,
        )


_WORKER_ENCODER = None


def init_worker(encoder):
    """Pool initializer: keep one encoder per worker process."""
    global _WORKER_ENCODER
    _WORKER_ENCODER = encoder


def encode_in_worker(chunk):
    return _WORKER_ENCODER.encode(chunk)
