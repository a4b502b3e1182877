"""Measure the pipeline bubble of the 1F1B and interleaved schedules against theory.

Each stage is a sleep-instrumented model: a micro-batch's forward through a stage sleeps
``t_f`` and its backward ``t_b`` (split evenly over the ``v`` model chunks of an interleaved
stage), so the schedule's structure, not arithmetic, decides the step time. With ``p`` stages
and ``m`` micro-batches the ideal (bubble-free) step takes ``m * (t_f + t_b)`` on every stage;
the idle fraction ``(step time - busy time) / busy time`` should be ``(p - 1) / m`` for 1F1B
and ``(p - 1) / (v * m)`` for the interleaved schedule.

Communication latency and Python bookkeeping are not in the theory; on a busy machine they add
about a millisecond per exchange, so stages sleep long (300/600 ms by default) to keep them small.
The "net" columns also subtract the step time of the same schedule with zero-length stages.

Run on CPU with gloo (sleeps use no CPU, so this works on a 2-core machine):

    python benchmarks/bench_pipeline_bubble.py            # default grid
    python benchmarks/bench_pipeline_bubble.py --stages 4 --microbatches 8 16 --virtual 1 2
"""
import argparse
import os
import statistics
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core import parallel_state  # noqa: E402
from megatron.core.pipeline_parallel import get_forward_backward_func  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402
from tests.distributed.spawn import run_ranks  # noqa: E402

HIDDEN, SEQ, MBS = 8, 4, 1


def _busy(seconds, clock):
    # Count the time actually slept: sleep overshoots by up to a millisecond, which is work, not bubble.
    start = time.perf_counter()
    time.sleep(seconds)
    clock["busy"] += time.perf_counter() - start


class _Sleep(torch.autograd.Function):
    """Identity that sleeps in forward and backward and records the time it was busy."""

    @staticmethod
    def forward(ctx, x, forward_s, backward_s, clock):
        ctx.backward_s, ctx.clock = backward_s, clock
        _busy(forward_s, clock)
        return x.clone()

    @staticmethod
    def backward(ctx, grad):
        _busy(ctx.backward_s, ctx.clock)
        return grad, None, None, None


class SleepStage(torch.nn.Module):
    """One (virtual) stage: a tiny linear layer whose forward and backward take fixed time."""

    def __init__(self, forward_s, backward_s, pre_process, post_process, clock):
        super().__init__()
        self.weight = torch.nn.Parameter(torch.eye(HIDDEN))
        self.forward_s, self.backward_s = forward_s, backward_s
        self.pre_process, self.post_process = pre_process, post_process
        self.clock = clock
        self.input_tensor = None

    def set_input_tensor(self, input_tensor):
        self.input_tensor = input_tensor[0] if isinstance(input_tensor, list) else input_tensor

    def forward(self, batch):
        x = batch if self.pre_process else self.input_tensor
        x = _Sleep.apply(x @ self.weight, self.forward_s, self.backward_s, self.clock)
        return x.pow(2).mean() if self.post_process else x


def _worker(rank, world_size, microbatches, virtual, forward_s, backward_s, repeats):
    torch.set_num_threads(1)
    pg = parallel_state.initialize_model_parallel(1, world_size, virtual if virtual > 1 else None)
    try:
        clock = {"busy": 0.0}
        chunks = []
        for index in range(virtual):
            if virtual > 1:
                pg.virtual_pipeline_model_parallel_rank = index
            chunks.append(SleepStage(forward_s / virtual, backward_s / virtual, pg.is_pipeline_first_stage(),
                                     pg.is_pipeline_last_stage(), clock))
        pg.virtual_pipeline_model_parallel_rank = 0 if virtual > 1 else None
        config = TransformerConfig(num_layers=world_size * virtual, hidden_size=HIDDEN, num_attention_heads=1)
        schedule = get_forward_backward_func(pg)

        def forward_step(data_iterator, model):
            return model(next(data_iterator)), lambda out: (out, {"loss": out.detach()})

        samples = []
        for _ in range(repeats + 1):
            batches = [torch.randn(SEQ, MBS, HIDDEN) for _ in range(microbatches)]
            iterators = [iter(batches) for _ in chunks]
            clock["busy"] = 0.0
            torch.distributed.barrier()
            start = time.perf_counter()
            schedule(forward_step_func=forward_step, data_iterator=iterators if virtual > 1 else iterators[0],
                     model=chunks if virtual > 1 else chunks[0], num_microbatches=microbatches, seq_length=SEQ,
                     micro_batch_size=MBS, config=config, pg=pg)
            torch.distributed.barrier()
            samples.append((time.perf_counter() - start, clock["busy"]))
        return samples[1:]  # the first step warms up gloo's connections
    finally:
        parallel_state.destroy_model_parallel()


def measure(stages, microbatches, virtual, forward_ms, backward_ms, repeats):
    """Median (step seconds, busy seconds) of one schedule; every rank ends the step at the same barrier."""
    per_rank = run_ranks(_worker, stages, microbatches, virtual, forward_ms / 1000, backward_ms / 1000, repeats,
                         timeout=600)
    steps = [statistics.median(s[0] for s in samples) for samples in per_rank]
    busy = [statistics.median(s[1] for s in samples) for samples in per_rank]
    return statistics.mean(steps), statistics.mean(busy)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--stages", type=int, nargs="+", default=[2, 4])
    parser.add_argument("--microbatches", type=int, nargs="+", default=[8])
    parser.add_argument("--virtual", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--forward-ms", type=float, default=300.0)
    parser.add_argument("--backward-ms", type=float, default=600.0)
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args()
    print(f"forward {args.forward_ms} ms, backward {args.backward_ms} ms per micro-batch per stage; "
          f"median of {args.repeats} steps")
    print("idle = (step - busy) / busy; net idle also subtracts the same schedule's step time with zero-length "
          "stages (gloo latency and Python bookkeeping, which the theory leaves out)")
    print(f"{'schedule':<13}{'p':>3}{'v':>3}{'m':>4}{'theory':>9}{'idle':>9}{'err':>8}{'net idle':>10}{'net err':>9}")
    worst = worst_net = 0.0
    for stages in args.stages:
        for virtual in args.virtual:
            for microbatches in args.microbatches:
                if virtual > 1 and microbatches % stages != 0:
                    continue
                step, busy = measure(stages, microbatches, virtual, args.forward_ms, args.backward_ms, args.repeats)
                overhead, _ = measure(stages, microbatches, virtual, 0.0, 0.0, args.repeats)
                idle = (step - busy) / busy
                net_idle = (step - busy - overhead) / busy
                theory = (stages - 1) / (virtual * microbatches)
                err, net_err = abs(idle - theory) / theory, abs(net_idle - theory) / theory
                worst, worst_net = max(worst, err), max(worst_net, net_err)
                name = "1F1B" if virtual == 1 else "interleaved"
                print(f"{name:<13}{stages:>3}{virtual:>3}{microbatches:>4}{theory:>9.4f}{idle:>9.4f}{err:>8.1%}"
                      f"{net_idle:>10.4f}{net_err:>9.1%}")
    for what, value in (("idle", worst), ("net idle", worst_net)):
        print(f"worst relative error of the {what} fraction: {value:.1%} ({'within' if value <= 0.10 else 'outside'} 10%)")


if __name__ == "__main__":
    main()
