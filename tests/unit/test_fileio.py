"""Atomic writes: the final name holds the old content or the complete new one, never a part."""
import os

import pytest

from megatron.core.fileio import atomic_open, atomic_write_text


def test_success_publishes_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "out.txt"
    atomic_write_text(str(path), "hello\n")
    assert path.read_text() == "hello\n"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_failure_keeps_the_previous_file(tmp_path):
    path = tmp_path / "out.bin"
    path.write_bytes(b"old")
    with pytest.raises(RuntimeError):
        with atomic_open(str(path), "wb") as f:
            f.write(b"partial new content")
            raise RuntimeError("interrupted")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_read_modes_are_refused(tmp_path):
    with pytest.raises(ValueError, match="not a write mode"):
        with atomic_open(str(tmp_path / "x"), "r"):
            pass
