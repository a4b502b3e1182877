"""Batch samplers that shard micro-batches over data-parallel ranks and resume exactly.

The data order depends only on the seed and ``consumed_samples`` (the number of samples
all data-parallel ranks together have consumed), so a run restarted from a checkpoint
continues the stream where it stopped.
"""
from __future__ import annotations

from typing import Callable, Iterable, Iterator, List, Optional

import torch


def _check_common(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
                  data_parallel_size):
    if total_samples <= 0:
        raise ValueError(f"no samples to load: dataset has {total_samples}")
    if consumed_samples < 0:
        raise ValueError(f"consumed_samples must be >= 0, got {consumed_samples}")
    if micro_batch_size <= 0 or data_parallel_size <= 0:
        raise ValueError(f"micro_batch_size ({micro_batch_size}) and data_parallel_size "
                         f"({data_parallel_size}) must be positive")
    if not 0 <= data_parallel_rank < data_parallel_size:
        raise ValueError(f"data_parallel_rank {data_parallel_rank} is outside "
                         f"[0, {data_parallel_size})")


class MegatronPretrainingSampler:
    """Sequential: global batches of ``micro_batch_size * dp`` consecutive indices from
    ``consumed_samples`` on; rank r takes the r-th micro-batch slice of each."""

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, drop_last: bool = True):
        _check_common(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
                      data_parallel_size)
        if consumed_samples >= total_samples:
            raise ValueError(f"consumed_samples {consumed_samples} is not below the dataset's "
                             f"{total_samples} samples: the run has used all its data")
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.micro_batch_times_data_parallel_size = micro_batch_size * data_parallel_size
        self.drop_last = drop_last

    def __len__(self):
        return self.total_samples

    def _slice(self, batch):
        start = self.data_parallel_rank * self.micro_batch_size
        return batch[start:start + self.micro_batch_size]

    def __iter__(self) -> Iterator[List[int]]:
        batch = []
        for idx in range(self.consumed_samples, self.total_samples):
            batch.append(idx)
            if len(batch) == self.micro_batch_times_data_parallel_size:
                yield self._slice(batch)
                batch = []
        if batch and not self.drop_last:
            yield self._slice(batch)


class MegatronPretrainingRandomSampler:
    """Per-epoch shuffle: each rank owns a contiguous bucket of the samples and walks a
    permutation of it seeded by ``seed + epoch``; an incomplete last global batch is dropped.

    ``consumed_samples`` must be a multiple of ``micro_batch_size * dp`` (whole global
    micro-batches), which is how training advances it.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, seed: int = 0):
        _check_common(total_samples, consumed_samples, micro_batch_size, data_parallel_rank,
                      data_parallel_size)
        self.total_samples = total_samples
        self.consumed_samples = consumed_samples
        self.micro_batch_size = micro_batch_size
        self.data_parallel_rank = data_parallel_rank
        self.data_parallel_size = data_parallel_size
        self.micro_batch_times_data_parallel_size = micro_batch_size * data_parallel_size
        self.last_batch_size = total_samples % self.micro_batch_times_data_parallel_size
        self.seed = seed
        if total_samples < self.micro_batch_times_data_parallel_size:
            raise ValueError(f"dataset of {total_samples} samples holds no full batch of "
                             f"micro_batch_size {micro_batch_size} x data_parallel_size {data_parallel_size}")
        if consumed_samples % self.micro_batch_times_data_parallel_size:
            raise ValueError(f"consumed_samples {consumed_samples} is not a multiple of "
                             f"micro_batch_size x data_parallel_size = {self.micro_batch_times_data_parallel_size}")

    def __len__(self):
        return self.total_samples

    def __iter__(self) -> Iterator[List[int]]:
        active_total_samples = self.total_samples - self.last_batch_size
        epoch = self.consumed_samples // active_total_samples
        current_epoch_samples = self.consumed_samples % active_total_samples
        bucket_size = (self.total_samples // self.micro_batch_times_data_parallel_size) * self.micro_batch_size
        bucket_offset = current_epoch_samples // self.data_parallel_size
        start_idx = self.data_parallel_rank * bucket_size
        generator = torch.Generator()
        generator.manual_seed(self.seed + epoch)
        permutation = torch.randperm(bucket_size, generator=generator).tolist()
        batch = []
        for offset in permutation[bucket_offset:]:
            batch.append(start_idx + offset)
            if len(batch) == self.micro_batch_size:
                # Advanced here, in the main process, so the next pass starts the next epoch.
                self.consumed_samples += self.micro_batch_times_data_parallel_size
                yield batch
                batch = []


def cyclic_iter(iterable: Iterable) -> Iterator:
    """Loop over ``iterable`` forever (``--dataloader-type cyclic``); a random sampler
    reshuffles on every pass because it tracks its consumed samples."""
    while True:
        yielded = False
        for item in iterable:
            yielded = True
            yield item
        if not yielded:
            raise ValueError("cyclic_iter: the iterable produced nothing; it would loop forever")


def build_pretraining_data_loader(dataset, consumed_samples: int, micro_batch_size: int,
                                  data_parallel_rank: int, data_parallel_size: int,
                                  dataloader_type: str = "single", num_workers: int = 0,
                                  seed: int = 0, drop_last: bool = True,
                                  collate_fn: Optional[Callable] = None,
                                  pin_memory: bool = False) -> Optional[torch.utils.data.DataLoader]:
    """A DataLoader over ``dataset`` for this data-parallel rank, or None for no dataset.

    ``single`` reads sequentially once (pretraining, where the index already shuffles);
    ``cyclic`` reshuffles every epoch (fine-tuning; wrap the loader in ``cyclic_iter``).
    """
    if dataset is None:
        return None
    if dataloader_type == "single":
        sampler = MegatronPretrainingSampler(len(dataset), consumed_samples, micro_batch_size,
                                             data_parallel_rank, data_parallel_size, drop_last)
    elif dataloader_type == "cyclic":
        sampler = MegatronPretrainingRandomSampler(len(dataset), consumed_samples, micro_batch_size,
                                                   data_parallel_rank, data_parallel_size, seed)
    else:
        raise ValueError(f"--dataloader-type must be single or cyclic, got {dataloader_type!r}")
    # Starting an iterator draws the workers' base seed from this generator; from the global one
    # it would shift every later dropout mask by when the loader was built (e.g. after a resume).
    generator = torch.Generator().manual_seed(seed)
    return torch.utils.data.DataLoader(dataset, batch_sampler=sampler, num_workers=num_workers,
                                       pin_memory=pin_memory, collate_fn=collate_fn,
                                       persistent_workers=False, generator=generator)
