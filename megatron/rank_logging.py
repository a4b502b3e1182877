"""Progress and status messages through Python's ``logging``, filtered by rank.

One logger, ``megatron``, writes the bare message to standard output (the Megatron-style lines
users and their scripts parse stay exactly as they were). Each record says which rank should
emit it: the first (set-up messages), the last (iteration and validation lines: the losses live
on the last pipeline stage, so no rank has to send them anywhere), or every rank. Users can
raise the level, add handlers or redirect it with the standard ``logging`` API.
"""
from __future__ import annotations

import logging
import sys

LOGGER_NAME = "megatron"
FIRST, LAST, EVERY = "first", "last", "every"


def _rank_and_world():
    try:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            return dist.get_rank(), dist.get_world_size()
    except Exception:  # noqa: BLE001 -- torch missing or a broken group: log as one process
        pass
    return 0, 1


class RankFilter(logging.Filter):
    """Passes a record on the rank its ``emit_on`` names (first, last or every; default first)."""

    def filter(self, record: logging.LogRecord) -> bool:
        which = getattr(record, "emit_on", FIRST)
        if which == EVERY:
            return True
        rank, world = _rank_and_world()
        return rank == (world - 1 if which == LAST else 0)


class _CurrentStdoutHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stdout`` is at the time (pytest's capture, a redirect)."""

    def emit(self, record: logging.LogRecord) -> None:
        self.stream = sys.stdout  # not setStream(): that flushes the previous stream, maybe closed by now
        super().emit(record)


def get_logger() -> logging.Logger:
    logger = logging.getLogger(LOGGER_NAME)
    if not any(isinstance(h, _CurrentStdoutHandler) for h in logger.handlers):
        handler = _CurrentStdoutHandler(sys.stdout)
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(RankFilter())
        logger.addHandler(handler)
        logger.setLevel(logging.INFO)
        logger.propagate = False
    return logger


def log_rank_0(message: str) -> None:
    get_logger().info(message, extra={"emit_on": FIRST})


def log_rank_last(message: str) -> None:
    get_logger().info(message, extra={"emit_on": LAST})


def log_every_rank(message: str) -> None:
    get_logger().info(message, extra={"emit_on": EVERY})
