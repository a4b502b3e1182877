"""Killing a save at any moment leaves the previous checkpoint loadable and "latest".

A forked child saves a first checkpoint cleanly, then starts a second save in which every file
system step (half of a file written, each rename) first reports to the parent and, when it is the
step under test, waits to be killed. The parent SIGKILLs it there and loads: it must get either
the old checkpoint (iteration and weights) or, once the tracker has been replaced, the new one.
"""
import multiprocessing
import os
import signal
import time

import pytest
import torch

from megatron.checkpointing import load_checkpoint, save_checkpoint
from tests.unit.test_checkpointing import assert_same_weights, gpt, make_args


def _saving_child(tmp_path, first_iteration, second_iteration, kill_at, conn):
    torch.set_num_threads(1)
    args = make_args(tmp_path)
    save_checkpoint(first_iteration, [gpt(0)], None, None, args)
    counter = [0]
    real_save, real_replace, real_rename = torch.save, os.replace, os.rename

    def step(description):
        index = counter[0]
        counter[0] += 1
        conn.send(("step", index, description))
        if index == kill_at:
            time.sleep(600)  # the parent kills us here

    def save(obj, f, *a, **k):
        if counter[0] == kill_at:
            # A file that has received only part of its bytes when the kill lands.
            f.write(b"PK\x03\x04 partial")
            f.flush()
        step(f"writing {getattr(f, 'name', f)}")
        real_save(obj, f, *a, **k)

    def replace(src, dst):
        step(f"replace {src} -> {dst}")
        real_replace(src, dst)

    def rename(src, dst):
        step(f"rename {src} -> {dst}")
        real_rename(src, dst)

    torch.save, os.replace, os.rename = save, replace, rename
    save_checkpoint(second_iteration, [gpt(1)], None, None, args)
    conn.send(("done", None, None))
    time.sleep(600)


def _kill_at(tmp_path, first, second, kill_at):
    """Run the child until step ``kill_at`` and SIGKILL it; returns the steps seen and whether it finished."""
    ctx = multiprocessing.get_context("fork")
    parent_conn, child_conn = ctx.Pipe()
    child = ctx.Process(target=_saving_child, args=(tmp_path, first, second, kill_at, child_conn), daemon=True)
    child.start()
    seen, finished = [], False
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if not parent_conn.poll(0.05):
                if not child.is_alive():
                    raise AssertionError(f"the saving child died with exit code {child.exitcode}")
                continue
            kind, index, description = parent_conn.recv()
            if kind == "done":
                finished = True
                break
            seen.append(description)
            if index == kill_at:
                break
        else:
            raise AssertionError("the saving child did not reach the step under test")
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.join(10)
    return seen, finished


@pytest.mark.parametrize("first,second", [(1, 2), (1, 1)], ids=["new-iteration", "same-iteration"])
def test_kill_at_every_step_of_a_save_leaves_a_loadable_latest(tmp_path, first, second):
    outcomes = []
    for kill_at in range(20):
        run_dir = tmp_path / f"kill{kill_at}"
        run_dir.mkdir()
        seen, finished = _kill_at(run_dir, first, second, kill_at)
        where = seen[-1] if seen else "before the first step"
        model = gpt(2)
        iteration = load_checkpoint([model], None, None, make_args(run_dir))
        tracker = (run_dir / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip()
        if iteration == first and tracker == str(first):
            try:
                assert_same_weights(gpt(0), model)
                outcomes.append("old")
            except AssertionError:
                # Only a re-save of the same iteration may already show the new weights, once the
                # new directory has been renamed into place.
                assert first == second, f"kill at step {kill_at} ({where}): iteration {first} has new weights"
                assert_same_weights(gpt(1), model)
                outcomes.append("new")
        else:
            assert iteration == second, f"kill at step {kill_at} ({where}): loaded iteration {iteration}"
            assert_same_weights(gpt(1), model)
            outcomes.append("new")
        if finished:
            break
    else:
        raise AssertionError("the save never finished within 20 steps")
    # Killed before publishing it keeps the old checkpoint; the completed save shows the new one.
    assert outcomes[0] == "old" and outcomes[-1] == "new", outcomes
    assert len(outcomes) >= 4, outcomes
