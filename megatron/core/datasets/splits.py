"""Train/valid/test splits, per-split sample counts and ``--data-path`` parsing."""
from __future__ import annotations

import math
from typing import List, Optional, Sequence, Tuple

DEFAULT_SPLIT = "969,30,1"
SPLIT_NAMES = ("train", "valid", "test")
# Each blended dataset is asked for 0.5% more samples than its share so that rounding
# in the blend never asks a dataset for a sample it does not have.
BLEND_SURPLUS = 0.005


def parse_split(split: str) -> List[float]:
    """``"949,50,1"`` (or ``/``-separated, or fractions) -> three fractions summing to 1."""
    text = str(split).strip()
    separator = "," if "," in text else "/" if "/" in text else None
    parts = text.split(separator) if separator else [text]
    try:
        values = [float(p) for p in parts]
    except ValueError:
        raise ValueError(f"--split {split!r}: expected up to three numbers such as 949,50,1") from None
    if len(values) > 3:
        raise ValueError(f"--split {split!r}: expected at most three numbers, got {len(values)}")
    if any(v < 0 or math.isnan(v) for v in values):
        raise ValueError(f"--split {split!r}: weights must be non-negative")
    values += [0.0] * (3 - len(values))
    total = sum(values)
    if total <= 0:
        raise ValueError(f"--split {split!r}: weights must not all be zero")
    return [v / total for v in values]


def split_boundaries(split: str, size: int) -> List[int]:
    """Boundaries ``[0, a, b, size]`` of the three splits over ``size`` documents.

    Megatron's 2021 rounding: cumulative sums of ``round(fraction * size)``, then the
    overshoot is subtracted from every boundary so the last equals ``size``. Python's
    ``round`` (half to even) is what Megatron uses too.
    """
    if size < 0:
        raise ValueError(f"cannot split a negative number of documents ({size})")
    boundaries = [0]
    for fraction in parse_split(split):
        boundaries.append(boundaries[-1] + int(round(fraction * float(size))))
    overshoot = boundaries[-1] - size
    return [boundaries[0]] + [b - overshoot for b in boundaries[1:]]


def train_valid_test_num_samples(global_batch_size: int, eval_iters: int, eval_interval: int,
                                 train_iters: Optional[int] = None,
                                 train_samples: Optional[int] = None) -> Tuple[int, int, int]:
    """Samples each split must provide, as Megatron's training loop consumes them.

    Validation runs every ``eval_interval`` iterations and once more at the end, each
    time for ``eval_iters`` batches; the test set is evaluated once.
    """
    if (train_iters is None) == (train_samples is None):
        raise ValueError("give exactly one of --train-iters and --train-samples")
    if global_batch_size <= 0 or eval_interval <= 0 or eval_iters < 0:
        raise ValueError(
            f"need --global-batch-size > 0 ({global_batch_size}), --eval-interval > 0 "
            f"({eval_interval}) and --eval-iters >= 0 ({eval_iters})"
        )
    if train_samples is not None:
        train = train_samples
        train_iters = train_samples // global_batch_size
    else:
        train = train_iters * global_batch_size
    valid = (train_iters // eval_interval + 1) * eval_iters * global_batch_size
    test = eval_iters * global_batch_size
    return train, valid, test


def parse_data_path(data_path: Sequence[str]) -> Tuple[List[str], Optional[List[float]]]:
    """``[w1, p1, w2, p2, ...]`` or ``[p1, p2, ...]`` -> (prefixes, normalised weights or None).

    A bare prefix list returns None: the caller weights by dataset size.
    """
    items = [str(x) for x in data_path]
    if not items:
        raise ValueError("--data-path is empty")

    def as_weight(text):
        try:
            return float(text)
        except ValueError:
            return None

    if len(items) == 1 or as_weight(items[0]) is None:
        if any(as_weight(x) is not None and not _looks_like_path(x) for x in items):
            raise ValueError(f"--data-path {' '.join(items)}: mixes weights and bare prefixes")
        return items, None
    if len(items) % 2:
        raise ValueError(f"--data-path {' '.join(items)}: expected weight/prefix pairs, got an odd count")
    weights, prefixes = [], []
    for weight_text, prefix in zip(items[0::2], items[1::2]):
        weight = as_weight(weight_text)
        if weight is None or weight < 0:
            raise ValueError(f"--data-path: {weight_text!r} (before {prefix}) is not a non-negative weight")
        weights.append(weight)
        prefixes.append(prefix)
    total = sum(weights)
    if total <= 0:
        raise ValueError(f"--data-path {' '.join(items)}: weights sum to zero")
    return prefixes, [w / total for w in weights]


def _looks_like_path(text: str) -> bool:
    return "/" in text or text.startswith(".")


def blended_num_samples(num_samples: int, weights: Sequence[float]) -> List[int]:
    """Samples to ask of each blended dataset: its share plus the 0.5% surplus."""
    return [int(math.ceil(num_samples * w * (1 + BLEND_SURPLUS))) for w in weights]
