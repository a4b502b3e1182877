"""tools/generate_samples_gpt.py end to end on a tiny trained GPT: conditional and unconditional
generation, KV cache equal to --recompute, TP2 and PP2 (resharded checkpoint) equal to TP1, and
one-line errors for bad input."""
import json
import os
import subprocess
import sys

import pytest

from test_generate_lib import gpt_checkpoint, model_args
from test_training_lib import REPO, run_script

PROMPTS = ["The module defines", "Return a list of", "import os", "x"]


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def prompt_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("prompts") / "prompts.txt"
    path.write_text("\n".join(PROMPTS) + "\n", encoding="utf-8")
    return str(path)


def generate(tmp_path, name, *flags, tp=1):
    genfile = str(tmp_path / f"{name}.jsonl")
    run_script("tools/generate_samples_gpt.py", [*model_args(tp), *flags, "--genfile", genfile], nproc=tp)
    return read_jsonl(genfile)


@pytest.fixture(scope="module")
def greedy_tp1(tmp_path_factory, prompt_file):
    return generate(tmp_path_factory.mktemp("tp1"), "cached", *greedy_flags(prompt_file))


def greedy_flags(prompt_file):
    return ["--sample-input-file", prompt_file, "--greedy", "--out-seq-length", "12"]


def test_conditional_greedy_kv_cache_equals_recompute(tmp_path, prompt_file, greedy_tp1):
    assert [r["prompt"] for r in greedy_tp1] == PROMPTS
    for result in greedy_tp1:
        assert result["text"].startswith(result["prompt"]) and len(result["text"]) > len(result["prompt"])
        assert set(result) == {"prompt", "text", "length", "finished"}
        assert 1 <= result["length"] <= 12 and (result["finished"] or result["length"] == 12)
    assert len({r["text"][len(r["prompt"]):] for r in greedy_tp1}) > 1  # continuations depend on the prompt
    assert generate(tmp_path, "recompute", *greedy_flags(prompt_file), "--recompute") == greedy_tp1


def test_tensor_parallel_generation_equals_single_process(tmp_path, prompt_file, greedy_tp1):
    assert generate(tmp_path, "tp2", *greedy_flags(prompt_file), tp=2) == greedy_tp1


def test_unconditional_sampling(tmp_path):
    # With the training schedule of the user's pretraining GPT_ARGS, here without --train-iters.
    results = generate(tmp_path, "samples", "--num-samples", "3", "--top_k", "8", "--temperature", "0.9",
                       "--out-seq-length", "10", "--lr", "0.00015", "--lr-decay-iters", "320000",
                       "--lr-decay-style", "cosine", "--lr-warmup-fraction", ".01")
    assert len(results) == 3 and all(r["prompt"] == "" and 1 <= r["length"] <= 10 for r in results)
    assert len({r["text"] for r in results}) > 1  # sampled, not one greedy text three times


def test_bad_prompt_file_fails_with_one_line_naming_path_and_line(tmp_path):
    bad = tmp_path / "prompts.txt"
    bad.write_text("first prompt\n\nthird\n", encoding="utf-8")
    result = run_script("tools/generate_samples_gpt.py",
                        [*model_args(), "--sample-input-file", str(bad), "--genfile", str(tmp_path / "out.jsonl")],
                        check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    error_lines = [line for line in result.stderr.splitlines() if "error:" in line]
    assert len(error_lines) == 1 and f"{bad}:2: empty prompt" in error_lines[0], result.stderr[-2000:]
    assert not (tmp_path / "out.jsonl").exists()


def test_pipeline_parallel_generation_equals_single_process(tmp_path, prompt_file, greedy_tp1):
    """The TP1 checkpoint resharded to two pipeline stages generates the same greedy text, cached and not."""
    resharded = str(tmp_path / "pp2")
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", "checkpoint_util.py"),
                             "--load-dir", gpt_checkpoint(), "--save-dir", resharded,
                             "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "2"],
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    flags = [*swap_load(model_args(), resharded), "--pipeline-model-parallel-size", "2", *greedy_flags(prompt_file)]
    for name, extra in (("pp2", []), ("pp2_recompute", ["--recompute"])):
        genfile = str(tmp_path / f"{name}.jsonl")
        run_script("tools/generate_samples_gpt.py", [*flags, *extra, "--genfile", genfile], nproc=2)
        assert read_jsonl(genfile) == greedy_tp1, name


def swap_load(flags, load):
    index = flags.index("--load")
    return [*flags[:index + 1], load, *flags[index + 2:]]



def test_generate_text_example_runs_and_says_when_positions_cap_the_length(tmp_path):
    """examples/generate_text.sh (Megatron-LM's README) as written, scaled to the tiny checkpoint; its
    default --out-seq-length 1024 is more than 32 positions hold, which it says in one line."""
    from test_training_lib import demo_data

    data = demo_data()
    output = tmp_path / "samples.jsonl"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHON=sys.executable, NUM_LAYERS="2",
               HIDDEN_SIZE="32", NUM_HEADS="4", SEQ_LENGTH="32", CHECKPOINT_PATH=gpt_checkpoint(),
               VOCAB_FILE=f"{data}/gpt2/vocab.json", MERGE_FILE=f"{data}/gpt2/merges.txt", NUMBER_OF_SAMPLES="3",
               OUTPUT_FILE=str(output), EXTRA_ARGS="--seed 1234 --distributed-backend gloo")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "generate_text.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-3000:]
    results = read_jsonl(output)
    assert len(results) == 3 and all(1 <= r["length"] <= 31 for r in results)
    notices = [line for line in result.stdout.splitlines() if line.startswith("notice:")]
    assert notices == ["notice: --out-seq-length 1024 is capped by --max-position-embeddings 32: prompt plus "
                       "continuation stop at 32 tokens, so at most 31 tokens are generated per prompt (the longest "
                       "prompt has 1 tokens)"], result.stdout[-3000:]


def test_no_notice_when_the_length_fits_and_missing_load_is_named(tmp_path, prompt_file):
    result = run_script("tools/generate_samples_gpt.py", [*model_args(), "--sample-input-file", prompt_file,
                                                          "--out-seq-length", "4", "--genfile",
                                                          str(tmp_path / "out.jsonl")])
    assert "notice:" not in result.stdout and len(read_jsonl(tmp_path / "out.jsonl")) == len(PROMPTS)
    flags = model_args()
    at = flags.index("--load")
    result = run_script("tools/generate_samples_gpt.py", [*flags[:at], *flags[at + 2:], "--num-samples", "1",
                                                          "--genfile", str(tmp_path / "x.jsonl")], check=False)
    assert result.returncode == 2 and "--no-load-optim" not in result.stderr
    assert [line for line in result.stderr.splitlines() if "error:" in line] == [
        "generate_samples_gpt.py: error: --load is required: the checkpoint directory to generate from"]
