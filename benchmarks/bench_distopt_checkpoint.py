"""Peak memory of a distributed-optimizer checkpoint save (``state_dict()``) at data-parallel size 2.

Two gloo ranks build the same GPT with the local DDP and the distributed optimizer, take one Adam
step (so both moments exist), then call ``optimizer.state_dict()`` as ``save_checkpoint`` does. Each
rank reports how much its peak resident set grew during that call (``ru_maxrss`` after minus before;
the step before has already set the peak of everything else) and how many bytes of tensors the
returned dict holds on that rank.

``--before FILE`` also measures another implementation of ``distrib_optimizer.py`` (e.g. the one of
an older commit, written out with ``git show``), in fresh processes, so both rows come from one run:

    git show 5d50d14:megatron/core/optimizer/distrib_optimizer.py > /tmp/distopt_before.py
    python benchmarks/bench_distopt_checkpoint.py --before /tmp/distopt_before.py
"""
import argparse
import gc
import importlib.util
import os
import resource
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


def _load_class(path):
    if path is None:
        from megatron.core.optimizer.distrib_optimizer import DistributedOptimizer
        return DistributedOptimizer
    spec = importlib.util.spec_from_file_location("distrib_optimizer_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DistributedOptimizer


def _worker(rank, world_size, implementation, layers, hidden, vocab):
    pg = parallel_state.initialize_model_parallel(1, 1)
    try:
        config = TransformerConfig(num_layers=layers, hidden_size=hidden, num_attention_heads=8,
                                   hidden_dropout=0.0, attention_dropout=0.0)
        torch.manual_seed(0)
        model = GPTModel(config, vocab, 16, pg=pg)
        ddp = DistributedDataParallel(DistributedDataParallelConfig(use_distributed_optimizer=True,
                                                                    overlap_grad_reduce=False), model, pg)
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
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        state = optimizer.state_dict()
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return {"params": params, "peak_growth_mib": (after - before) / 1024,
                "returned_mib": _tensor_bytes(state) / 2 ** 20}
    finally:
        parallel_state.destroy_model_parallel()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", help="a distrib_optimizer.py to measure as the baseline")
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--hidden", type=int, default=512)
    parser.add_argument("--vocab", type=int, default=32768)
    args = parser.parse_args()
    rows = [("before", args.before)] if args.before else []
    rows.append(("this tree", None))
    print(f"{'implementation':<16}{'rank':>5}{'params (M)':>12}{'peak RSS growth (MiB)':>24}"
          f"{'tensors returned (MiB)':>25}")
    for label, path in rows:
        results = run_ranks(_worker, 2, path, args.layers, args.hidden, args.vocab, timeout=600)
        for rank, result in enumerate(results):
            print(f"{label:<16}{rank:>5}{result['params'] / 1e6:>12.2f}{result['peak_growth_mib']:>24.1f}"
                  f"{result['returned_mib']:>25.1f}")


if __name__ == "__main__":
    main()
