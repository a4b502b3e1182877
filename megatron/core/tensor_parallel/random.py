"""Random-number streams for tensor parallelism, and activation recomputation that replays them.

Dropout outside tensor-parallel regions acts on activations every TP rank holds in full, so it
must draw the same mask on every rank: it uses the default generator, seeded identically.
Dropout inside a region (attention probabilities of this rank's heads) must differ per rank, or
every shard would drop the same positions: it runs inside ``tracker.fork()``, a separate stream
seeded with ``seed + 2718 + tp_rank`` as in Megatron-LM. Both work with CPU and CUDA generators.
"""
import contextlib
import zlib
from typing import Dict, Optional

import torch

MODEL_PARALLEL_RNG_TRACKER_NAME = "model-parallel-rng"
_TP_SEED_OFFSET = 2718


def _default_device_type() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


def _get_rng_state(device_type: str) -> torch.Tensor:
    if device_type == "cuda":
        return torch.cuda.get_rng_state()
    return torch.get_rng_state()


def _set_rng_state(state: torch.Tensor, device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.set_rng_state(state)
    else:
        torch.set_rng_state(state)


def _manual_seed(seed: int, device_type: str) -> None:
    if device_type == "cuda":
        torch.cuda.manual_seed(seed)
    else:
        # Only the CPU generator: torch.manual_seed would also reseed every CUDA device.
        torch.default_generator.manual_seed(seed)


class RNGStatesTracker:
    """Named generator states that can be swapped in and out of the default generator."""

    def __init__(self, device_type: Optional[str] = None):
        self.device_type = device_type or _default_device_type()
        self.states_: Dict[str, torch.Tensor] = {}
        self.seeds_ = set()
        self._active = set()

    def reset(self, device_type: Optional[str] = None) -> None:
        if device_type is not None:
            self.device_type = device_type
        self.states_ = {}
        self.seeds_ = set()

    def get_states(self) -> Dict[str, torch.Tensor]:
        """A copy of every tracked state (saved as ``rng_tracker_states`` in checkpoints)."""
        return {name: state.clone() for name, state in self.states_.items()}

    def set_states(self, states: Dict[str, torch.Tensor]) -> None:
        self.states_ = {name: state.clone() for name, state in states.items()}

    def add(self, name: str, seed: int) -> None:
        if seed in self.seeds_:
            raise ValueError(f"RNG seed {seed} is already tracked")
        if name in self.states_:
            raise ValueError(f"RNG state {name!r} is already tracked")
        self.seeds_.add(seed)
        original = _get_rng_state(self.device_type)
        _manual_seed(seed, self.device_type)
        self.states_[name] = _get_rng_state(self.device_type)
        _set_rng_state(original, self.device_type)

    @contextlib.contextmanager
    def fork(self, name: str = MODEL_PARALLEL_RNG_TRACKER_NAME):
        """Run the body on the tracked stream ``name``, then put the default stream back."""
        if name not in self.states_:
            raise RuntimeError(f"RNG state {name!r} is not tracked; call model_parallel_manual_seed first")
        if name in self._active:
            # Already on this stream (e.g. attention dropout inside a sequence-parallel block):
            # swapping again would replay the stream's earlier numbers.
            yield
            return
        self._active.add(name)
        original = _get_rng_state(self.device_type)
        _set_rng_state(self.states_[name], self.device_type)
        try:
            yield
        finally:
            self.states_[name] = _get_rng_state(self.device_type)
            _set_rng_state(original, self.device_type)
            self._active.discard(name)


_RNG_TRACKER = RNGStatesTracker()


def get_rng_tracker() -> RNGStatesTracker:
    return _RNG_TRACKER


# Megatron-LM's name, kept so code written against it reads the same.
get_cuda_rng_tracker = get_rng_tracker


@contextlib.contextmanager
def init_rng_scope(init_seed: Optional[int], *component):
    """Draw a component's initial weights from a generator of its own.

    With ``init_seed`` None this does nothing (weights come from the default generator in
    construction order, as in Megatron-LM). Otherwise the CPU default generator is seeded from
    (init_seed, component) inside the block and restored after it, so the component's weights
    depend on its identity alone, not on which other components this rank built before it.
    """
    if init_seed is None:
        yield
        return
    key = zlib.crc32(repr(component).encode("utf-8"))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed((int(init_seed) * 1_000_003 + key) % (2 ** 63))
        yield


def model_parallel_manual_seed(seed: int, tp_rank: int = 0, device_type: Optional[str] = None) -> None:
    """Seed the default generator with ``seed`` and the tensor-parallel stream with ``seed + 2718 + tp_rank``."""
    tracker = get_rng_tracker()
    tracker.reset(device_type)
    _manual_seed(seed, tracker.device_type)
    tracker.add(MODEL_PARALLEL_RNG_TRACKER_NAME, seed + _TP_SEED_OFFSET + tp_rank)


def _capture_rng():
    cuda = torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    tracker = get_rng_tracker()
    # Which streams are forked matters too: a recomputed forward must take its numbers from the
    # same streams as the original one did.
    return torch.get_rng_state(), cuda, tracker.get_states(), set(tracker._active)


def _restore_rng(states) -> None:
    cpu, cuda, tracker_states, active = states
    torch.set_rng_state(cpu)
    if cuda is not None:
        torch.cuda.set_rng_state(cuda)
    tracker = get_rng_tracker()
    tracker.set_states(tracker_states)
    tracker._active = set(active)


class CheckpointFunction(torch.autograd.Function):
    """Forward without keeping activations; backward re-runs forward with the same random streams."""

    @staticmethod
    def forward(ctx, run_function, *args):
        ctx.run_function = run_function
        ctx.rng_states = _capture_rng()
        with torch.no_grad():
            outputs = run_function(*args)
        ctx.tensor_indices = [i for i, a in enumerate(args) if torch.is_tensor(a)]
        ctx.non_tensor_args = [None if torch.is_tensor(a) else a for a in args]
        ctx.save_for_backward(*[a for a in args if torch.is_tensor(a)])
        return outputs

    @staticmethod
    def backward(ctx, *grads):
        if not torch.autograd._is_checkpoint_valid():
            raise RuntimeError("checkpoint() recomputation does not work with torch.autograd.grad; use .backward()")
        args = list(ctx.non_tensor_args)
        for index, saved in zip(ctx.tensor_indices, ctx.saved_tensors):
            detached = saved.detach()
            detached.requires_grad_(saved.requires_grad)
            args[index] = detached
        current = _capture_rng()
        _restore_rng(ctx.rng_states)
        try:
            with torch.enable_grad():
                outputs = ctx.run_function(*args)
        finally:
            _restore_rng(current)
        if torch.is_tensor(outputs):
            outputs = (outputs,)
        pairs = [(o, g) for o, g in zip(outputs, grads) if torch.is_tensor(o) and o.requires_grad]
        if pairs:
            torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        input_grads = tuple(a.grad if torch.is_tensor(a) else None for a in args)
        return (None,) + input_grads


def checkpoint(function, *args):
    """Recompute ``function(*args)`` during backward instead of storing its activations."""
    return CheckpointFunction.apply(function, *args)
