"""A weighted blend of datasets, in a fixed interleaving computed by the C++ helper."""
from __future__ import annotations

import hashlib
import json
import os
from typing import Optional, Sequence

import numpy as np
import torch

from megatron.core.datasets import helpers
from megatron.core.datasets.utils import load_or_build_cache


def normalize_weights(weights: Sequence[float]) -> np.ndarray:
    weights = np.asarray(weights, dtype=np.float64)
    if weights.ndim != 1 or len(weights) == 0 or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError(f"blend weights must be non-negative and not all zero, got {weights.tolist()}")
    return weights / weights.sum()


class BlendedDataset(torch.utils.data.Dataset):
    """``size`` samples drawn from ``datasets`` so each one's share tracks its weight.

    The interleaving is deterministic (no RNG) and cached under ``cache_dir`` as
    ``blended_{hash}_{name}_{size}ns_{dataset_index|dataset_sample_index}.npy``, where the
    hash covers the dataset descriptions, weights and size. A dataset asked for more
    samples than it holds is an error, not a silent wrap-around.
    """

    def __init__(self, datasets: Sequence, weights: Sequence[float], size: int, *,
                 name: str = "train", descriptions: Optional[Sequence[str]] = None,
                 cache_dir: Optional[str] = None, barrier_groups: Optional[Sequence] = None):
        if len(datasets) != len(weights):
            raise ValueError(f"{len(datasets)} datasets but {len(weights)} weights")
        self.datasets = list(datasets)
        self.weights = normalize_weights(weights)
        self.size = int(size)
        build = lambda: dict(zip(("dataset_index", "dataset_sample_index"),
                                 helpers.build_blending_indices(self.weights, self.size)))
        if cache_dir is None:
            arrays = build()
        else:
            descriptions = list(descriptions or [type(d).__name__ + str(len(d)) for d in datasets])
            key = json.dumps({"datasets": descriptions, "weights": self.weights.tolist(),
                              "size": self.size, "name": name}, sort_keys=True)
            digest = hashlib.md5(key.encode()).hexdigest()
            stem = os.path.join(cache_dir, f"blended_{digest}_{name}_{self.size}ns")
            paths = {k: f"{stem}_{k}.npy" for k in ("dataset_index", "dataset_sample_index")}
            spec = {"dataset_index": ((self.size,), np.int16),
                    "dataset_sample_index": ((self.size,), np.int64)}
            arrays = load_or_build_cache(paths, spec, build, barrier_groups=barrier_groups,
                                         description=f"{name} blending indices")
        self.dataset_index = arrays["dataset_index"]
        self.dataset_sample_index = arrays["dataset_sample_index"]
        self._check_sizes()

    def _check_sizes(self):
        if self.size == 0:
            return
        counts = np.bincount(self.dataset_index, minlength=len(self.datasets))
        for d, (count, dataset) in enumerate(zip(counts, self.datasets)):
            if count > len(dataset):
                raise ValueError(
                    f"blend needs {count} samples from dataset {d} (weight {self.weights[d]:.4f}) "
                    f"but it holds {len(dataset)}: ask it for more samples")

    def __len__(self):
        return self.size

    def __getitem__(self, idx):
        dataset = int(self.dataset_index[idx])
        return self.datasets[dataset][int(self.dataset_sample_index[idx])]
