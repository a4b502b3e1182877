"""Input checks that run at start-up, before the model is built.

A missing data file, an unparsable ``--split`` or an unwritable ``--save`` would otherwise surface
minutes later (after the model is built and its weights initialised), or, for ``--save``, at the
first checkpoint, after the training it was meant to keep. Each check raises a ValueError or
OSError whose message names the flag and the path; the entry point reports it in one line.
"""
from __future__ import annotations

import os
import tempfile
from typing import Iterable, List, Optional


def _indexed_prefixes(data_path: Optional[Iterable[str]]) -> List[str]:
    from megatron.core.datasets.splits import parse_data_path

    if not data_path:
        return []
    prefixes, _ = parse_data_path(list(data_path))
    return prefixes


def check_data_paths(args) -> None:
    """Every indexed-dataset prefix of --data-path / --{train,valid,test}-data-path has its .bin and
    .idx, and --split parses. TFRecord globs are the TFRecord reader's to check."""
    from megatron.core.datasets.splits import parse_split

    if getattr(args, "data_impl", None) == "tfrecord":
        return
    if getattr(args, "data_path", None):
        parse_split(args.split)
    for flag in ("data_path", "train_data_path", "valid_data_path", "test_data_path"):
        for prefix in _indexed_prefixes(getattr(args, flag, None)):
            missing = [prefix + ext for ext in (".bin", ".idx") if not os.path.isfile(prefix + ext)]
            if missing:
                raise FileNotFoundError(f"--{flag.replace('_', '-')} {prefix}: no such file {missing[0]}")


def require_indexed_data(args, script: str) -> None:
    """TFRecords (--data-impl tfrecord) hold MLPerf's pre-masked BERT examples; other models read .bin/.idx."""
    if getattr(args, "data_impl", None) == "tfrecord":
        raise ValueError(f"--data-impl tfrecord reads MLPerf BERT TFRecords, which only pretrain_bert.py trains on; "
                         f"{script} reads indexed .bin/.idx data (--data-impl mmap)")


def check_save_dir(save: Optional[str]) -> None:
    """--save can be created and written to: a probe file is made and removed."""
    if not save:
        return
    try:
        os.makedirs(save, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-probe-", dir=save)
        os.close(fd)
        os.unlink(probe)
    except OSError as error:
        raise OSError(f"--save {save} is not a writable directory: {error.strerror or error}") from None


def check_log_json(path: Optional[str]) -> None:
    """--log-json FILE can be appended to (its directory is made if missing)."""
    if not path:
        return
    try:
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        with open(path, "a", encoding="utf-8"):
            pass
    except OSError as error:
        raise OSError(f"--log-json {path} cannot be written: {error.strerror or error}") from None


def check_inputs_at_startup(args) -> None:
    check_data_paths(args)
    # Every rank checks (on a cluster each node may mount --save differently).
    check_save_dir(getattr(args, "save", None))
    check_log_json(getattr(args, "log_json", None))
