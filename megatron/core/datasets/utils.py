"""Index caches shared by the datasets: build once on global rank 0, memory-map everywhere.

A cache is a set of ``.npy`` files next to the data. Rank 0 checks them (loadable, the
expected shapes and dtypes), rebuilds any set that is missing or stale, writing each file
to a temporary name and renaming it so no reader ever sees half a file; the other ranks
wait at a barrier and then map the files read-only. Without torch.distributed every
process checks and builds for itself, which is also safe thanks to the atomic rename.
"""
from __future__ import annotations

import os
import time
from typing import Callable, Dict, Optional, Sequence

import numpy as np

from megatron.core.fileio import atomic_open

# name -> (shape, dtype); a dimension given as None is not checked.
Spec = Dict[str, tuple]


def _distributed():
    try:
        import torch.distributed as dist
    except ImportError:  # pragma: no cover - torch is a run-time requirement
        return None
    return dist if dist.is_available() and dist.is_initialized() else None


def is_rank_0() -> bool:
    dist = _distributed()
    return dist is None or dist.get_rank() == 0


def log_rank_0(message: str) -> None:
    if is_rank_0():
        print(message, flush=True)


def wait_for_rank_0(barrier_groups: Optional[Sequence] = None) -> None:
    """Barrier after rank 0 builds a cache.

    With no groups it is a global barrier, so every rank must get here. Megatron builds
    datasets only on tensor-parallel rank 0; such callers pass the data-parallel group
    then the pipeline group: every dataset-building rank then waits, through one rank
    of its pipeline, for global rank 0.
    """
    dist = _distributed()
    if dist is None:
        return
    if barrier_groups is None:
        dist.barrier()
        return
    for group in barrier_groups:
        dist.barrier(group=group)


def save_npy_atomic(path: str, array: np.ndarray) -> None:
    """``np.save`` published atomically (temporary name, fsync, rename)."""
    with atomic_open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)


def _load_checked(path: str, shape, dtype) -> Optional[np.ndarray]:
    """The memory-mapped array, or None when the file is missing, unreadable or stale."""
    if not os.path.isfile(path):
        return None
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError, EOFError):
        return None
    if dtype is not None and array.dtype != np.dtype(dtype):
        return None
    if shape is not None:
        if array.ndim != len(shape):
            return None
        if any(want is not None and got != want for got, want in zip(array.shape, shape)):
            return None
    # A plain ndarray over the same mapping: np.memmap's per-index bookkeeping costs
    # microseconds on every element read in __getitem__.
    return array.view(np.ndarray)


def load_or_build_cache(paths: Dict[str, str], spec: Spec,
                        build: Callable[[], Dict[str, np.ndarray]],
                        validate: Optional[Callable[[Dict[str, np.ndarray]], bool]] = None,
                        barrier_groups: Optional[Sequence] = None,
                        description: str = "index") -> Dict[str, np.ndarray]:
    """Memory-mapped cache arrays ``{name: array}`` for the files in ``paths``.

    ``spec`` gives each array's expected (shape, dtype), where a dtype of None accepts
    any; ``validate`` can add checks on the loaded arrays (e.g. value bounds).
    ``build`` returns every array; it runs on rank 0 only when the files fail a check.
    """

    def load_all():
        arrays = {}
        for name, path in paths.items():
            shape, dtype = spec.get(name, (None, None))
            array = _load_checked(path, shape, dtype)
            if array is None:
                return None
            arrays[name] = array
        if validate is not None and not validate(arrays):
            return None
        return arrays

    if is_rank_0():
        arrays = load_all()
        if arrays is None:
            start = time.time()
            built = build()
            for name, path in paths.items():
                save_npy_atomic(path, built[name])
            log_rank_0(f" > built {description} in {time.time() - start:.2f} s: "
                       f"{', '.join(os.path.basename(p) for p in paths.values())}")
    wait_for_rank_0(barrier_groups)
    arrays = load_all()
    if arrays is None:
        raise RuntimeError(
            f"{description}: cache files {sorted(paths.values())} are missing or do not match "
            "the dataset after rank 0 built them (is the directory shared between ranks?)"
        )
    return arrays


class PicklesMappedArrays:
    """Mixin for datasets holding memory-mapped caches: pickling (as DataLoader workers
    started with ``spawn`` do) sends the file paths in ``_mapped_arrays`` (attribute ->
    path) instead of copying the mapped arrays, and the receiver maps the files again."""

    _mapped_arrays: Dict[str, str] = {}

    def __getstate__(self):
        return {k: v for k, v in self.__dict__.items() if k not in self._mapped_arrays}

    def __setstate__(self, state):
        self.__dict__.update(state)
        for name, path in self._mapped_arrays.items():
            setattr(self, name, np.load(path, mmap_mode="r", allow_pickle=False).view(np.ndarray))
