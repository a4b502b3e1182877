"""The largest token id of an indexed dataset, checked against the model's vocabulary.

Data tokenised with another vocabulary (30,522 WordPiece ids fed to an 8,192-id model, say)
would otherwise train: at TP>1 the vocab-parallel embedding masks out-of-range ids to zero
vectors and the losses look normal. The ``.bin`` is scanned once, memory-mapped in blocks, and
the maximum cached next to the other index caches, keyed by the file's size and mtime.
"""
from __future__ import annotations

import json
import os
from typing import Optional

import numpy as np

from megatron.core.fileio import atomic_write_text

_BLOCK = 1 << 26  # elements per step of the scan: bounded memory on any file size


def _cache_path(prefix: str, cache_dir: Optional[str]) -> str:
    base = os.path.join(cache_dir, os.path.basename(prefix)) if cache_dir else prefix
    return f"{base}_max_token_id.json"


def max_token_id(prefix: str, dtype, cache_dir: Optional[str] = None) -> int:
    """Largest value in ``prefix.bin`` read as ``dtype`` (-1 for an empty file)."""
    bin_path = prefix + ".bin"
    stat = os.stat(bin_path)
    key = {"bin_size": stat.st_size, "bin_mtime_ns": stat.st_mtime_ns}
    cache = _cache_path(prefix, cache_dir)
    try:
        with open(cache, encoding="utf-8") as f:
            cached = json.load(f)
        if {k: cached.get(k) for k in key} == key:
            return int(cached["max_token_id"])
    except (OSError, ValueError, KeyError, TypeError):
        pass  # absent, stale or unreadable: scan again
    dtype = np.dtype(dtype)
    count = stat.st_size // dtype.itemsize
    result = -1
    if count:
        tokens = np.memmap(bin_path, dtype=dtype, mode="r", shape=(count,))
        for start in range(0, count, _BLOCK):
            result = max(result, int(tokens[start:start + _BLOCK].max()))
        del tokens
    try:
        atomic_write_text(cache, json.dumps({**key, "max_token_id": result}) + "\n")
    except OSError:
        pass  # a read-only data directory: the scan is repeated next time, nothing is wrong
    return result


def check_token_ids(prefix: str, dtype, vocab_size: int, cache_dir: Optional[str] = None) -> None:
    """Refuse data whose token ids do not fit a model with ``vocab_size`` (padded) embeddings."""
    largest = max_token_id(prefix, dtype, cache_dir)
    if largest >= vocab_size:
        raise ValueError(f"{prefix}.bin: token id {largest} is outside the model's vocabulary of {vocab_size} "
                         "(padded) ids; the data was tokenised with another vocabulary than --vocab-file/"
                         "--tokenizer-type give")
