"""Shared helpers for the training functional tests (no tests here): the demo data, prepared once
per process, running the pretrain scripts under ``torchrun`` and parsing their iteration lines."""
import json
import os
import re
import subprocess
import sys
import tempfile
from typing import Dict, List, Optional

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
_DATA_DIR: Optional[str] = None

ITERATION_RE = re.compile(r"^ iteration\s+(\d+)/\s*(\d+) \|(.*)$", re.M)
VALIDATION_RE = re.compile(r"^ (validation|test) loss at (.*?) \| (.*)$", re.M)


_NO_PYTHON_ON_PATH: Optional[str] = None


def script_env(**extra: str) -> Dict[str, str]:
    """The environment for running a shell script of examples/: ``PYTHON`` is the interpreter under test,
    and ``python``/``python3`` found on PATH fail loudly, so a script that calls them rather than
    ``${PYTHON:-python3}`` fails its test instead of depending on which python PATH holds."""
    global _NO_PYTHON_ON_PATH
    if _NO_PYTHON_ON_PATH is None:
        directory = tempfile.mkdtemp(prefix="megatron_no_python_")
        for name in ("python", "python3"):
            path = os.path.join(directory, name)
            with open(path, "w") as handle:
                handle.write(f"#!/bin/sh\necho \"bare '{name}' called: use \\${{PYTHON:-python3}}\" >&2\nexit 97\n")
            os.chmod(path, 0o755)
        _NO_PYTHON_ON_PATH = directory
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHON=sys.executable)
    env["PATH"] = _NO_PYTHON_ON_PATH + os.pathsep + env.get("PATH", "")
    env.update(extra)
    return env


def _run_tool(*args: str) -> None:
    subprocess.run([sys.executable, *args], check=True, cwd=REPO, capture_output=True, text=True, timeout=600)


def demo_data() -> str:
    """A directory with the demo corpus preprocessed for GPT (BPE trained on it) and BERT (sentences of
    ``text`` in ``bert_text_sentence``, one title a document in ``bert_title_sentence``)."""
    global _DATA_DIR
    if _DATA_DIR is not None:
        return _DATA_DIR
    directory = tempfile.mkdtemp(prefix="megatron_train_data_")
    _run_tool("tools/make_demo_corpus.py", "--output", f"{directory}/corpus.json")
    _run_tool("tools/train_tokenizer.py", "--input", f"{directory}/corpus.json", "--json-keys", "text",
              "--tokenizer-type", "GPT2BPETokenizer", "--vocab-size", "4096", "--output-dir", f"{directory}/gpt2")
    _run_tool("tools/preprocess_data.py", "--input", f"{directory}/corpus.json", "--output-prefix", f"{directory}/gpt",
              "--vocab", f"{directory}/gpt2/vocab.json", "--merge-file", f"{directory}/gpt2/merges.txt",
              "--tokenizer-type", "GPT2BPETokenizer", "--append-eod", "--workers", "1")
    from megatron.tokenizer import bert_uncased_vocab_path

    _run_tool("tools/preprocess_data.py", "--input", f"{directory}/corpus.json", "--json-keys", "text", "title",
              "--split-sentences", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file",
              bert_uncased_vocab_path(), "--output-prefix", f"{directory}/bert", "--workers", "1")
    _DATA_DIR = directory
    return directory


def gpt_args(data: str, *extra: str, train_iters: Optional[int] = 10, layers: int = 2) -> List[str]:
    """A tiny GPT with no dropout (so every layout computes the same losses); ``train_iters=None``
    leaves the length (--train-iters or --train-samples) and the warm-up to ``extra``."""
    length = ["--train-iters", str(train_iters), "--lr-warmup-iters", "2"] if train_iters is not None else []
    return ["--num-layers", str(layers), "--hidden-size", "32", "--num-attention-heads", "4",
            "--seq-length", "32", "--max-position-embeddings", "32",
            "--micro-batch-size", "2", "--global-batch-size", "8", *length,
            "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine",
            "--weight-decay", "0.01", "--clip-grad", "1.0",
            "--hidden-dropout", "0", "--attention-dropout", "0", "--seed", "1234",
            "--data-path", f"{data}/gpt_text_document", "--vocab-file", f"{data}/gpt2/vocab.json",
            "--merge-file", f"{data}/gpt2/merges.txt", "--tokenizer-type", "GPT2BPETokenizer",
            "--split", "949,50,1", "--log-interval", "1", "--eval-interval", "1000", "--eval-iters", "1",
            "--distributed-backend", "gloo", *extra]


def run_script(script: str, args: List[str], nproc: int = 1, timeout: float = 300, env: Optional[dict] = None,
               check: bool = True, launcher: str = "torchrun") -> subprocess.CompletedProcess:
    """``python SCRIPT ARGS`` (nproc 1) or under ``torchrun --standalone --nproc_per_node N``.

    Pretraining scripts also get ``--log-json`` (unless the test gives its own); the records come
    back on ``result.stdout.records``, and ``parse_iterations``/``losses`` read them instead of the
    text lines."""
    json_log = None
    if os.path.basename(script).startswith("pretrain_") and "--log-json" not in args and "--dry-run" not in args:
        handle, json_log = tempfile.mkstemp(prefix="metrics_", suffix=".jsonl")
        os.close(handle)
        args = [*args, "--log-json", json_log]
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    full_env.update(env or {})
    if nproc == 1 and launcher == "torchrun":
        command = [sys.executable, os.path.join(REPO, script), *args]
    elif launcher == "launch":
        command = [sys.executable, "-m", "torch.distributed.launch", "--nproc_per_node", str(nproc),
                   "--master_port", str(_free_port()), os.path.join(REPO, script), *args]
    else:
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(nproc),
                   os.path.join(REPO, script), *args]
    try:
        result = subprocess.run(command, cwd=REPO, env=full_env, capture_output=True, text=True, timeout=timeout)
        if json_log is not None:
            with open(json_log, encoding="utf-8") as f:
                result.stdout = LoggedStdout(result.stdout, [json.loads(line) for line in f if line.strip()])
    finally:
        if json_log is not None:
            os.unlink(json_log)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(command[:6])} ... exited {result.returncode}\n"
                             f"stdout tail:\n{result.stdout[-3000:]}\nstderr tail:\n{result.stderr[-5000:]}")
    return result


def _free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class LoggedStdout(str):
    """A run's standard output that also carries its ``--log-json`` records."""

    def __new__(cls, text: str, records: List[dict]):
        value = super().__new__(cls, text)
        value.records = records
        return value


def _record_fields(record: dict) -> Dict[str, float]:
    """A --log-json iteration record under the names of the iteration line's fields."""
    fields = {"consumed samples": record["consumed_samples"], "learning rate": record["learning_rate"],
              "elapsed time per iteration (ms)": record["elapsed_ms_per_iteration"],
              "global batch size": record["global_batch_size"], "loss scale": record["loss_scale"],
              "number of skipped iterations": record["skipped_iterations"],
              "number of nan iterations": record["nan_iterations"], "TFLOP/s per GPU": record["tflops_per_gpu"],
              **record["losses"]}
    for key, name in (("grad_norm", "grad norm"), ("num_zeros", "num zeros"), ("params_norm", "params norm")):
        if record.get(key) is not None:
            fields[name] = record[key]
    if record.get("mfu") is not None:
        fields["MFU"] = 100.0 * record["mfu"]
    return fields


def parse_iterations(stdout: str) -> Dict[int, Dict[str, float]]:
    """{iteration: {field: value}}: from the run's --log-json records when it has them, else from the
    Megatron-style iteration lines (e.g. the output of an example script)."""
    records = [r for r in getattr(stdout, "records", []) if r["kind"] == "iteration"]
    if records:
        return {r["iteration"]: _record_fields(r) for r in records}
    result = {}
    for match in ITERATION_RE.finditer(stdout):
        fields = {}
        for part in match.group(3).split("|"):
            if ":" not in part:
                continue
            key, value = part.rsplit(":", 1)
            value = value.strip().rstrip("%")
            try:
                fields[key.strip()] = float(value)
            except ValueError:
                continue
        result[int(match.group(1))] = fields
    return result


def losses(stdout: str, key: str = "lm loss") -> List[float]:
    parsed = parse_iterations(stdout)
    return [parsed[i][key] for i in sorted(parsed)]


def assert_close(got: List[float], want: List[float], rtol: float, label: str) -> None:
    assert len(got) == len(want) and want, f"{label}: {len(got)} losses vs {len(want)} in the reference"
    for i, (g, w) in enumerate(zip(got, want)):
        assert abs(g - w) <= rtol * abs(w), f"{label}: iteration {i + 1} loss {g!r} vs reference {w!r}"
