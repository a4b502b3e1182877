"""MLPerf BERT pretraining TFRecords from sentence-per-line text (``tools/create_pretraining_data.py``).

The records equal those of the MLPerf reference script for the same inputs and seed: the
documents are read and tokenized as it does, then handed to the C++ core
(``instances_cpp``), which replays the script's ``random.Random(seed)`` draws, builds and
masks the instances, and frames them as TFRecords. Without the extension the plain Python
algorithm (``reference.py``) runs instead, with the same output.
"""
from __future__ import annotations

import dataclasses
import random
from typing import List, Sequence

import numpy as np

from megatron.core.datasets.tfrecord import TFRecordWriter, encode_example, frame_record
from megatron.preprocessing.mlperf_bert import reference

#: instances serialized per call into the C++ core: bounds the transient bytes held
SERIALIZE_CHUNK = 4096


class CreateDataError(ValueError):
    """Bad input or flags, reported as one line."""


@dataclasses.dataclass
class CreateConfig:
    max_seq_length: int = 128
    max_predictions_per_seq: int = 20
    random_seed: int = 12345
    dupe_factor: int = 10
    masked_lm_prob: float = 0.15
    short_seq_prob: float = 0.1
    do_whole_word_mask: bool = False

    def validate(self):
        if self.max_seq_length < 5:
            raise CreateDataError(f"--max_seq_length={self.max_seq_length}: must be >= 5 ([CLS] A [SEP] B [SEP] "
                                  f"with a random short target of at least 2 tokens)")
        if self.max_predictions_per_seq < 1:
            raise CreateDataError(f"--max_predictions_per_seq={self.max_predictions_per_seq}: must be >= 1")
        if self.dupe_factor < 1:
            raise CreateDataError(f"--dupe_factor={self.dupe_factor}: must be >= 1")
        if not 0.0 <= self.masked_lm_prob <= 1.0:
            raise CreateDataError(f"--masked_lm_prob={self.masked_lm_prob}: must be in [0, 1]")
        if not 0.0 <= self.short_seq_prob <= 1.0:
            raise CreateDataError(f"--short_seq_prob={self.short_seq_prob}: must be in [0, 1]")


@dataclasses.dataclass
class Corpus:
    """Documents as flat token ids: sentence s is ``tokens[sentence_offsets[s]:sentence_offsets[s+1]]``,
    document d holds sentences ``document_offsets[d]:document_offsets[d+1]`` (never empty)."""

    tokens: np.ndarray
    sentence_offsets: np.ndarray
    document_offsets: np.ndarray

    @property
    def num_documents(self):
        return len(self.document_offsets) - 1

    def documents(self) -> List[List[List[int]]]:
        tokens = self.tokens.tolist()
        so, do = self.sentence_offsets.tolist(), self.document_offsets.tolist()
        return [[tokens[so[s]:so[s + 1]] for s in range(do[d], do[d + 1])] for d in range(self.num_documents)]


def read_corpus(input_files: Sequence[str], tokenizer) -> Corpus:
    """One sentence per line, blank lines between documents, across all files in order (as the
    reference, a document left open at the end of a file continues into the next)."""
    tokens: List[int] = []
    sentence_offsets = [0]
    document_starts = [0]  # sentence index where each (possibly empty) document starts
    tokenize = tokenizer.tokenize
    for path in input_files:
        try:
            with open(path, "rb") as f:
                raw = f.read()
        except OSError as exc:
            raise CreateDataError(f"--input_file {path}: cannot read ({exc.strerror})") from None
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            line = raw.count(b"\n", 0, exc.start) + 1
            raise CreateDataError(f"{path}:{line}: not UTF-8 ({exc.reason})") from None
        for line in text.split("\n"):
            line = line.strip()
            if not line:
                document_starts.append(len(sentence_offsets) - 1)
                continue
            ids = tokenize(line)
            if ids:
                tokens.extend(ids)
                sentence_offsets.append(len(tokens))
    document_starts.append(len(sentence_offsets) - 1)
    starts = np.array(document_starts, dtype=np.int64)
    # Empty documents (runs of blank lines, lines with no tokens) are dropped.
    starts = np.unique(starts)
    return Corpus(np.array(tokens, dtype=np.int32), np.array(sentence_offsets, dtype=np.int64), starts)


def special_ids(tokenizer, vocab_size: int):
    vocab = tokenizer.vocab
    is_continuation = np.zeros(vocab_size, dtype=bool)
    for token, i in vocab.items():
        if i < vocab_size and token.startswith("##"):
            is_continuation[i] = True
    return dict(cls_id=vocab["[CLS]"], sep_id=vocab["[SEP]"], mask_id=vocab["[MASK]"]), is_continuation


def _fast_module():
    try:
        from megatron.preprocessing.mlperf_bert import instances_cpp
    except ImportError:
        return None
    return instances_cpp


class FastInstances:
    """The C++ core: instances built once, serialized in chunks."""

    def __init__(self, corpus: Corpus, config: CreateConfig, vocab_size: int, ids: dict, is_continuation, rng):
        cpp = _fast_module()
        params = cpp.Params()
        params.max_seq_length = config.max_seq_length
        params.max_predictions_per_seq = config.max_predictions_per_seq
        params.vocab_size = vocab_size
        params.cls_id, params.sep_id, params.mask_id = ids["cls_id"], ids["sep_id"], ids["mask_id"]
        params.dupe_factor = config.dupe_factor
        params.short_seq_prob = config.short_seq_prob
        params.masked_lm_prob = config.masked_lm_prob
        params.do_whole_word_mask = config.do_whole_word_mask
        version, state, gauss = rng.getstate()
        self._builder = cpp.InstanceBuilder(corpus.tokens, corpus.sentence_offsets, corpus.document_offsets,
                                            is_continuation, list(state), params)
        self._builder.build()
        rng.setstate((version, tuple(self._builder.rng_state()), gauss))

    def __len__(self):
        return len(self._builder)

    def framed_chunks(self, num_writers: int):
        for start in range(0, len(self), SERIALIZE_CHUNK):
            yield self._builder.serialize(start, min(start + SERIALIZE_CHUNK, len(self)), num_writers)

    def instance(self, i):
        return self._builder.instance(i)


class ReferenceInstances:
    """The plain Python algorithm, same interface."""

    def __init__(self, corpus: Corpus, config: CreateConfig, vocab_size: int, ids: dict, is_continuation, rng):
        self._config = config
        self._instances = reference.create_training_instances(
            corpus.documents(), config.dupe_factor, config.max_seq_length, config.short_seq_prob,
            config.masked_lm_prob, config.max_predictions_per_seq, vocab_size, rng,
            is_continuation=is_continuation, do_whole_word_mask=config.do_whole_word_mask, **ids)

    def __len__(self):
        return len(self._instances)

    def framed_chunks(self, num_writers: int):
        c = self._config
        for start in range(0, len(self), SERIALIZE_CHUNK):
            out = [[] for _ in range(num_writers)]
            for i in range(start, min(start + SERIALIZE_CHUNK, len(self))):
                features = reference.instance_features(self._instances[i], c.max_seq_length, c.max_predictions_per_seq)
                out[i % num_writers].append(frame_record(encode_example(features)))
            yield [b"".join(parts) for parts in out]


def build_instances(corpus: Corpus, tokenizer, config: CreateConfig, engine: str = "auto"):
    """Instances of ``corpus`` with ``random.Random(config.random_seed)``; engine auto/cpp/python."""
    config.validate()
    if corpus.num_documents == 0:
        raise CreateDataError("the input holds no documents (no line with a token)")
    vocab_size = wordpiece_vocab_size(tokenizer)
    ids, is_continuation = special_ids(tokenizer, vocab_size)
    rng = random.Random(config.random_seed)
    if engine == "auto":
        engine = "cpp" if _fast_module() is not None else "python"
    if engine == "cpp":
        if _fast_module() is None:
            raise CreateDataError("the C++ core is not built: run `python setup.py build_ext --inplace`")
        return FastInstances(corpus, config, vocab_size, ids, is_continuation, rng), rng
    if engine != "python":
        raise CreateDataError(f"--engine {engine}: must be auto, cpp or python")
    return ReferenceInstances(corpus, config, vocab_size, ids, is_continuation, rng), rng


def wordpiece_vocab_size(tokenizer) -> int:
    """Tokens of vocab.txt (the reference draws random tokens from those, not from the
    ``[BOS]``/``[EOS]`` Megatron appends)."""
    from megatron.tokenizer.bert import load_bert_vocab

    return len(load_bert_vocab(tokenizer.vocab_file))


def write_instances(instances, output_files: Sequence[str]) -> None:
    """Round robin over ``output_files``; every file appears only when all are complete."""
    writers = [TFRecordWriter(path) for path in output_files]
    entered = []
    try:
        for w in writers:
            entered.append(w.__enter__())
        for chunk in instances.framed_chunks(len(writers)):
            for writer, data in zip(writers, chunk):
                writer.write_framed(data)
    except BaseException as exc:
        for w in reversed(entered):
            w.__exit__(type(exc), exc, exc.__traceback__)
        raise
    for w in reversed(entered):
        w.__exit__(None, None, None)
