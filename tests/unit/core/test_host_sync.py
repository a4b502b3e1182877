"""No host synchronisation in the training step except at --log-interval.

``.item()``/``.cpu()``/``.tolist()``/``float()``/``int()``/``bool()`` calls are counted with a patched
tensor class: in the optimizer step (``step(sync=False)``, the loop's call) and per iteration of the
real training loop (tests/unit/core/tiny_gpt_training.py, --log-interval 5, 10 iterations).
Also: the foreach (CPU) / fused (CUDA) AdamW and the multi-tensor gradient norm equal the
per-tensor optimizer and torch's clip_grad_norm_ to 1e-6.
"""
import copy
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron.core.models import GPTModel
from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer
from megatron.core.optimizer.optimizer import build_torch_optimizer
from megatron.core.transformer import TransformerConfig

ROOT = Path(__file__).resolve().parents[3]
DRIVER = Path(__file__).with_name("tiny_gpt_training.py")
SYNC_METHODS = ("item", "cpu", "tolist", "numpy", "__float__", "__int__", "__bool__")


class CountSyncs:
    def __init__(self):
        self.calls = []

    def __enter__(self):
        self.saved = {name: getattr(torch.Tensor, name) for name in SYNC_METHODS}
        for name, original in self.saved.items():
            def wrapper(tensor, *args, _name=name, _original=original, **kwargs):
                caller = sys._getframe(1).f_code.co_filename
                if caller.startswith(str(ROOT)):
                    self.calls.append(f"{_name} at {os.path.relpath(caller, ROOT)}:{sys._getframe(1).f_lineno}")
                return _original(tensor, *args, **kwargs)
            setattr(torch.Tensor, name, wrapper)
        return self

    def __exit__(self, *exc):
        for name, original in self.saved.items():
            setattr(torch.Tensor, name, original)


def tiny_gpt(dtype=torch.float32):
    torch.manual_seed(0)
    config = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0,
                               attention_dropout=0.0, params_dtype=dtype)
    return GPTModel(config, vocab_size=64, max_sequence_length=8)


def backward(model, seed):
    tokens = torch.randint(0, 64, (2, 8), generator=torch.Generator().manual_seed(seed))
    model(tokens, labels=tokens).float().mean().backward()


@pytest.mark.parametrize("bf16, log_num_zeros", [(False, False), (True, True)])
def test_optimizer_step_without_host_sync(bf16, log_num_zeros):
    dtype = torch.bfloat16 if bf16 else torch.float32
    model = tiny_gpt(dtype)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-3, clip_grad=0.5, bf16=bf16, params_dtype=dtype,
                                                       log_num_zeros_in_grad=log_num_zeros), [model])
    backward(model, 1)
    with CountSyncs() as counter:
        ok, grad_norm, num_zeros = optimizer.step(sync=False)
    assert counter.calls == [], counter.calls
    assert ok and torch.is_tensor(grad_norm) and (torch.is_tensor(num_zeros) or not log_num_zeros)
    assert float(grad_norm) > 0


def test_foreach_adamw_equals_the_per_tensor_optimizer():
    """5 steps with clipping through the project's wrapper: the foreach AdamW (CPU default) against the
    same wrapper with torch's per-tensor loop."""
    model = tiny_gpt()
    reference = copy.deepcopy(model)
    config = OptimizerConfig(lr=1e-2, weight_decay=0.1, clip_grad=0.05)
    optimizer = get_megatron_optimizer(config, [model])
    per_tensor = get_megatron_optimizer(config, [reference])
    assert optimizer.optimizer.defaults["foreach"] is True
    for group in per_tensor.optimizer.param_groups:
        group["foreach"] = False
    for step in range(5):
        for m in (model, reference):
            m.zero_grad()
            backward(m, step)
        optimizer.step()
        per_tensor.step()
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a, b, rtol=1e-6, atol=1e-7), (name, (a - b).abs().max().item())


def test_multi_tensor_grad_norm_and_clipping_equal_torch():
    model = tiny_gpt()
    reference = copy.deepcopy(model)
    optimizer = get_megatron_optimizer(OptimizerConfig(lr=0.0, clip_grad=0.05), [model])
    for m in (model, reference):
        backward(m, 3)
    want = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.05, foreach=False).item()
    optimizer._prepare_grads()
    got = optimizer._clip_by_global_norm(0.05)
    assert got.dtype == torch.float64 and abs(got.item() - want) <= 1e-6 * want
    for (name, a), b in zip(model.named_parameters(), reference.parameters()):
        assert torch.allclose(a.grad, b.grad, rtol=1e-6, atol=1e-9), (name, (a.grad - b.grad).abs().max().item())


def test_fused_adamw_is_chosen_for_cuda_parameters():
    groups = [{"params": [torch.nn.Parameter(torch.zeros(2))]}]
    config = OptimizerConfig(lr=1.0)
    assert build_torch_optimizer(config, groups).defaults["foreach"] is True
    if torch.cuda.is_available():
        cuda_groups = [{"params": [torch.nn.Parameter(torch.zeros(2, device="cuda"))]}]
        assert build_torch_optimizer(config, cuda_groups).defaults["fused"] is True


def test_training_loop_has_no_host_sync_between_log_intervals(tmp_path):
    out = tmp_path / "run.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    result = subprocess.run([sys.executable, str(DRIVER), str(out), "--count-host-syncs"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    syncs = json.loads(out.read_text())["syncs"]
    assert len(syncs) == 10
    for iteration, calls in enumerate(syncs, start=1):
        if iteration % 5:
            assert calls == [], f"iteration {iteration} synchronised with the host: {calls}"
    assert syncs[4], "nothing counted at a logged iteration: the counter is not counting"
