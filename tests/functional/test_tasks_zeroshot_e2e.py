"""tasks/main.py --task WIKITEXT103 / LAMBADA end to end on a tiny GPT checkpoint trained here:
the metrics are printed, agree across layouts, and bad input files fail with file:line."""
import math
import os
import re

import pytest

from test_training_lib import REPO, demo_data, gpt_args, run_script

DATA = os.path.join(REPO, "tests", "data")
RESULT_RE = re.compile(r"^ validation results on (\w+) \| (.*) \|$", re.M)


def model_args(data, checkpoint):
    """The checkpoint's model and tokenizer flags (tasks take the architecture from the command line)."""
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--vocab-file",
            f"{data}/gpt2/vocab.json", "--merge-file", f"{data}/gpt2/merges.txt", "--distributed-backend", "gloo",
            "--load", checkpoint]


def results(stdout):
    match = RESULT_RE.search(stdout)
    assert match, f"no results line in:\n{stdout[-2000:]}"
    return match.group(1), {key.strip(): float(value) for key, value in
                            (part.split(":") for part in match.group(2).split(" | "))}


def _train(data, directory, *layout, nproc=1):
    run_script("pretrain_gpt.py", gpt_args(data, "--split", "90,8,2", "--num-workers", "0", "--save", directory,
                                           "--save-interval", "4", *layout, train_iters=4), nproc=nproc)
    return directory


@pytest.fixture(scope="session")
def gpt_checkpoint(tmp_path_factory):
    data = demo_data()
    return data, _train(data, str(tmp_path_factory.mktemp("task_gpt") / "checkpoints"))


def test_wikitext103_reports_megatrons_metrics_and_data_parallel_agrees(gpt_checkpoint):
    data, checkpoint = gpt_checkpoint
    task = ["--task", "WIKITEXT103", "--valid-data", f"{DATA}/wikitext_sample.txt", "--overlapping-eval", "8"]
    name, single = results(run_script("tasks/main.py", model_args(data, checkpoint) + task).stdout)
    assert name == "WIKITEXT103"
    # A model trained for 4 steps is near the uniform loss log(4096) = 8.3.
    assert 5.0 < single["avg loss"] < 10.0
    assert single["ppl"] == pytest.approx(math.exp(single["avg loss"]), rel=1e-5)
    assert single["adjusted ppl"] == pytest.approx(math.exp(single["avg loss"] * single["token ratio"]), rel=1e-5)
    assert single["token ratio"] > 1.0  # BPE splits words
    _, dp2 = results(run_script("tasks/main.py", model_args(data, checkpoint) + task, nproc=2).stdout)
    assert dp2 == pytest.approx(single, rel=1e-5)


@pytest.mark.parametrize("strict", [False, True])
def test_lambada_reports_accuracy(gpt_checkpoint, strict):
    data, checkpoint = gpt_checkpoint
    task = ["--task", "LAMBADA", "--valid-data", f"{DATA}/lambada_sample.jsonl"] + (["--strict-lambada"] if strict else [])
    # The training schedule of the user's pretraining GPT_ARGS (here without --train-iters) is accepted.
    gpt_args_schedule = ["--lr", "0.00015", "--lr-decay-iters", "320000", "--lr-decay-style", "cosine",
                         "--lr-warmup-fraction", ".01"]
    stdout = run_script("tasks/main.py", model_args(data, checkpoint) + gpt_args_schedule + task).stdout
    assert "note: this tool does not train; --lr-decay-iters, --lr-warmup-fraction (training schedule) have no " \
           "effect" in stdout
    name, metrics = results(stdout)
    assert name == "LAMBADA" and metrics["total examples"] == 5
    assert 0 <= metrics["number correct"] <= 5
    assert metrics["avg accuracy"] == pytest.approx(metrics["number correct"] / 5)


def test_bad_lambada_file_fails_with_file_and_line(gpt_checkpoint, tmp_path):
    data, checkpoint = gpt_checkpoint
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"text": "a fine line"}\n{"words": "no text key"}\n')
    result = run_script("tasks/main.py", model_args(data, checkpoint) + ["--task", "LAMBADA", "--valid-data", str(bad)],
                        check=False)
    assert result.returncode == 2
    assert f"tasks/main.py: error: {bad}:2: expected an object with a string \"text\"" in result.stderr
    assert "Traceback" not in result.stderr


def test_two_valid_files_are_rejected(gpt_checkpoint):
    data, checkpoint = gpt_checkpoint
    sample = f"{DATA}/wikitext_sample.txt"
    result = run_script("tasks/main.py", model_args(data, checkpoint) + ["--task", "WIKITEXT103", "--valid-data",
                                                                           sample, sample], check=False)
    assert result.returncode == 2 and "exactly one --valid-data file, got 2" in result.stderr


@pytest.mark.slow
def test_tensor_and_pipeline_parallel_evaluation_matches_one_process(gpt_checkpoint, tmp_path):
    """Weights do not depend on the layout (CPU init, no dropout), so a TP2xPP2-trained checkpoint
    evaluated at TP2xPP2 reports what the one-process checkpoint reports at TP1."""
    data, checkpoint = gpt_checkpoint
    layout = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]
    sharded = _train(data, str(tmp_path / "tp2pp2"), *layout, nproc=4)
    for task in (["--task", "WIKITEXT103", "--valid-data", f"{DATA}/wikitext_sample.txt", "--overlapping-eval", "8"],
                 ["--task", "LAMBADA", "--strict-lambada", "--valid-data", f"{DATA}/lambada_sample.jsonl"]):
        _, want = results(run_script("tasks/main.py", model_args(data, checkpoint) + task).stdout)
        _, got = results(run_script("tasks/main.py", model_args(data, sharded) + layout + task, nproc=4).stdout)
        assert got == pytest.approx(want, rel=1e-4), task[1]
