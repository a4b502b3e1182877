"""Atomic file writes: a file appears under its final name complete, or not at all.

Write to a temporary name in the same directory (so the rename cannot cross file
systems), flush and fsync, then rename over the final name. On any error the temporary
file is removed and the final name is left as it was. No torch import: tools use this.
"""
import contextlib
import itertools
import os
import threading

_COUNTER = itertools.count()


def fsync_dir(path: str) -> None:
    """Make a directory's entries (new or renamed files) durable, where the platform allows: some
    cannot open or fsync a directory, and the renames are atomic either way."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_open(path, mode="w", **open_kwargs):
    """``open()`` for writing that only publishes ``path`` when the block succeeds."""
    if not any(c in mode for c in "wx"):
        raise ValueError(f"atomic_open writes a new file; mode {mode!r} is not a write mode")
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    # Unique per process, thread and call: concurrent writers of one path never share a temp file.
    tmp = os.path.join(directory, f".{os.path.basename(path)}.tmp-{os.getpid()}-{threading.get_ident()}-"
                                  f"{next(_COUNTER)}")
    try:
        with open(tmp, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write_text(path, text, encoding="utf-8"):
    with atomic_open(path, "w", encoding=encoding, newline="\n") as f:
        f.write(text)
