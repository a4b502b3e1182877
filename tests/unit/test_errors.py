"""How runs end: input errors in one line, failed collectives recognised by where they were raised
(not by words such as "timed out" in a data loader's message), and cleanup on a collective failure."""
import errno
import os
import subprocess
import sys
import textwrap

import pytest

from megatron.checkpointing import CheckpointError
from megatron.errors import input_errors_in_one_line, is_distributed_error, is_input_error, one_line


def test_input_errors_are_value_os_and_checkpoint_errors():
    assert is_input_error(ValueError("--split 'x': bad"))
    assert is_input_error(FileNotFoundError(errno.ENOENT, "No such file or directory", "/data/x.bin"))
    assert is_input_error(CheckpointError("tracker corrupt"))
    assert not is_input_error(IndexError("list index out of range"))  # a bug keeps its traceback
    assert not is_input_error(RuntimeError("shape mismatch"))


def test_one_line_names_the_path_of_an_os_error():
    error = OSError(errno.ENOSPC, "No space left on device", "/data/out.bin")
    assert "/data/out.bin" in one_line(error) and "No space left on device" in one_line(error)
    assert one_line(ValueError("first\n  second")) == "first second"


def test_data_loader_timeout_is_not_a_dead_peer():
    try:
        raise RuntimeError("DataLoader worker (pid 4242) timed out after 30 seconds")
    except RuntimeError as error:
        assert not is_distributed_error(error)


def test_gloo_errors_are_distributed_by_origin():
    error = RuntimeError("[/__w/pytorch/pytorch/third_party/gloo/gloo/transport/tcp/unbound_buffer.cc:78] "
                         "Timed out waiting 15000ms for recv operation to complete")
    assert is_distributed_error(error)
    import torch.distributed as dist

    assert is_distributed_error(dist.DistBackendError("NCCL watchdog"))


def test_wrapper_prints_one_line_and_exits_2(capsys):
    with pytest.raises(SystemExit) as exit_info:
        with input_errors_in_one_line("tool.py"):
            raise FileNotFoundError("--vocab-file /x/vocab.json: no such file")
    assert exit_info.value.code == 2
    assert capsys.readouterr().err == "tool.py: error: --vocab-file /x/vocab.json: no such file\n"
    with pytest.raises(KeyError):  # not an input error: untouched
        with input_errors_in_one_line("tool.py"):
            raise KeyError("bug")


def test_debug_env_reraises(monkeypatch):
    monkeypatch.setenv("MEGATRON_DEBUG", "1")
    with pytest.raises(ValueError):
        with input_errors_in_one_line("tool.py"):
            raise ValueError("bad flag")


def test_collective_failure_exit_runs_cleanup(tmp_path):
    """distributed_failure leaves with os._exit (a normal exit would wait on the broken process
    group's threads) but still runs the atexit handlers first."""
    marker = tmp_path / "cleaned"
    script = textwrap.dedent(f"""
        import atexit
        atexit.register(lambda: open({str(marker)!r}, "w").write("yes"))
        from megatron.initialize import distributed_failure
        distributed_failure(RuntimeError("[gloo/x.cc:1] Connection closed by peer"), "training iteration 3")
    """)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120,
                            cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
    assert result.returncode == 1
    assert "a collective failed during training iteration 3" in result.stderr
    assert marker.read_text() == "yes"


def test_tfrecord_data_is_refused_outside_bert():
    import argparse

    from megatron.startup_checks import require_indexed_data

    require_indexed_data(argparse.Namespace(data_impl="mmap"), "pretrain_gpt.py")
    with pytest.raises(ValueError, match="only pretrain_bert.py trains on; pretrain_gpt.py reads indexed"):
        require_indexed_data(argparse.Namespace(data_impl="tfrecord"), "pretrain_gpt.py")
