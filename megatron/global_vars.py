"""Process-wide state of the training layer: args, tokenizer, timers, TensorBoard writer, batch calculator.

Only the training layer (``megatron/*.py``, the entry scripts, tasks) reads these; ``megatron/core``
takes everything as explicit arguments.
"""
from typing import Optional

from megatron.microbatches import NumMicroBatchesCalculator, build_num_microbatches_calculator
from megatron.timers import Timers

_GLOBAL_ARGS = None
_GLOBAL_TOKENIZER = None
_GLOBAL_TIMERS: Optional[Timers] = None
_GLOBAL_NUM_MICROBATCHES_CALCULATOR: Optional[NumMicroBatchesCalculator] = None
_GLOBAL_TENSORBOARD_WRITER = None
_TENSORBOARD_WRITER_BUILT = False


def _ensure(value, name: str):
    if value is None:
        raise RuntimeError(f"{name} is not initialized: call megatron.global_vars.set_global_variables(args) first")
    return value


def get_args():
    return _ensure(_GLOBAL_ARGS, "args")


def get_tokenizer():
    return _ensure(_GLOBAL_TOKENIZER, "tokenizer")


def get_timers() -> Timers:
    return _ensure(_GLOBAL_TIMERS, "timers")


def get_num_microbatches() -> int:
    return _ensure(_GLOBAL_NUM_MICROBATCHES_CALCULATOR, "num microbatches calculator").get()


def get_current_global_batch_size() -> int:
    return _ensure(_GLOBAL_NUM_MICROBATCHES_CALCULATOR, "num microbatches calculator").get_current_global_batch_size()


def update_num_microbatches(consumed_samples: int, consistency_check: bool = True) -> None:
    _ensure(_GLOBAL_NUM_MICROBATCHES_CALCULATOR, "num microbatches calculator").update(consumed_samples, consistency_check)


def get_tensorboard_writer():
    """The SummaryWriter on the last rank when ``--tensorboard-dir`` is set, else None.

    Built on first use, so that processes that never log (and machines without the package that
    never pass the flag) do not import TensorBoard.
    """
    global _GLOBAL_TENSORBOARD_WRITER, _TENSORBOARD_WRITER_BUILT
    if not _TENSORBOARD_WRITER_BUILT:
        _GLOBAL_TENSORBOARD_WRITER = _build_tensorboard_writer(get_args())
        _TENSORBOARD_WRITER_BUILT = True
    return _GLOBAL_TENSORBOARD_WRITER


def _build_tensorboard_writer(args):
    directory = getattr(args, "tensorboard_dir", None)
    # The last rank holds the losses under pipeline parallelism, so it is the one that logs.
    if not directory or args.rank != args.world_size - 1:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise RuntimeError(f"--tensorboard-dir {directory} needs the tensorboard package, which is not installed "
                           "(pip install tensorboard)") from None
    print(f"> setting tensorboard writer to {directory} ...", flush=True)
    return SummaryWriter(log_dir=directory, max_queue=args.tensorboard_queue_size)


def _build_tokenizer(args):
    """The tokenizer named by ``--tokenizer-type``; None when the run gives ``--vocab-size`` instead."""
    if getattr(args, "tokenizer_type", None) is None:
        if getattr(args, "padded_vocab_size", None) is None:
            raise ValueError("--tokenizer-type is required (or --vocab-size for runs without tokenizer files)")
        return None
    from megatron.tokenizer import build_tokenizer

    return build_tokenizer(args)


def set_global_variables(args, build_tokenizer: bool = True) -> None:
    """Install ``args`` and build what depends on it; the TensorBoard writer is built on first use."""
    global _GLOBAL_ARGS, _GLOBAL_TOKENIZER, _GLOBAL_TIMERS, _GLOBAL_NUM_MICROBATCHES_CALCULATOR
    global _GLOBAL_TENSORBOARD_WRITER, _TENSORBOARD_WRITER_BUILT
    _GLOBAL_ARGS = args
    _GLOBAL_NUM_MICROBATCHES_CALCULATOR = build_num_microbatches_calculator(
        args.rank, args.rampup_batch_size, args.global_batch_size, args.micro_batch_size, args.data_parallel_size)
    _GLOBAL_TOKENIZER = _build_tokenizer(args) if build_tokenizer else None
    _GLOBAL_TIMERS = Timers(args.timing_log_level)
    _GLOBAL_TENSORBOARD_WRITER = None
    _TENSORBOARD_WRITER_BUILT = False


def unset_global_variables() -> None:
    """Forget every global (tests that run several configurations in one process)."""
    global _GLOBAL_ARGS, _GLOBAL_TOKENIZER, _GLOBAL_TIMERS, _GLOBAL_NUM_MICROBATCHES_CALCULATOR
    global _GLOBAL_TENSORBOARD_WRITER, _TENSORBOARD_WRITER_BUILT
    if _GLOBAL_TENSORBOARD_WRITER is not None:
        _GLOBAL_TENSORBOARD_WRITER.close()
    _GLOBAL_ARGS = _GLOBAL_TOKENIZER = _GLOBAL_TIMERS = _GLOBAL_NUM_MICROBATCHES_CALCULATOR = None
    _GLOBAL_TENSORBOARD_WRITER = None
    _TENSORBOARD_WRITER_BUILT = False
