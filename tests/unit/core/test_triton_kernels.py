"""Triton kernels equal their PyTorch references (forward and backward), run on the CPU under
Triton's interpreter. Each kernel family runs in a fresh process (see triton_interpreter_checks.py:
``TRITON_INTERPRET`` must be set before triton is imported, which must not leak into other tests)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from megatron.core.fusions import triton_available

CHECKS = Path(__file__).with_name("triton_interpreter_checks.py")
ROOT = Path(__file__).resolve().parents[3]

pytestmark = pytest.mark.skipif(not triton_available(), reason="triton is not installed (the 'fast' extra)")


@pytest.fixture(scope="module")
def interpreter_run():
    """All checks in one fresh process (one torch/triton start-up), each reported on its own line."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    return subprocess.run([sys.executable, str(CHECKS)], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


@pytest.mark.parametrize("kernel", ["layer_norm", "bias_gelu", "bias_dropout_add", "masked_softmax",
                                    "cross_entropy"])
def test_kernel_matches_reference_under_interpreter(interpreter_run, kernel):
    lines = interpreter_run.stdout.splitlines()
    assert f"ok {kernel}" in lines, "\n".join(line for line in lines if kernel in line) + interpreter_run.stderr[-3000:]


def test_references_run_without_cuda():
    """On CPU tensors the dispatch picks the reference (no kernel launch, no interpreter needed)."""
    import torch

    from megatron.core.fusions import fused, ops

    x = torch.randn(3, 2, 8)
    assert torch.equal(fused.bias_gelu(None, x), ops.gelu_tanh(x))
    w, b = torch.randn(8), torch.randn(8)
    assert torch.equal(fused.layer_norm(x, w, b, 1e-5), ops.layer_norm(x, w, b, 1e-5))


def test_selection_follows_device_flags_and_availability(monkeypatch):
    import torch

    from megatron.core.fusions import select

    x = torch.zeros(2)
    assert not select.use_triton(x, enabled=True), "CPU tensors run the reference"
    with select.force_triton():
        assert select.use_triton(x, enabled=True)
        assert not select.use_triton(x, enabled=False), "a --no-*-fusion flag switches the kernel off"
        # Without triton installed (the 'fast' extra) the references run.
        monkeypatch.setattr(select, "triton_available", lambda: False)
        assert not select.use_triton(x, enabled=True)


def test_kernels_compile_for_a_gpu_without_one():
    """Ahead-of-time compilation to sm_90 PTX (triton_ptx_checks.py): the compiler's type rules, which
    the interpreter does not apply."""
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("TRITON_INTERPRET", None)
    result = subprocess.run([sys.executable, str(CHECKS.with_name("triton_ptx_checks.py"))], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-3000:]
    assert result.stdout.count("ok ") == 17
