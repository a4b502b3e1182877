"""Named wall-clock timers for the training loop, filtered by ``--timing-log-level``.

Level 0 timers (the iteration as a whole) are always kept; levels 1 and 2 add finer regions
(forward/backward, optimizer, communication), which cost a device synchronisation each.
"""
import time
from typing import Dict, Iterable, Optional

import torch


def _synchronize() -> None:
    # Kernels run asynchronously on a GPU: without this a timer would measure only the launch.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class Timer:
    def __init__(self, name: str):
        self.name = name
        self._elapsed = 0.0
        self._started = False
        self._start_time = 0.0

    def start(self, barrier: bool = False) -> None:
        if self._started:
            raise RuntimeError(f"timer {self.name!r} has already been started")
        if barrier:
            _barrier()
        _synchronize()
        self._start_time = time.perf_counter()
        self._started = True

    def stop(self, barrier: bool = False) -> None:
        if not self._started:
            raise RuntimeError(f"timer {self.name!r} is not started")
        if barrier:
            _barrier()
        _synchronize()
        self._elapsed += time.perf_counter() - self._start_time
        self._started = False

    def reset(self) -> None:
        self._elapsed = 0.0
        self._started = False

    def elapsed(self, reset: bool = True) -> float:
        """Seconds accumulated since the last reset (a running timer is read without stopping it)."""
        running = self._started
        if running:
            self.stop()
        value = self._elapsed
        if reset:
            self.reset()
        if running:
            self.start()
        return value


class _NullTimer(Timer):
    """Stands in for timers above the configured level, so call sites need no level checks."""

    def start(self, barrier: bool = False) -> None:
        pass

    def stop(self, barrier: bool = False) -> None:
        pass

    def elapsed(self, reset: bool = True) -> float:
        return 0.0


def _barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


class Timers:
    """``timers(name, log_level)`` returns the named timer (created on first use)."""

    def __init__(self, log_level: int = 0):
        if log_level not in (0, 1, 2):
            raise ValueError(f"--timing-log-level {log_level} must be 0, 1 or 2")
        self.log_level = log_level
        self.timers: Dict[str, Timer] = {}
        self._null = _NullTimer("null")

    def __call__(self, name: str, log_level: int = 0) -> Timer:
        if log_level > self.log_level:
            return self._null
        if name not in self.timers:
            self.timers[name] = Timer(name)
        return self.timers[name]

    def _values_ms(self, names: Iterable[str], normalizer: float, reset: bool) -> Dict[str, float]:
        if normalizer <= 0.0:
            raise ValueError(f"timer normalizer must be positive, got {normalizer}")
        return {name: self.timers[name].elapsed(reset=reset) * 1000.0 / normalizer
                for name in names if name in self.timers}

    def log(self, names: Iterable[str], normalizer: float = 1.0, rank: Optional[int] = None,
            reset: bool = True) -> Optional[str]:
        """Print ``time (ms) | name: value | ...`` on ``rank`` (default: the last rank, which holds
        the loss under pipeline parallelism); returns the line on that rank."""
        values = self._values_ms(names, normalizer, reset)
        if not values:
            return None
        line = "time (ms)" + "".join(f" | {name}: {value:.2f}" for name, value in values.items())
        distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
        if rank is None:
            rank = torch.distributed.get_world_size() - 1 if distributed else 0
        if (torch.distributed.get_rank() if distributed else 0) != rank:
            return None
        print(line, flush=True)
        return line

    def write(self, names: Iterable[str], writer, iteration: int, normalizer: float = 1.0, reset: bool = False) -> None:
        """Add each timer (``<name>-time``, ms) to a TensorBoard writer."""
        for name, value in self._values_ms(names, normalizer, reset).items():
            writer.add_scalar(f"{name}-time", value, iteration)
