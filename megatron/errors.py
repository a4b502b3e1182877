"""How a run ends when something goes wrong: input errors in one line, failed collectives named.

An input error (a missing or corrupt data file, a bad flag value, a checkpoint that does not fit
the model) is the user's to fix, and its message already names the file or flag; a 30-line
``[rank0]:`` traceback only buries it. Such errors end the process with one line on stderr,
``<script>: error: <message>``, and exit code 2, under every launcher. Set ``MEGATRON_DEBUG=1`` to
get the traceback as well. Anything else (a bug) keeps its traceback.

A failed collective (a peer died or stalled past ``--distributed-timeout-minutes``) is told apart
from other errors by type (torch's ``DistError`` family) or, since gloo raises a plain
``RuntimeError``, by being raised from inside ``torch.distributed`` itself: never by words in the
message, which a data-loader "timed out" would also contain.
"""
from __future__ import annotations

import contextlib
import os
import sys
from typing import Iterator, NoReturn, Optional

DEBUG_ENV = "MEGATRON_DEBUG"


def debug_enabled() -> bool:
    return os.environ.get(DEBUG_ENV, "").strip().lower() not in ("", "0", "false", "no")


def is_input_error(exc: BaseException) -> bool:
    """Bad files, flags and checkpoints: ValueError (IndexedDatasetError, JSON and Unicode errors
    among them), OSError (missing, unreadable or unwritable paths, a full disk) and CheckpointError."""
    if isinstance(exc, (ValueError, OSError)):
        return True
    from megatron.checkpointing import CheckpointError

    return isinstance(exc, CheckpointError)


_C10D_SOURCES = ("/gloo/", "/c10d/", "ProcessGroupGloo", "ProcessGroupNCCL")


def _raised_by_torch_distributed(exc: BaseException) -> bool:
    """True when torch.distributed raised it: a frame of its Python code is on the traceback, or the
    message starts with the C++ source location of gloo or c10d (errors from the DDP reducer come
    through autograd, with no torch.distributed frame)."""
    tb = exc.__traceback__
    while tb is not None:
        if "/torch/distributed/" in tb.tb_frame.f_code.co_filename.replace("\\", "/"):
            return True
        tb = tb.tb_next
    head = str(exc).lstrip()[:300]
    return head.startswith("[") and any(source in head.split("]", 1)[0] for source in _C10D_SOURCES)


def is_distributed_error(exc: BaseException) -> bool:
    """A collective or the rendezvous store failed: torch's typed errors, or an error torch.distributed
    raised itself (gloo reports a timeout or a closed peer connection as a plain RuntimeError)."""
    import torch.distributed as dist

    dist_error = getattr(dist, "DistError", None)
    if dist_error is not None and isinstance(exc, dist_error):
        return True
    return isinstance(exc, RuntimeError) and _raised_by_torch_distributed(exc)


def _rank_prefix() -> str:
    try:
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            return f"[rank {dist.get_rank()}] "
    except Exception:  # noqa: BLE001 -- no prefix rather than a second error while reporting one
        pass
    return ""


def one_line(exc: BaseException) -> str:
    """The message on one line; an OSError without a file name gets its strerror (with the path
    when torch or the OS give one)."""
    text = str(exc).strip()
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text or type(exc).__name__


def report_input_error(exc: BaseException, prog: Optional[str] = None) -> NoReturn:
    prog = prog or os.path.basename(sys.argv[0]) or "megatron"
    sys.stdout.flush()
    print(f"{_rank_prefix()}{prog}: error: {one_line(exc)}", file=sys.stderr, flush=True)
    raise SystemExit(2)


@contextlib.contextmanager
def input_errors_in_one_line(prog: Optional[str] = None) -> Iterator[None]:
    """Wrap an entry point: input errors end the process with one line and exit code 2."""
    try:
        yield
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as exc:  # noqa: BLE001 -- classified below; bugs are re-raised untouched
        if debug_enabled() or not is_input_error(exc) or is_distributed_error(exc):
            raise
        report_input_error(exc, prog)
