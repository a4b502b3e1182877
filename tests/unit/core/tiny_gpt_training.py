"""A tiny GPT trained by the real loop (``megatron.training.pretrain``) on synthetic tokens, in one
process or under torchrun; used by the compile-equality and host-synchronisation tests.

    python tiny_gpt_training.py OUT.json [--count-host-syncs] [pretrain flags...]

Writes ``{"losses": [...per iteration...], "syncs": [...per iteration...]}`` from the last rank.
Losses are recorded by wrapping the loss function (the test never parses log lines).
"""
import json
import os
import sys

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
sys.path.insert(0, ROOT)

import pretrain_gpt  # noqa: E402
from megatron import training  # noqa: E402
from megatron.core.transformer import ModelType  # noqa: E402

SEQ, VOCAB = 16, 96


def synthetic_datasets(num_samples):
    rng = np.random.RandomState(7)

    def split(n):
        return [{"text": rng.randint(0, VOCAB, size=SEQ + 1).astype(np.int64)} for _ in range(max(n, 1))]

    return split(num_samples[0]), split(num_samples[1]), split(num_samples[2])


BASE_ARGS = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", str(SEQ),
             "--max-position-embeddings", str(SEQ), "--micro-batch-size", "2", "--global-batch-size", "4",
             "--train-iters", "10", "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine",
             "--lr-warmup-iters", "2", "--weight-decay", "0.01", "--clip-grad", "1.0", "--hidden-dropout", "0",
             "--attention-dropout", "0", "--seed", "1234", "--vocab-size", str(VOCAB), "--eval-iters", "0",
             "--log-interval", "5", "--num-workers", "0", "--distributed-backend", "gloo",
             "--make-vocab-size-divisible-by", "32"]


class HostSyncCounter:
    """Counts ``item``/``cpu``/``tolist``/``__float__``/``__int__``/``__bool__``/``numpy`` calls made
    from the project's own code (torch's internals, e.g. the optimizer's CPU step counters, are not
    device synchronisations and are not counted), per training iteration."""

    NAMES = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")

    def __init__(self):
        self.per_iteration = []
        self.current = None

    def install(self):
        for name in self.NAMES:
            original = getattr(torch.Tensor, name)
            setattr(torch.Tensor, name, self._wrap(original, name))
        step = training.train_step

        def counted_step(*args, **kwargs):
            if self.current is not None:
                self.per_iteration.append(self.current)
            self.current = []
            return step(*args, **kwargs)

        training.train_step = counted_step

    def finish(self):
        if self.current is not None:
            self.per_iteration.append(self.current)
            self.current = None

    def _wrap(self, original, name):
        counter = self

        def wrapper(tensor, *args, **kwargs):
            if counter.current is not None:
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(ROOT) and "site-packages" not in caller:
                    counter.current.append(f"{name} at {os.path.relpath(caller, ROOT)}:{sys._getframe(1).f_lineno}")
            return original(tensor, *args, **kwargs)

        return wrapper


def main():
    out, flags = sys.argv[1], sys.argv[2:]
    counter = None
    if "--count-host-syncs" in flags:
        flags.remove("--count-host-syncs")
        counter = HostSyncCounter()
        counter.install()
    losses = []
    loss_func = pretrain_gpt.loss_func

    def recording_loss_func(loss_mask, output_tensor):
        loss, reported = loss_func(loss_mask, output_tensor)
        losses.append(reported["lm loss"])  # device tensors: read after training
        return loss, reported

    pretrain_gpt.loss_func = recording_loss_func
    pretrain_gpt.get_tokenizer = lambda: None  # synthetic ids: no tokenizer, no end-of-document token
    training.pretrain(synthetic_datasets, pretrain_gpt.model_provider, ModelType.encoder_or_decoder,
                      pretrain_gpt.forward_step, argv=BASE_ARGS + flags)
    if counter is not None:
        counter.finish()
    rank = torch.distributed.get_rank() if torch.distributed.is_initialized() else 0
    world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
    if rank == world - 1:
        per_micro = [float(v) for v in losses]
        num_micro = len(per_micro) // 10
        per_iteration = [sum(per_micro[i * num_micro:(i + 1) * num_micro]) / num_micro for i in range(10)]
        result = {"losses": per_iteration, "syncs": counter.per_iteration if counter else None}
        tmp = out + ".tmp"
        with open(tmp, "w") as f:
            json.dump(result, f)
        os.replace(tmp, out)


if __name__ == "__main__":
    main()
