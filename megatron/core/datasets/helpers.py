"""Index builders for the datasets: the compiled C++ helper, and NumPy references.

The C++ functions (``helpers_cpp``, built by ``pip install -e .``) are what the datasets
use. The ``*_reference`` functions here implement the same algorithms in Python/NumPy;
they are slow and exist so tests can check the C++ code against an independent reading
of the algorithm. There is deliberately no silent fallback from C++ to the reference:
the reference would take hours on a real corpus.
"""
from __future__ import annotations

import numpy as np

try:
    from megatron.core.datasets import helpers_cpp as _cpp
except ImportError as exc:  # pragma: no cover - exercised only on broken installs
    _cpp = None
    _IMPORT_ERROR = exc
else:
    _IMPORT_ERROR = None

LONG_SENTENCE_LEN = 512
_INT32_MAX = np.iinfo(np.int32).max


def _helpers():
    if _cpp is None:
        raise ImportError(
            "the C++ dataset helper megatron.core.datasets.helpers_cpp is not built "
            f"({_IMPORT_ERROR}); build it with `pip install -e . --no-build-isolation` "
            "from the repository root (needs a C++17 compiler and pybind11)"
        )
    return _cpp


def _as(array, dtype, name):
    array = np.asarray(array)
    if array.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {array.shape}")
    return np.ascontiguousarray(array, dtype=dtype)


# --------------------------------------------------------------------------- C++ wrappers


def build_sample_idx(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    """GPT sample index: ``[n + 1, 2]`` rows of (position in doc_idx, token offset).

    ``n = (num_epochs * tokens_per_epoch - 1) // seq_length``; sample i spans row i to
    row i + 1 inclusive, i.e. ``seq_length + 1`` tokens. int32 unless a value needs int64.
    """
    sizes = _as(sizes, np.int32, "sizes")
    doc_idx = np.asarray(doc_idx)
    doc_dtype = np.int32 if doc_idx.dtype == np.int32 else np.int64
    doc_idx = _as(doc_idx, doc_dtype, "doc_idx")
    return _helpers().build_sample_idx(
        sizes, doc_idx, int(seq_length), int(num_epochs), int(tokens_per_epoch)
    )


def build_mapping(docs, sizes, num_epochs, max_num_samples, max_seq_length, short_seq_prob,
                  seed, verbose, min_num_sent):
    """BERT/T5 samples mapping: shuffled rows (first sentence, end sentence, target length)."""
    return _helpers().build_mapping(
        _as(docs, np.int64, "docs"), _as(sizes, np.int32, "sizes"), int(num_epochs),
        int(max_num_samples), int(max_seq_length), float(short_seq_prob), int(seed),
        bool(verbose), int(min_num_sent),
    )


def build_blocks_mapping(docs, sizes, titles_sizes, num_epochs, max_num_samples, max_seq_length,
                         seed, verbose, use_one_sent_blocks):
    """ICT blocks mapping: shuffled rows (first sentence, end sentence, doc, block id)."""
    return _helpers().build_blocks_mapping(
        _as(docs, np.int64, "docs"), _as(sizes, np.int32, "sizes"),
        _as(titles_sizes, np.int32, "titles_sizes"), int(num_epochs), int(max_num_samples),
        int(max_seq_length), int(seed), bool(verbose), bool(use_one_sent_blocks),
    )


def build_blending_indices(weights, size, verbose=False):
    """Greedy blend of ``size`` samples: (dataset_index int16, dataset_sample_index int64)."""
    weights = _as(weights, np.float64, "weights")
    if len(weights) > np.iinfo(np.int16).max:
        raise ValueError(f"at most {np.iinfo(np.int16).max} datasets can be blended, got {len(weights)}")
    dataset_index = np.zeros(size, dtype=np.int16)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    _helpers().build_blending_indices(
        dataset_index, dataset_sample_index, weights, len(weights), int(size), bool(verbose)
    )
    return dataset_index, dataset_sample_index


# ------------------------------------------------------------------------ random numbers


class MT19937_64:
    """The 64-bit Mersenne Twister of the C++ standard (``std::mt19937_64``), in Python.

    NumPy ships only the 32-bit generator; the mappings are shuffled with the 64-bit one.
    """

    _N, _M = 312, 156
    _UPPER, _LOWER = 0xFFFFFFFF80000000, 0x7FFFFFFF
    _MASK = (1 << 64) - 1

    def __init__(self, seed: int):
        state = [seed & self._MASK]
        for i in range(1, self._N):
            prev = state[-1]
            state.append((6364136223846793005 * (prev ^ (prev >> 62)) + i) & self._MASK)
        self._state = state
        self._index = self._N

    def _twist(self):
        s, n, m = self._state, self._N, self._M
        for i in range(n):
            y = (s[i] & self._UPPER) | (s[(i + 1) % n] & self._LOWER)
            s[i] = s[(i + m) % n] ^ (y >> 1) ^ (0xB5026F5AA96619E9 if y & 1 else 0)
        self._index = 0

    def __call__(self) -> int:
        if self._index >= self._N:
            self._twist()
        y = self._state[self._index]
        self._index += 1
        y ^= (y >> 29) & 0x5555555555555555
        y ^= (y << 17) & 0x71D67FFFEDA60000
        y ^= (y << 37) & 0xFFF7EEE000000000
        y ^= y >> 43
        return y


class _MT19937Stream:
    """Raw 32-bit outputs of ``std::mt19937(seed)``, drawn lazily in blocks.

    ``np.random.RandomState(seed)`` seeds MT19937 the same way as the C++ standard, and
    its full-range uint32 draws are the generator's raw outputs.
    """

    def __init__(self, seed: int):
        self._rng = np.random.RandomState(seed)
        self._block = np.empty(0, dtype=np.uint32)
        self._pos = 0

    def __call__(self) -> int:
        if self._pos == len(self._block):
            self._block = self._rng.randint(0, 2**32, size=4096, dtype=np.uint32)
            self._pos = 0
        value = int(self._block[self._pos])
        self._pos += 1
        return value


def _shuffle_rows_reference(rows: np.ndarray, seed: int) -> np.ndarray:
    rng = MT19937_64(seed)
    for i in range(len(rows) - 1, 0, -1):
        j = rng() % (i + 1)
        rows[[i, j]] = rows[[j, i]]
    return rows


# ---------------------------------------------------------------------------- references


def build_sample_idx_reference(sizes, doc_idx, seq_length, num_epochs, tokens_per_epoch):
    """Vectorised reading of build_sample_idx: sample i starts at global token i*seq_length.

    Row i is the document position holding token ``i * seq_length`` of the documents laid
    end to end in doc_idx order, and its offset there (row 0 is always (0, 0)).
    """
    sizes = np.asarray(sizes, dtype=np.int64)
    doc_idx = np.asarray(doc_idx, dtype=np.int64)
    num_samples = (num_epochs * tokens_per_epoch - 1) // seq_length
    lengths = sizes[doc_idx]
    ends = np.cumsum(lengths)
    positions = np.arange(num_samples + 1, dtype=np.int64) * seq_length
    if len(ends) == 0 or positions[-1] >= ends[-1]:
        raise ValueError("build_sample_idx_reference: doc_idx holds fewer tokens than the samples need")
    doc_pos = np.searchsorted(ends, positions, side="right")
    offsets = positions - (ends[doc_pos] - lengths[doc_pos])
    doc_pos[0], offsets[0] = 0, 0
    fits = len(doc_idx) < _INT32_MAX and (len(sizes) == 0 or sizes.max() < _INT32_MAX)
    return np.stack([doc_pos, offsets], axis=1).astype(np.int32 if fits else np.int64)


def _target_length_reference(short_seq_ratio, max_seq_length, rng):
    if short_seq_ratio == 0:
        return max_seq_length
    draw = rng()
    if draw % short_seq_ratio == 0:
        return 2 + draw % (max_seq_length - 1)
    return max_seq_length


def build_mapping_reference(docs, sizes, num_epochs, max_num_samples, max_seq_length,
                            short_seq_prob, seed, verbose, min_num_sent):
    """Plain-Python reading of build_mapping (see the C++ comments for the rules)."""
    docs = np.asarray(docs, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    short_seq_ratio = int(round(1.0 / short_seq_prob)) if short_seq_prob > 0 else 0
    rng = _MT19937Stream(seed)
    rows = []
    for epoch in range(num_epochs):
        if len(rows) >= max_num_samples:
            break
        for doc in range(len(docs) - 1):
            first, last = int(docs[doc]), int(docs[doc + 1])
            remaining = last - first
            long_sentence = remaining > 1 and bool((sizes[first:last] > LONG_SENTENCE_LEN).any())
            if remaining < min_num_sent or long_sentence:
                continue
            start, seq_len, num_sent = first, 0, 0
            target = _target_length_reference(short_seq_ratio, max_seq_length, rng)
            for s in range(first, last):
                seq_len += int(sizes[s])
                num_sent += 1
                remaining -= 1
                if (seq_len >= target and remaining > 1 and num_sent >= min_num_sent) or remaining == 0:
                    rows.append((start, s + 1, target))
                    start, seq_len, num_sent = s + 1, 0, 0
                    target = _target_length_reference(short_seq_ratio, max_seq_length, rng)
        if epoch == 0 and not rows:
            raise ValueError(
                f"build_mapping: no sample can be built: every document has fewer than "
                f"{min_num_sent} sentences or a sentence over {LONG_SENTENCE_LEN} tokens"
            )
    dtype = np.uint64 if len(sizes) > np.iinfo(np.uint32).max else np.uint32
    return _shuffle_rows_reference(np.array(rows, dtype=dtype).reshape(-1, 3), seed + 1)


def build_blocks_mapping_reference(docs, sizes, titles_sizes, num_epochs, max_num_samples,
                                   max_seq_length, seed, verbose, use_one_sent_blocks):
    """Plain-Python reading of build_blocks_mapping (see the C++ comments for the rules)."""
    docs = np.asarray(docs, dtype=np.int64)
    sizes = np.asarray(sizes, dtype=np.int64)
    titles_sizes = np.asarray(titles_sizes, dtype=np.int64)
    min_num_sent = 1 if use_one_sent_blocks else 2
    rows = []
    for epoch in range(num_epochs):
        if len(rows) >= max_num_samples:
            break
        block_id = 0
        for doc in range(len(docs) - 1):
            first, last = int(docs[doc]), int(docs[doc + 1])
            target = max_seq_length - int(titles_sizes[doc])
            remaining = last - first
            if remaining < min_num_sent or (sizes[first:last] > LONG_SENTENCE_LEN).any():
                continue
            start, seq_len, num_sent = first, 0, 0
            for s in range(first, last):
                seq_len += int(sizes[s])
                num_sent += 1
                remaining -= 1
                if (seq_len >= target and remaining >= min_num_sent and num_sent >= min_num_sent) or remaining == 0:
                    rows.append((start, s + 1, doc, block_id))
                    block_id += 1
                    start, seq_len, num_sent = s + 1, 0, 0
        if epoch == 0 and not rows:
            raise ValueError(
                f"build_blocks_mapping: no block can be built: every document has fewer than "
                f"{min_num_sent} sentences or a sentence over {LONG_SENTENCE_LEN} tokens"
            )
    dtype = np.uint64 if len(sizes) > np.iinfo(np.uint32).max else np.uint32
    return _shuffle_rows_reference(np.array(rows, dtype=dtype).reshape(-1, 4), seed + 1)


def build_blending_indices_reference(weights, size):
    """Vectorised over datasets, sequential over samples: the greedy blend."""
    weights = np.asarray(weights, dtype=np.float64)
    taken = np.zeros(len(weights), dtype=np.int64)
    dataset_index = np.zeros(size, dtype=np.int16)
    dataset_sample_index = np.zeros(size, dtype=np.int64)
    for i in range(size):
        best = int(np.argmax(weights * max(i, 1) - taken))  # argmax keeps the first on ties
        dataset_index[i] = best
        dataset_sample_index[i] = taken[best]
        taken[best] += 1
    return dataset_index, dataset_sample_index
