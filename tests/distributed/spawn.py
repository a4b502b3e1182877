"""The one helper that runs a function on N gloo ranks on the CPU.

``run_ranks(fn, world_size, *args)`` starts ``world_size`` processes, joins them
into one gloo process group on a free local port, calls
``fn(rank, world_size, *args)`` in each and returns the per-rank results (which
must pickle). If any rank raises, the others are killed and a ``RuntimeError``
carrying that rank's traceback is raised in the caller; if a rank has not
answered within ``timeout`` seconds every rank is killed and ``TimeoutError``
names the silent ranks. Keep ``fn`` at module level so it pickles under
``spawn``.

Starting a process that imports torch costs about 1.5 s, so the default start
method is ``fork`` (the parent already has torch loaded); children use one
intra-op thread, which keeps OpenMP from deadlocking after the fork and keeps
several ranks from fighting over two cores. Set ``MEGATRON_TEST_START_METHOD=spawn``
to use fresh interpreters instead.
"""
import os
import queue as queue_module
import socket
import time
import traceback
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def find_free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _child(rank, world_size, port, timeout, fn, args, kwargs, results):
    try:
        torch.set_num_threads(1)
        os.environ["MASTER_ADDR"] = "127.0.0.1"
        os.environ["MASTER_PORT"] = str(port)
        dist.init_process_group(
            "gloo", rank=rank, world_size=world_size, timeout=timedelta(seconds=timeout)
        )
        value = fn(rank, world_size, *args, **kwargs)
        results.put(("ok", rank, value))
    except BaseException:  # noqa: BLE001 - every failure must reach the parent
        results.put(("error", rank, traceback.format_exc()))
    finally:
        if dist.is_initialized():
            try:
                dist.destroy_process_group()
            except Exception:  # noqa: BLE001 - peers may already be gone
                pass


def run_ranks(fn, world_size, *args, timeout=180.0, start_method=None, **kwargs):
    """Run ``fn(rank, world_size, *args, **kwargs)`` on ``world_size`` gloo ranks; return results by rank."""
    method = start_method or os.environ.get("MEGATRON_TEST_START_METHOD", "fork")
    ctx = mp.get_context(method)
    results = ctx.Queue()
    port = find_free_port()
    procs = [
        ctx.Process(
            target=_child,
            args=(rank, world_size, port, timeout, fn, args, kwargs, results),
            daemon=True,
        )
        for rank in range(world_size)
    ]
    for proc in procs:
        proc.start()
    deadline = time.monotonic() + timeout
    values = {}
    errors = {}
    try:
        while len(values) + len(errors) < world_size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                silent = sorted(set(range(world_size)) - set(values) - set(errors))
                raise TimeoutError(
                    f"ranks {silent} of {world_size} did not finish {fn.__name__} within {timeout:.0f}s"
                )
            try:
                status, rank, payload = results.get(timeout=min(remaining, 1.0))
            except queue_module.Empty:
                dead = [r for r, p in enumerate(procs)
                        if p.exitcode is not None and r not in values and r not in errors]
                if dead:
                    # A rank that died without reporting (segfault, os._exit) would otherwise
                    # leave its peers blocked in a collective until the timeout.
                    time.sleep(0.5)
                    if results.empty():
                        raise RuntimeError(
                            f"rank {dead[0]} exited with code {procs[dead[0]].exitcode} "
                            f"without reporting while running {fn.__name__}"
                        )
                continue
            if status == "ok":
                values[rank] = payload
            else:
                errors[rank] = payload
                break  # peers are likely blocked on the failed rank; stop them now
        if errors:
            rank = min(errors)
            raise RuntimeError(f"rank {rank} of {world_size} failed in {fn.__name__}:\n{errors[rank]}")
    finally:
        for proc in procs:
            if proc.is_alive():
                proc.kill()
        for proc in procs:
            proc.join(timeout=5)
        results.close()
    return [values[rank] for rank in range(world_size)]
