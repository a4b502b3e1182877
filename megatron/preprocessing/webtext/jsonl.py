"""Loose-JSON corpora (one object per line): validated reading in batches, atomic writing,
bounded-memory parallel mapping, and the one-line error every web-text tool reports.

Workers get raw lines and parse them themselves, so a many-core run is not limited by the
parent's JSON decoding; a bad line still names its file and line.
"""
import collections
import json
import multiprocessing
import os
import sys
from typing import Callable, Iterable, Iterator, List, Optional, Sequence, Tuple

from tqdm import tqdm

from megatron.core.fileio import atomic_open


class WebtextError(ValueError):
    """Bad input or arguments; the message is one line naming the file and line (or flag)."""


# One batch of raw input lines: (path, [(line number, byte offset, raw bytes), ...]).
Batch = Tuple[str, List[Tuple[int, int, bytes]]]


def check_inputs(paths: Sequence[str]) -> None:
    for path in paths:
        if not os.path.isfile(path):
            raise WebtextError(f"{path}: no such file")


def read_batches(paths: Sequence[str], batch_lines: int = 512, progress: Optional[tqdm] = None) -> Iterator[Batch]:
    """Raw non-blank lines of each file in order, ``batch_lines`` at a time, never across files."""
    check_inputs(paths)
    for path in paths:
        batch, offset = [], 0
        with open(path, "rb") as handle:
            for number, line in enumerate(handle, 1):
                if line.strip():
                    batch.append((number, offset, line))
                offset += len(line)
                if progress is not None:
                    progress.update(len(line))
                if len(batch) >= batch_lines:
                    yield path, batch
                    batch = []
        if batch:
            yield path, batch


def parse_line(path: str, number: int, line: bytes, keys: Sequence[str] = ()) -> dict:
    """One JSON object; every key in ``keys`` must hold a string."""
    try:
        record = json.loads(line)
    except UnicodeDecodeError as error:
        raise WebtextError(f"{path}:{number}: not UTF-8 ({error.reason} at byte {error.start})") from None
    except json.JSONDecodeError as error:
        raise WebtextError(f"{path}:{number}: not JSON: {error.msg} (column {error.colno})") from None
    if not isinstance(record, dict):
        raise WebtextError(f"{path}:{number}: expected a JSON object, found {type(record).__name__}")
    for key in keys:
        if not isinstance(record.get(key), str):
            found = "no such key" if key not in record else f"a {type(record[key]).__name__}"
            raise WebtextError(f"{path}:{number}: key {key!r} must hold a string ({found})")
    return record


def dumps(record: dict) -> str:
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_lines(path: str, lines: Iterable[str]) -> int:
    """Write ``lines`` to ``path`` atomically; returns how many were written."""
    count = 0
    with atomic_open(path, "w", encoding="utf-8", newline="\n") as handle:
        for line in lines:
            handle.write(line)
            count += 1
    return count


def byte_progress(paths: Sequence[str], desc: str) -> tqdm:
    """A tqdm bar over the inputs' bytes (shown only on a terminal)."""
    total = sum(os.path.getsize(p) for p in paths if os.path.isfile(p))
    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, desc=desc, disable=None,
                file=sys.stderr)


def ordered_map(func: Callable, items: Iterable, workers: int, initializer: Optional[Callable] = None,
                initargs: tuple = (), in_flight_per_worker: int = 4) -> Iterator:
    """``map(func, items)`` in order over ``workers`` processes, with at most
    ``workers * in_flight_per_worker`` items submitted and not yet consumed, so memory stays
    bounded however large the input (``Pool.imap`` would read the whole input ahead)."""
    if workers <= 1:
        if initializer is not None:
            initializer(*initargs)
        yield from map(func, items)
        return
    context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
    with context.Pool(workers, initializer=initializer, initargs=initargs) as pool:
        pending = collections.deque()
        limit = workers * in_flight_per_worker
        for item in items:
            pending.append(pool.apply_async(func, (item,)))
            if len(pending) >= limit:
                yield pending.popleft().get()
        while pending:
            yield pending.popleft().get()


def positive_workers(value: int, flag: str = "--workers") -> int:
    if value < 1:
        raise WebtextError(f"{flag} {value} must be at least 1")
    return value


def run_cli(main: Callable[[], Optional[int]]) -> None:
    """Run a tool's ``main``; a ``WebtextError`` becomes one line on stderr and exit status 1."""
    prog = os.path.basename(sys.argv[0])
    try:
        status = main()
    except WebtextError as error:
        print(f"{prog}: error: {error}", file=sys.stderr)
        sys.exit(1)
    except OSError as error:  # an unwritable output directory, a full disk: one line, not a traceback
        where = f"{error.filename}: " if error.filename else ""
        print(f"{prog}: error: {where}{error.strerror or error}", file=sys.stderr)
        sys.exit(1)
    except KeyboardInterrupt:
        print(f"{prog}: interrupted; no output was published", file=sys.stderr)
        sys.exit(130)
    sys.exit(status or 0)


def print_counts(title: str, counts: dict, stream=None) -> None:
    """A small aligned table of reason -> count, the report every filtering tool prints."""
    stream = stream or sys.stdout
    width = max([len(k) for k in counts] + [5])
    print(title, file=stream)
    for key, value in counts.items():
        print(f"  {key:<{width}}  {value:>12,}", file=stream)
