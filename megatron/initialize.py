"""Start-up: arguments, torch.distributed, model-parallel groups and seeds.

Launchers: ``torchrun`` (RANK / WORLD_SIZE / LOCAL_RANK / MASTER_ADDR / MASTER_PORT in the
environment), the legacy ``python -m torch.distributed.launch`` (``--local_rank`` on the command
line) or a plain ``python pretrain_gpt.py ...`` (one process; a free local port is chosen).
"""
import atexit
import datetime
import os
import random
import socket
import sys
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.tensor_parallel.random import model_parallel_manual_seed

_DEVICE: Optional[torch.device] = None


def get_device() -> torch.device:
    """The device chosen at initialisation (cuda:LOCAL_RANK on a GPU machine, else the CPU)."""
    return _DEVICE if _DEVICE is not None else torch.device("cpu")


def initialize_megatron(extra_args_provider=None, args_defaults={}, ignore_unknown_args=False, argv=None):
    """Parse and validate the flags, set the global variables, initialise torch.distributed,
    the model-parallel groups and the seeds; returns ``args``.

    With ``--dry-run`` only the arguments are parsed: the caller prints the plan and no process
    group is created.
    """
    from megatron.arguments import parse_args
    from megatron.global_vars import set_global_variables

    try:
        args = parse_args(extra_args_provider, args_defaults, ignore_unknown_args, argv=argv)
    except ValueError as exc:
        # A bad flag is the user's to fix: the one-line reason, as argparse reports its own errors.
        print(f"{os.path.basename(sys.argv[0]) or 'megatron'}: error: {exc}", file=sys.stderr, flush=True)
        raise SystemExit(2) from None
    if getattr(args, "dry_run", False):
        return args
    set_global_variables(args)
    initialize_distributed(args)
    set_random_seed(args.seed)
    return args


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _choose_backend(args) -> str:
    backend = getattr(args, "distributed_backend", None) or ("nccl" if torch.cuda.is_available() else "gloo")
    if backend == "nccl" and not torch.cuda.is_available():
        # Megatron's default backend is nccl; on a CPU-only machine gloo is the only one that works.
        if args.rank == 0:
            print("> no CUDA device: using the gloo backend instead of nccl", flush=True)
        backend = "gloo"
    return backend


def fp16_on_cpu_notice() -> str:
    # CPUs have no fast float16 matrix kernels: measured in benchmarks/RESULTS.md (fp16 on a CPU).
    return ("notice: --fp16 on a CPU runs several times slower than fp32 (CPUs have no fast float16 matrix "
            "kernels; see benchmarks/RESULTS.md); on a CPU use --bf16 or fp32 (no precision flag), keep --fp16 for GPUs")


def initialize_distributed(args) -> parallel_state.ProcessGroups:
    """init_process_group (with ``--distributed-timeout-minutes``), the device, and the groups."""
    global _DEVICE
    local_rank = int(os.environ.get("LOCAL_RANK", getattr(args, "local_rank", None) or 0))
    if torch.cuda.is_available():
        _DEVICE = torch.device("cuda", local_rank % torch.cuda.device_count())
        torch.cuda.set_device(_DEVICE)
    else:
        _DEVICE = torch.device("cpu")
    if args.rank == 0 and _DEVICE.type == "cpu" and getattr(args, "fp16", False):
        print(fp16_on_cpu_notice(), flush=True)
    if not dist.is_initialized():
        if "MASTER_ADDR" not in os.environ:
            if args.world_size > 1:
                raise RuntimeError(f"world size {args.world_size} but MASTER_ADDR is not set: launch with torchrun "
                                   "or python -m torch.distributed.launch")
            os.environ["MASTER_ADDR"] = "127.0.0.1"
            os.environ["MASTER_PORT"] = str(_free_port())
        backend = _choose_backend(args)
        timeout = datetime.timedelta(minutes=float(args.distributed_timeout_minutes))
        if args.rank == 0:
            print(f"> initializing torch distributed ({backend}, world size {args.world_size}, "
                  f"timeout {timeout.total_seconds():.0f} s) ...", flush=True)
        dist.init_process_group(backend=backend, world_size=args.world_size, rank=args.rank, timeout=timeout)
        atexit.register(_destroy_process_group)
    if parallel_state.model_parallel_is_initialized():
        return parallel_state.get_process_groups()
    pg = parallel_state.initialize_model_parallel(
        args.tensor_model_parallel_size, args.pipeline_model_parallel_size,
        args.virtual_pipeline_model_parallel_size, args.pipeline_model_parallel_split_rank,
        timeout=datetime.timedelta(minutes=float(args.distributed_timeout_minutes)))
    if args.rank == 0:
        print(f"> initialized tensor model parallel with size {pg.tensor_model_parallel_size}", flush=True)
        print(f"> initialized pipeline model parallel with size {pg.pipeline_model_parallel_size}", flush=True)
        print(f"> initialized data parallel with size {pg.data_parallel_size}", flush=True)
    return pg


def _destroy_process_group() -> None:
    """Tear the process group down before interpreter shutdown: left to the garbage collector, gloo's
    threads can be destroyed while still joinable, and the process aborts ("terminate called without
    an active exception") after its work is done."""
    if dist.is_initialized():
        try:
            dist.destroy_process_group()
        except Exception:  # a broken group at exit: nothing left to release cleanly
            pass


def set_random_seed(seed: int) -> None:
    """The same seed on every rank for Python, NumPy and torch, so that weights drawn in full on
    every rank (and sliced) agree with a single process; the tensor-parallel tracker adds the TP
    rank for dropout inside tensor-parallel regions."""
    if seed is None or seed < 0:
        raise ValueError(f"--seed must be a non-negative integer, got {seed}")
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    tp_rank = parallel_state.get_tensor_model_parallel_rank() if parallel_state.model_parallel_is_initialized() else 0
    model_parallel_manual_seed(seed, tp_rank, get_device().type)


def distributed_failure(exc: BaseException, where: str) -> None:
    """A collective failed (a peer died or the timeout passed): name this rank and the step, then
    leave at once. Normal interpreter exit would wait on the broken process group's threads."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    first_line = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    print(f"[rank {rank}] ERROR: a collective failed during {where}: {type(exc).__name__}: {first_line} "
          "(another rank has probably died; see its log)", file=sys.stderr, flush=True)
    _clean_up_without_the_process_group()
    os._exit(1)


def _clean_up_without_the_process_group() -> None:
    """What a normal exit does (TensorBoard events flushed, atexit handlers run, log handlers
    closed), except tearing down the broken process group, which would wait on its threads."""
    import logging

    atexit.unregister(_destroy_process_group)
    try:
        from megatron import global_vars

        writer = getattr(global_vars, "_GLOBAL_TENSORBOARD_WRITER", None)
        if writer is not None:
            writer.close()
    except Exception:  # noqa: BLE001 -- best effort on the way out; the failure is already reported
        pass
    try:
        atexit._run_exitfuncs()
    except Exception:  # noqa: BLE001
        pass
    logging.shutdown()
    sys.stdout.flush()
    sys.stderr.flush()
