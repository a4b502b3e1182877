"""Which implementation of a fused op runs: the Triton kernel, the compiled reference or the reference.

* On CUDA with ``triton`` installed and the op's fusion enabled (Megatron's ``--no-*-fusion`` flags
  switch it off), the Triton kernel runs. Inside a ``torch.compile`` region the reference runs
  instead: Inductor generates its own fused kernel for it, and a hand-written kernel would only
  split the graph.
* Elsewhere (the CPU) an enabled fusion runs the ``torch.compile``d form of the reference when the
  process asked for it (``set_cpu_fusion_mode("compiled")``, done by ``--torch-compile``), else the
  eager reference. Compiling is opt-in on the CPU because Inductor needs seconds per op there, a
  cost every short CPU run (tests, tools, demos) would otherwise pay.

The Triton interpreter (``TRITON_INTERPRET=1``) runs the kernels on CPU tensors with NumPy; the
tests use ``force_triton`` for that, since ``use_triton`` only selects them for CUDA tensors.
"""
import contextlib
import functools
import importlib.util
from typing import Callable, Dict

import torch

CPU_FUSION_MODES = ("reference", "compiled")
_state = {"cpu_mode": "reference", "backend": "inductor", "force_triton": False}
_compiled: Dict[tuple, Callable] = {}


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    """``triton`` is an optional dependency (the ``fast`` extra); without it the references run."""
    return importlib.util.find_spec("triton") is not None


def set_cpu_fusion_mode(mode: str, backend: str = "inductor") -> None:
    """``reference`` (default): enabled fusions run the eager reference off CUDA; ``compiled``: its
    ``torch.compile(backend=backend)`` form."""
    if mode not in CPU_FUSION_MODES:
        raise ValueError(f"fusion mode {mode!r} is not one of {CPU_FUSION_MODES}")
    _state["cpu_mode"], _state["backend"] = mode, backend


def cpu_fusion_mode() -> str:
    return _state["cpu_mode"]


@contextlib.contextmanager
def force_triton():
    """Run the Triton kernels on any device (CPU tensors under ``TRITON_INTERPRET=1``)."""
    previous = _state["force_triton"]
    _state["force_triton"] = True
    try:
        yield
    finally:
        _state["force_triton"] = previous


def use_triton(tensor: torch.Tensor, enabled: bool) -> bool:
    if not enabled or torch.compiler.is_compiling() or not triton_available():
        return False
    return tensor.is_cuda or _state["force_triton"]


def reference_or_compiled(reference: Callable, enabled: bool) -> Callable:
    """The eager reference, or (enabled fusion, ``compiled`` mode, not already compiling) its
    compiled form, built once per (function, backend)."""
    if not enabled or _state["cpu_mode"] != "compiled" or torch.compiler.is_compiling():
        return reference
    key = (reference, _state["backend"])
    if key not in _compiled:
        _compiled[key] = torch.compile(reference, backend=_state["backend"], dynamic=False)
    return _compiled[key]
