"""Peak memory of a distributed-optimizer checkpoint save (``state_dict()``) at data-parallel size 2.

Two gloo ranks build the same GPT with the local DDP and the distributed optimizer, take one Adam
step (so both moments exist), then call ``optimizer.state_dict()`` as ``save_checkpoint`` does. Each
rank reports how much its resident set grew at the peak of that call over the resident set just
before it (freed heap pages handed back with ``malloc_trim`` first; a thread samples
``/proc/self/statm`` every millisecond, since ``ru_maxrss`` remembers the step's earlier peak) and
how many bytes of tensors the returned dict holds on that rank.

``--before FILE`` also measures another implementation of ``distrib_optimizer.py`` (e.g. the one of
an older commit, written out with ``git show``), in fresh processes, so both rows come from one run:

    git show 5d50d14:megatron/core/optimizer/distrib_optimizer.py > /tmp/distopt_before.py
    python benchmarks/bench_distopt_checkpoint.py --before /tmp/distopt_before.py
"""
import argparse
import ctypes
import gc
import importlib.util
import os
import threading
import time
import sys

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core import parallel_state  # noqa: E402
from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig  # noqa: E402
from megatron.core.models import GPTModel  # noqa: E402
from megatron.core.optimizer import OptimizerConfig, get_param_groups  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from tests.distributed.spawn import run_ranks  # noqa: E402


def _tensor_bytes(value) -> int:
    if isinstance(value, torch.Tensor):
        return value.numel() * value.element_size()
    if isinstance(value, dict):
        return sum(_tensor_bytes(v) for v in value.values())
    if isinstance(value, (list, tuple)):
        return sum(_tensor_bytes(v) for v in value)
    return 0


def _rss_bytes() -> int:
    with open("/proc/self/statm") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class _PeakRss:
    """The highest resident set seen while the ``with`` block runs."""

    def __enter__(self):
        self.peak, self._stop = _rss_bytes(), threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, _rss_bytes())
            time.sleep(0.001)

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss_bytes())


def _release_free_memory() -> None:
    """Hand freed heap pages back to the OS, so that the peak growth counts only new memory."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _load_class(path):
    if path is None:
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
        return DistributedOptimizer
    spec = importlib.util.spec_from_file_location("distrib_optimizer_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DistributedOptimizer


def _worker(rank, world_size, implementation, layers, hidden, vocab, bucket_size):
    pg = parallel_state.initialize_model_parallel(1, 1)
    try:
        config = TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=8,
                                   hidden_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        model = GPTModel(config, vocab, 16, pg=pg)
        ddp = DistributedDataParallel(DistributedDataParallelConfig(use_distributed_optimizer=True,
                                                                    overlap_grad_reduce=False,
                                                                    bucket_size=bucket_size), model, pg)
        opt_config = OptimizerConfig(lr=1e-3, use_distributed_optimizer=True)
        optimizer = _load_class(implementation)(opt_config, get_param_groups([ddp]), [ddp], pg)
        tokens = torch.randint(0, vocab, (2, 17), generator=torch.Generator().manual_seed(rank))
        ddp.zero_grad_buffer()
        ddp(tokens[:, :-1], labels=tokens[:, 1:]).mean().backward()
        ddp.start_grad_sync()
        ddp.finish_grad_sync()
        optimizer.step()
        params = sum(p.numel() for p in model.parameters())
        gc.collect()
        _release_free_memory()
        before = _rss_bytes()
        with _PeakRss() as peak:
            state = optimizer.state_dict()
        return {"params": params, "peak_growth_mib": (peak.peak - before) / 2 ** 20, "before_mib": before / 2 ** 20,
                "returned_mib": _tensor_bytes(state) / 2 ** 20}
    finally:
        parallel_state.destroy_model_parallel()


def main() -> None:
    if "MALLOC_MMAP_THRESHOLD_" not in os.environ:
        # glibc keeps freed blocks of up to 32 MiB in per-thread arenas (gloo's threads have their
        # own), which makes the resident set count memory the program no longer uses. A fixed 1 MiB
        # mmap threshold returns every large block on free, so the peaks measure live tensors.
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, "MALLOC_MMAP_THRESHOLD_": "1048576"})
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a distrib_optimizer.py to measure as the baseline")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    parser.add_argument("--bucket-size", type=int, default=40_000_000, help="DDP bucket size (elements)")
    args = parser.parse_args()
    rows = [("before", args.before)] if args.before else []
    rows.append(("this tree", None))
    print(f"{'implementation':<16}{'rank':>5}{'params (M)':>12}{'peak RSS growth (MiB)':>24}"
          f"{'tensors returned (MiB)':>25}{'RSS before (MiB)':>18}")
    for label, path in rows:
        results = run_ranks(_worker, 2, path, args.layers, args.hidden, args.vocab, args.bucket_size,
                            timeout=600)
        for rank, result in enumerate(results):
            print(f"{label:<16}{rank:>5}{result['params'] / 1e6:>12.2f}{result['peak_growth_mib']:>24.1f}"
                  f"{result['returned_mib']:>25.1f}{result['before_mib']:>18.1f}")


if __name__ == "__main__":
    main()
