"""Batch arithmetic: global batch = micro batch x data-parallel size x number of micro-batches.

A calculator answers two questions for the training loop: how many micro-batches each
data-parallel rank runs this iteration, and what the global batch is. With
``--rampup-batch-size START INCREMENT SAMPLES`` the global batch grows from START by INCREMENT
in equal sample intervals until SAMPLES samples are consumed, then stays at
``--global-batch-size``.
"""
import abc
from typing import Optional, Sequence


class NumMicroBatchesCalculator(abc.ABC):
    """Base: ``get()`` micro-batches per rank, ``get_current_global_batch_size()``."""

    def __init__(self, micro_batch_size: int, data_parallel_size: int):
        if micro_batch_size < 1:
            raise ValueError(f"--micro-batch-size {micro_batch_size} must be at least 1")
        if data_parallel_size < 1:
            raise ValueError(f"data-parallel size {data_parallel_size} must be at least 1")
        self.micro_batch_size = micro_batch_size
        self.data_parallel_size = data_parallel_size
        self.micro_batch_times_data_parallel_size = micro_batch_size * data_parallel_size
        self.num_micro_batches = 1
        self.current_global_batch_size = self.micro_batch_times_data_parallel_size

    def get(self) -> int:
        return self.num_micro_batches

    def get_current_global_batch_size(self) -> int:
        return self.current_global_batch_size

    @abc.abstractmethod
    def update(self, consumed_samples: int, consistency_check: bool) -> None:
        """Set the micro-batch count for ``consumed_samples`` (constant, or ramping up)."""

    def _split(self, global_batch_size: int, consistency_check: bool) -> int:
        unit = self.micro_batch_times_data_parallel_size
        if consistency_check and global_batch_size % unit != 0:
            raise ValueError(
                f"global batch size {global_batch_size} is not divisible by --micro-batch-size "
                f"{self.micro_batch_size} x data-parallel size {self.data_parallel_size}")
        return global_batch_size // unit


class ConstantNumMicroBatches(NumMicroBatchesCalculator):
    def __init__(self, global_batch_size: int, micro_batch_size: int, data_parallel_size: int):
        super().__init__(micro_batch_size, data_parallel_size)
        if global_batch_size % self.micro_batch_times_data_parallel_size != 0:
            raise ValueError(
                f"--global-batch-size {global_batch_size} is not divisible by --micro-batch-size "
                f"{micro_batch_size} x data-parallel size {data_parallel_size}")
        self.current_global_batch_size = global_batch_size
        self.num_micro_batches = global_batch_size // self.micro_batch_times_data_parallel_size

    def update(self, consumed_samples: int, consistency_check: bool) -> None:
        pass


class RampupBatchsizeNumMicroBatches(NumMicroBatchesCalculator):
    """Global batch ``start + k * increment`` where ``k = floor(consumed / (samples / increments))``.

    ``increments = (global - start) / increment``; every intermediate batch must split evenly into
    micro-batches, which holds exactly when start and increment are multiples of micro x DP.
    """

    def __init__(self, start_batch_size: int, batch_size_increment: int, rampup_samples: int,
                 global_batch_size: int, micro_batch_size: int, data_parallel_size: int):
        super().__init__(micro_batch_size, data_parallel_size)
        unit = self.micro_batch_times_data_parallel_size
        flag = "--rampup-batch-size"
        if start_batch_size < 1:
            raise ValueError(f"{flag} start {start_batch_size} must be at least 1")
        if batch_size_increment < 1:
            raise ValueError(f"{flag} increment {batch_size_increment} must be at least 1")
        if rampup_samples < 0:
            raise ValueError(f"{flag} ramp-up samples {rampup_samples} must be >= 0")
        if start_batch_size > global_batch_size:
            raise ValueError(f"{flag} start {start_batch_size} exceeds --global-batch-size {global_batch_size}")
        difference = global_batch_size - start_batch_size
        if difference % batch_size_increment != 0:
            raise ValueError(
                f"--global-batch-size {global_batch_size} minus {flag} start {start_batch_size} = {difference} "
                f"is not divisible by the increment {batch_size_increment}")
        for name, value in (("start", start_batch_size), ("increment", batch_size_increment)):
            if value % unit != 0:
                raise ValueError(
                    f"{flag} {name} {value} is not divisible by --micro-batch-size {micro_batch_size} x "
                    f"data-parallel size {data_parallel_size}")
        self.start_batch_size = start_batch_size
        self.batch_size_increment = batch_size_increment
        self.rampup_samples = rampup_samples
        self.global_batch_size = global_batch_size
        self.num_increments = difference // batch_size_increment
        self.rampup_samples_per_increment = (rampup_samples / self.num_increments) if self.num_increments else 0.0
        self.update(0, False)

    def update(self, consumed_samples: int, consistency_check: bool) -> None:
        if self.num_increments == 0 or consumed_samples > self.rampup_samples or self.rampup_samples_per_increment == 0:
            batch = self.global_batch_size
        else:
            steps = int(consumed_samples / self.rampup_samples_per_increment)
            batch = min(self.start_batch_size + steps * self.batch_size_increment, self.global_batch_size)
        self.current_global_batch_size = batch
        self.num_micro_batches = self._split(batch, consistency_check)


def build_num_microbatches_calculator(rank: int, rampup_batch_size: Optional[Sequence[int]], global_batch_size: int,
                                      micro_batch_size: int, data_parallel_size: int) -> NumMicroBatchesCalculator:
    """Constant calculator, or the ramp-up one for ``rampup_batch_size = [start, increment, samples]``."""
    if not rampup_batch_size:
        calculator = ConstantNumMicroBatches(global_batch_size, micro_batch_size, data_parallel_size)
        if rank == 0:
            print(f"setting number of micro-batches to constant {calculator.get()}", flush=True)
        return calculator
    if len(rampup_batch_size) != 3:
        raise ValueError(f"--rampup-batch-size takes 3 values (start, increment, samples), got {len(rampup_batch_size)}: "
                         f"{' '.join(str(v) for v in rampup_batch_size)}")
    start, increment, samples = (int(v) for v in rampup_batch_size)
    calculator = RampupBatchsizeNumMicroBatches(start, increment, samples, global_batch_size,
                                                micro_batch_size, data_parallel_size)
    if rank == 0:
        print(f"will use batch size rampup starting from global batch size {start} to global batch size "
              f"{global_batch_size} with batch size increments {increment} over {samples} samples.", flush=True)
    return calculator
