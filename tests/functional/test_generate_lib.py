"""Shared helpers for the generation functional tests (no tests here): tiny GPT checkpoints trained
once per process at TP1 and TP2, and the model flags that load them."""
import os
import tempfile
from typing import Dict, List

from test_training_lib import demo_data, gpt_args, run_script

_CHECKPOINTS: Dict[int, str] = {}


def gpt_checkpoint(tp: int = 1) -> str:
    """A GPT checkpoint after 3 iterations at tensor-parallel size ``tp``; every layout holds the same
    weights (layout-independent initialisation, dropout off), so their generations must agree.
    Few iterations keep greedy continuations varied rather than one repeated frequent token."""
    if tp not in _CHECKPOINTS:
        save = os.path.join(tempfile.mkdtemp(prefix=f"megatron_gen_ckpt_tp{tp}_"), "ckpt")
        args = gpt_args(demo_data(), "--save", save, "--save-interval", "3", "--split", "90,8,2",
                        "--num-workers", "0", "--tensor-model-parallel-size", str(tp),
                        train_iters=3)
        run_script("pretrain_gpt.py", args, nproc=tp, timeout=300)
        _CHECKPOINTS[tp] = save
    return _CHECKPOINTS[tp]


def model_args(tp: int = 1) -> List[str]:
    """The flags that rebuild the tiny model of ``gpt_checkpoint(tp)`` and load it."""
    data = demo_data()
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--vocab-file", f"{data}/gpt2/vocab.json",
            "--merge-file", f"{data}/gpt2/merges.txt", "--load", gpt_checkpoint(tp), "--micro-batch-size", "2",
            "--tensor-model-parallel-size", str(tp), "--seed", "1234", "--distributed-backend", "gloo"]
