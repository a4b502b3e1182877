"""REALM pretraining queries: sentences of a sentence-split indexed dataset with one span masked.

**Span table.** REALM masks *salient spans* (entities, dates). The indexed dataset keeps token
ids only (lower-cased by the BERT tokenizer, so case is gone), so spans are found in the loose
JSON the dataset was made from (document ``j`` of the dataset is the ``j``-th non-blank line):
the document's ``salient_spans`` (character ``[start, end)`` offsets, as REALM's corpus carries
them) when present, else a ``SalientSpanTagger``. Each span's text is tokenized alone and looked
up, in order, in the document's sentences: a span is kept at the first match at or after the
previous span's match that starts a word and ends one (the next token is no ``##`` piece). Spans
that cross a sentence boundary or do not fall on word boundaries find no match and are skipped
(REALM also keeps only spans inside one sentence). The table ``[n, 3]`` (sentence, first token,
end token) is cached next to the data like the other index caches.

**Samples.** Sample ``i`` is a span of the split (spans of at most ``max_masks`` tokens in the
split's documents): epoch ``i // n`` of the ``n`` spans is one permutation seeded by the seed and
the epoch; its randomness comes from ``random.Random(seed + i)``, so a sample depends only on
(seed, i). The query is ``[CLS] sentence [SEP]`` (a window around the span when the sentence is
longer), padded to ``query_seq_length``. Masking styles, with the same number of masked tokens:

* ``salient``: the span's tokens;
* ``random-span``: a contiguous run of the span's length at a uniformly random place;
* ``random-token``: that many tokens at uniformly random places.

Masked tokens become ``[MASK]``; ``mask_positions``/``mask_labels``/``mask_valid`` are padded to
``max_masks``.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np
import torch

from megatron.core.datasets.utils import load_or_build_cache

MASKING_STYLES = ("salient", "random-span", "random-token")


class SalientSpanDataError(ValueError):
    """Loose JSON that cannot give spans for the dataset; the message names the file and line."""


def _json_documents(path: str, text_key: str):
    """(line number, text, spans or None) for every non-blank line of the loose JSON."""
    with open(path, encoding="utf-8") as handle:
        for lineno, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
            except ValueError as error:
                raise SalientSpanDataError(f"{path}:{lineno}: not valid JSON ({error})") from None
            if not isinstance(doc, dict) or not isinstance(doc.get(text_key), str):
                raise SalientSpanDataError(f"{path}:{lineno}: no string '{text_key}' key")
            text = doc[text_key]
            spans = doc.get("salient_spans")
            if spans is not None:
                spans = _checked_spans(spans, len(text), path, lineno)
            yield lineno, text, spans


def _checked_spans(spans, length: int, path: str, lineno: int) -> List[Tuple[int, int]]:
    checked = []
    if not isinstance(spans, list):
        raise SalientSpanDataError(f"{path}:{lineno}: 'salient_spans' must be a list of [start, end] offsets")
    for span in spans:
        if isinstance(span, dict):
            span = [span.get("start"), span.get("end") if "end" in span else span.get("limit")]
        if not (isinstance(span, (list, tuple)) and len(span) == 2 and all(isinstance(v, int) for v in span)
                and 0 <= span[0] < span[1] <= length):
            raise SalientSpanDataError(f"{path}:{lineno}: salient span {span!r} is not [start, end) character "
                                       f"offsets inside the {length}-character text")
        checked.append((span[0], span[1]))
    return sorted(checked)


def _find(tokens: Sequence[int], pattern: Sequence[int], start: int, is_continuation: Callable[[int], bool]) -> int:
    n = len(pattern)
    first = pattern[0]
    for at in range(start, len(tokens) - n + 1):
        if tokens[at] == first and list(tokens[at:at + n]) == list(pattern):
            if at + n < len(tokens) and is_continuation(int(tokens[at + n])):
                continue
            return at
    return -1


def build_span_table(json_path: str, text_key: str, body_dataset, tokenizer, tagger,
                     log: Callable[[str], None] = print) -> np.ndarray:
    """``[n, 3]`` int64 rows (sentence index, first token, end token) of the salient spans found."""
    doc_idx = np.asarray(body_dataset.doc_idx, dtype=np.int64)
    num_docs = len(doc_idx) - 1
    inv = tokenizer.inv_vocab

    def is_continuation(token_id: int) -> bool:
        return str(inv.get(token_id, "")).startswith("##")

    rows: List[Tuple[int, int, int]] = []
    given = tagged = unmatched = 0
    doc = -1
    for doc, (lineno, text, spans) in enumerate(_json_documents(json_path, text_key)):
        if doc >= num_docs:
            raise SalientSpanDataError(f"{json_path}:{lineno}: more documents than the {num_docs} of the dataset "
                                       f"(is this the loose JSON the --data-path was preprocessed from?)")
        if spans is None:
            spans = tagger.tag(text)
            tagged += len(spans)
        else:
            given += len(spans)
        sentences = [list(body_dataset[int(s)]) for s in range(doc_idx[doc], doc_idx[doc + 1])]
        cursor_sentence, cursor_token = 0, 0
        for start, end in spans:
            pattern = tokenizer.tokenize(text[start:end])
            if not pattern:
                unmatched += 1
                continue
            found = None
            for s in range(cursor_sentence, len(sentences)):
                at = _find(sentences[s], pattern, cursor_token if s == cursor_sentence else 0, is_continuation)
                if at >= 0:
                    found = (s, at)
                    break
            if found is None:
                unmatched += 1
                continue
            s, at = found
            rows.append((int(doc_idx[doc]) + s, at, at + len(pattern)))
            cursor_sentence, cursor_token = s, at + len(pattern)
    if doc + 1 != num_docs:
        raise SalientSpanDataError(f"{json_path}: {doc + 1} documents, but the dataset has {num_docs} (is this the "
                                   f"loose JSON the --data-path was preprocessed from, with no empty documents?)")
    log(f"> salient spans: {given} from the corpus's salient_spans, {tagged} tagged; {len(rows)} found in the "
        f"sentences, {unmatched} skipped (across sentences or not on word boundaries)")
    return np.asarray(rows, dtype=np.int64).reshape(-1, 3)


def span_table_path(data_prefix: str, json_path: str, text_key: str, tagger_method: str,
                    cache_dir: Optional[str] = None) -> str:
    stat = os.stat(json_path)
    key = json.dumps([os.path.abspath(json_path), stat.st_size, int(stat.st_mtime), text_key, tagger_method, 1])
    digest = hashlib.sha1(key.encode("utf-8")).hexdigest()[:12]
    base = os.path.join(cache_dir, os.path.basename(data_prefix)) if cache_dir else data_prefix
    return f"{base}_realm_spans_{digest}.npy"


def load_or_build_span_table(data_prefix: str, json_path: str, text_key: str, body_dataset, tokenizer, tagger,
                             cache_dir: Optional[str] = None, barrier_groups=None) -> np.ndarray:
    """The cached span table (built by rank 0, memory-mapped by every rank)."""
    if not os.path.isfile(json_path):
        raise SalientSpanDataError(f"--salient-span-json {json_path}: no such file")
    path = span_table_path(data_prefix, json_path, text_key, tagger.method, cache_dir)
    num_sentences = len(body_dataset.sizes)

    def build():
        return {"spans": build_span_table(json_path, text_key, body_dataset, tokenizer, tagger)}

    def in_bounds(arrays):
        spans = arrays["spans"]
        return len(spans) == 0 or (int(spans[:, 0].max()) < num_sentences and int(spans[:, 0].min()) >= 0)

    arrays = load_or_build_cache({"spans": path}, {"spans": ((None, 3), np.int64)}, build, validate=in_bounds,
                                 barrier_groups=barrier_groups, description=f"salient spans of {data_prefix}")
    return np.asarray(arrays["spans"])


class REALMDataset(torch.utils.data.Dataset):
    """Masked queries for REALM (module docstring)."""

    def __init__(self, name: str, body_dataset, span_table: np.ndarray, document_range: Tuple[int, int],
                 num_samples: int, query_seq_length: int, masking_style: str, max_masks: int, seed: int, tokenizer):
        if masking_style not in MASKING_STYLES:
            raise ValueError(f"--masking-style {masking_style}: expected one of {', '.join(MASKING_STYLES)}")
        if query_seq_length < 3:
            raise ValueError(f"--query-seq-length {query_seq_length}: needs room for [CLS], a token and [SEP]")
        self.name = name
        self.body = body_dataset
        self.doc_idx = np.asarray(body_dataset.doc_idx, dtype=np.int64)
        self.query_seq_length = query_seq_length
        self.masking_style = masking_style
        self.max_masks = max_masks
        self.seed = seed
        self.cls_id, self.sep_id = tokenizer.cls, tokenizer.sep
        self.mask_id, self.pad_id = tokenizer.mask, tokenizer.pad
        first_sentence = self.doc_idx[document_range[0]]
        last_sentence = self.doc_idx[document_range[1]]
        spans = np.asarray(span_table, dtype=np.int64).reshape(-1, 3)
        lengths = spans[:, 2] - spans[:, 1]
        keep = (spans[:, 0] >= first_sentence) & (spans[:, 0] < last_sentence) & (lengths >= 1) \
            & (lengths <= min(max_masks, query_seq_length - 2))
        self.spans = spans[keep]
        if len(self.spans) == 0 and num_samples > 0:
            raise ValueError(f"the {name} split has no salient span of 1 to {min(max_masks, query_seq_length - 2)} "
                             f"tokens (--realm-max-masks, --query-seq-length) to build queries from")
        self.num_samples = max(0, num_samples)
        self._permutations = {}

    def _span_index(self, idx: int) -> int:
        """Span of sample ``idx``: epoch ``idx // n`` is a permutation of the n spans seeded by (seed, epoch),
        made when first needed (a long run's whole order would not fit in memory)."""
        epoch, offset = divmod(idx, len(self.spans))
        permutation = self._permutations.get(epoch)
        if permutation is None:
            if len(self._permutations) >= 2:
                self._permutations.pop(min(self._permutations))
            permutation = np.random.RandomState((self.seed + 7919 * epoch) % (2 ** 32)).permutation(len(self.spans))
            self._permutations[epoch] = permutation
        return int(permutation[offset])

    def __len__(self):
        return self.num_samples

    def document_of(self, sentence: int) -> int:
        return int(np.searchsorted(self.doc_idx, sentence, side="right") - 1)

    def __getitem__(self, idx):
        if not 0 <= idx < self.num_samples:
            raise IndexError(f"sample {idx} of {self.num_samples}")
        sentence, span_start, span_end = (int(v) for v in self.spans[self._span_index(idx)])
        tokens = [int(t) for t in self.body[sentence]]
        room = self.query_seq_length - 2
        span_len = span_end - span_start
        # A window of the sentence around the span when the sentence is too long.
        window_start = 0
        if len(tokens) > room:
            window_start = max(0, min(span_start - (room - span_len) // 2, len(tokens) - room))
        window = tokens[window_start:window_start + room]
        span_start -= window_start
        rng = random.Random(self.seed + idx)
        if self.masking_style == "salient":
            masked = list(range(span_start, span_start + span_len))
        elif self.masking_style == "random-span":
            start = rng.randint(0, len(window) - span_len)
            masked = list(range(start, start + span_len))
        else:
            masked = sorted(rng.sample(range(len(window)), span_len))
        labels = [window[p] for p in masked]
        for p in masked:
            window[p] = self.mask_id
        query = [self.cls_id] + window + [self.sep_id]
        pad = self.query_seq_length - len(query)
        positions = np.zeros(self.max_masks, np.int64)
        mask_labels = np.zeros(self.max_masks, np.int64)
        valid = np.zeros(self.max_masks, np.int64)
        positions[:len(masked)] = [p + 1 for p in masked]  # after [CLS]
        mask_labels[:len(masked)] = labels
        valid[:len(masked)] = 1
        return {
            "query_tokens": np.array(query + [self.pad_id] * pad, np.int64),
            "query_pad_mask": np.array([1] * len(query) + [0] * pad, np.int64),
            "mask_positions": positions,
            "mask_labels": mask_labels,
            "mask_valid": valid,
            "query_doc": np.int64(self.document_of(sentence)),
        }
