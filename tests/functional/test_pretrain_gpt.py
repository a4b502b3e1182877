"""pretrain_gpt.py end to end on the CPU: every parallel layout reproduces the single-process losses,
resume is exact, fp16 skips overflowing steps, and failures (SIGTERM, killed save, dead rank,
NaN loss) end the run the way they should."""
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from test_training_lib import (
    REPO,
    assert_close,
    demo_data,
    gpt_args,
    losses,
    parse_iterations,
    run_script,
    script_env,
)

COMMON = ["--split", "90,8,2", "--num-workers", "0"]


@pytest.fixture(scope="module")
def data():
    return demo_data()


@pytest.fixture(scope="module")
def reference(data):
    """The single-process losses of the first 10 iterations (2 layers, dropout off)."""
    return run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--log-params-norm")).stdout


LAYOUTS = {
    "tp2": (2, ["--tensor-model-parallel-size", "2"]),
    "pp2": (2, ["--pipeline-model-parallel-size", "2"]),
    "tp2xpp2": (4, ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]),
    "dp2-local-ddp": (2, ["--DDP-impl", "local"]),
    "dp2-local-distributed-optimizer": (2, ["--use-distributed-optimizer"]),
    "dp2-torch-ddp": (2, ["--DDP-impl", "torch"]),
}
SLOW_LAYOUTS = {
    "tp2-sequence-parallel": (2, ["--tensor-model-parallel-size", "2", "--sequence-parallel"]),
    "tp2xdp2-distributed-optimizer": (4, ["--tensor-model-parallel-size", "2", "--use-distributed-optimizer"]),
    "pp2xdp2-local-ddp": (4, ["--pipeline-model-parallel-size", "2"]),
    "pp2xdp2-torch-ddp": (4, ["--pipeline-model-parallel-size", "2", "--DDP-impl", "torch"]),
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_layout_matches_single_process(data, reference, layout):
    nproc, extra = LAYOUTS[layout]
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, *extra, "--log-params-norm"), nproc=nproc,
                        timeout=600)
    assert_close(losses(result.stdout), losses(reference), 1e-5, layout)
    # Each parameter counted once across shards and stages (printed to 3 decimals).
    assert_close(losses(result.stdout, "params norm"), losses(reference, "params norm"), 1e-4, layout + " params norm")


@pytest.mark.slow
@pytest.mark.parametrize("layout", sorted(SLOW_LAYOUTS))
def test_more_layouts_match_single_process(data, reference, layout):
    nproc, extra = SLOW_LAYOUTS[layout]
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, *extra), nproc=nproc, timeout=600)
    assert_close(losses(result.stdout), losses(reference), 1e-5, layout)


def test_interleaved_pipeline_matches_single_process(data):
    # Megatron's interleaved schedule needs more than two stages: 3 stages x 2 chunks of 1 layer.
    want = losses(run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--global-batch-size", "6",
                                                          "--micro-batch-size", "1", layers=6)).stdout)
    got = losses(run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--global-batch-size", "6", "--micro-batch-size",
                                                         "1", "--pipeline-model-parallel-size", "3",
                                                         "--num-layers-per-virtual-pipeline-stage", "1", layers=6),
                            nproc=3, timeout=600).stdout)
    assert_close(got, want, 1e-5, "pp3 x 2 virtual stages")


@pytest.mark.slow
def test_legacy_launcher_with_local_rank(data, reference):
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--tensor-model-parallel-size", "2"), nproc=2,
                        launcher="launch")
    assert_close(losses(result.stdout), losses(reference), 1e-5, "torch.distributed.launch --local_rank")


def _lines_from(stdout: str, first: int):
    parsed = parse_iterations(stdout)
    return {i: (v["lm loss"], v["grad norm"], v["learning rate"]) for i, v in parsed.items() if i >= first}


def test_resume_is_exact_with_dropout(data, tmp_path):
    """4 iterations, save, resume for 4 more == 8 straight (losses, grad norms, LR; dropout on)."""
    args = gpt_args(data, *COMMON, "--hidden-dropout", "0.1", "--attention-dropout", "0.1", train_iters=8)
    straight = run_script("pretrain_gpt.py", args)
    save = ["--save", str(tmp_path / "ckpt"), "--save-interval", "4"]
    first = run_script("pretrain_gpt.py", args + save + ["--exit-interval", "4"])
    assert "exiting program at iteration 4" in first.stdout
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "4"
    resumed = run_script("pretrain_gpt.py", args + save + ["--load", str(tmp_path / "ckpt")])
    want = _lines_from(straight.stdout, 5)
    assert sorted(want) == [5, 6, 7, 8]
    assert _lines_from(resumed.stdout, 1) == want
    assert _lines_from(first.stdout, 1) == {i: v for i, v in _lines_from(straight.stdout, 1).items() if i <= 4}
    # The data position came back too: consumed samples continue from 32.
    assert parse_iterations(resumed.stdout)[5]["consumed samples"] == 40


def test_fp16_dynamic_loss_scale_skips_overflowing_iterations(data):
    """The default initial scale (2^32) overflows fp16 gradients: those steps are skipped and
    counted, the scale halves each time, and training then proceeds with finite losses."""
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--fp16", "--hysteresis", "1", train_iters=24))
    parsed = parse_iterations(result.stdout)
    skipped = [i for i in sorted(parsed) if parsed[i]["number of skipped iterations"] > 0]
    assert skipped and skipped[0] == 1, "the first iteration must overflow at loss scale 2^32"
    scales = [parsed[i]["loss scale"] for i in sorted(parsed)]
    assert scales[0] == 2.0 ** 31 and scales[-1] < 2.0 ** 31
    for a, b, i in zip(scales, scales[1:], sorted(parsed)[1:]):
        assert b == (a / 2 if i in skipped else a), f"iteration {i}: loss scale {a} -> {b}"
    applied = [i for i in sorted(parsed) if i not in skipped]
    assert applied, "no iteration was ever applied"
    assert parsed[applied[-1]]["learning rate"] > 0
    assert all(parsed[i]["lm loss"] == parsed[i]["lm loss"] for i in applied)


def test_sigterm_with_exit_signal_handler_saves_and_exits_cleanly(data, tmp_path):
    args = gpt_args(data, *COMMON, "--exit-signal-handler", "--save", str(tmp_path / "ckpt"), "--save-interval",
                    "100000", train_iters=100000)
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "pretrain_gpt.py"), *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    try:
        _wait_for_line(process, " iteration        3/")
        process.send_signal(signal.SIGTERM)
        stdout, stderr = process.communicate(timeout=120)
    finally:
        process.kill()
    assert process.returncode == 0, stderr[-3000:]
    assert "received SIGTERM" in stdout
    iteration = int((tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text())
    assert iteration >= 3


def _wait_for_line(process, text: str, timeout: float = 120) -> str:
    deadline = time.time() + timeout
    seen = []
    while time.time() < deadline:
        line = process.stdout.readline()
        if not line and process.poll() is not None:
            break
        seen.append(line)
        if text in line:
            return "".join(seen)
    raise AssertionError(f"{text!r} never appeared; output so far:\n{''.join(seen)[-3000:]}")


def test_killed_during_save_leaves_previous_checkpoint_latest_and_loadable(data, tmp_path):
    """SIGKILL while checkpoints are being written every iteration; the tracker must name a
    complete checkpoint, which then loads and trains on."""
    ckpt = tmp_path / "ckpt"
    args = gpt_args(data, *COMMON, "--save", str(ckpt), "--save-interval", "1", train_iters=100000)
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "pretrain_gpt.py"), *args], cwd=REPO,
                               stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True,
                               env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"))
    try:
        _wait_for_line(process, " iteration        3/")
        _wait_for_line(process, "saving checkpoint at iteration")
        process.send_signal(signal.SIGKILL)  # mid-save: the line is printed before the files are written
        process.wait(timeout=60)
    finally:
        process.kill()
    latest = int((ckpt / "latest_checkpointed_iteration.txt").read_text())
    assert latest in (2, 3)
    # A shorter run than the killed one: its own schedule length replaces the checkpoint's.
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--load", str(ckpt), "--override-lr-scheduler",
                                                     train_iters=latest + 1))
    assert parse_iterations(result.stdout)[latest + 1]["consumed samples"] == 8 * (latest + 1)


def _hurt_rank_1_and_wait_for_rank_0(data, extra, hurt, within):
    """Two ranks started by hand (as a scheduler would, without torchrun's supervision); once the
    last rank has printed iteration 2, ``hurt(process)`` is done to it, and rank 0 must stop within
    ``within`` seconds, naming itself and the step. Returns rank 0's stderr."""
    from test_training_lib import _free_port

    port = str(_free_port())
    args = gpt_args(data, *COMMON, *extra, train_iters=100000)
    processes = []
    for rank in (0, 1):
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", MASTER_ADDR="127.0.0.1",
                   MASTER_PORT=port, WORLD_SIZE="2", RANK=str(rank), LOCAL_RANK=str(rank))
        processes.append(subprocess.Popen([sys.executable, os.path.join(REPO, "pretrain_gpt.py"), *args], cwd=REPO,
                                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env))
    try:
        _wait_for_line(processes[1], " iteration        2/")  # the last rank prints the iteration lines
        hurt(processes[1])
        start = time.time()
        _, stderr = processes[0].communicate(timeout=within)
        assert time.time() - start < within
    finally:
        for process in processes:
            process.kill()
    assert processes[0].returncode not in (0, None)
    assert "[rank 0] ERROR: a collective failed during training iteration" in stderr, stderr[-3000:]
    return stderr


def test_killed_rank_ends_the_job_with_a_clear_message(data):
    _hurt_rank_1_and_wait_for_rank_0(data, [], lambda process: process.kill(), within=120)


def test_stalled_rank_ends_the_job_within_the_distributed_timeout(data):
    """Rank 1 is frozen (SIGSTOP), so rank 0 waits in a collective, possibly the data-parallel
    gradient all-reduce: a sub-group, which must honour --distributed-timeout-minutes (here 15 s)
    rather than torch's 30-minute default for groups made without a timeout."""
    _hurt_rank_1_and_wait_for_rank_0(data, ["--distributed-timeout-minutes", "0.25"],
                                     lambda process: process.send_signal(signal.SIGSTOP), within=15 + 60)


def test_data_from_another_vocabulary_is_refused_at_tp2(data):
    """BERT WordPiece data (ids up to ~30k) given to the 4096-id GPT model: at TP=2 the vocab-parallel
    embedding would zero the out-of-range ids and train on; the dataset build must refuse it."""
    args = gpt_args(data, *COMMON, "--tensor-model-parallel-size", "2")
    args[args.index("--data-path") + 1] = f"{data}/bert_text_sentence"
    result = run_script("pretrain_gpt.py", args, nproc=2, check=False)
    assert result.returncode != 0
    assert "bert_text_sentence.bin: token id" in result.stderr
    assert "is outside the model's vocabulary of 4096" in result.stderr
    assert not re.search(r"^ iteration +1/", result.stdout, re.M)


def test_nan_loss_stops_the_run_naming_the_iteration(data):
    # A learning rate of 1e30 makes the weights, then the loss, non-finite within a few steps.
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--lr", "1e30", "--min-lr", "1e30", "--clip-grad",
                                                     "0", "--lr-warmup-iters", "0", train_iters=50), check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert "ERROR: loss is NaN or infinite at iteration" in result.stdout
    assert "iteration       50/" not in result.stdout


def test_dry_run_of_the_gpt3_175B_example_prints_its_plan():
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "pretrain_gpt3_175B.sh")], cwd=REPO,
                            env=script_env(DRY_RUN="1"), capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "1024 ranks" in result.stdout
    assert "tensor-parallel 8 x pipeline-parallel 16 x data-parallel 8" in result.stdout
    assert "stage  15" in result.stdout


def test_bad_argument_is_one_line_naming_the_flag(data):
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--global-batch-size", "7"), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().startswith("pretrain_gpt.py: error:")
    assert "--global-batch-size 7" in result.stderr and "Traceback" not in result.stderr


def test_batch_size_rampup_by_samples_with_timers(data):
    """--rampup-batch-size 4 4 16: global batch 4 until 16 samples are consumed, then 8; the
    consumed-sample count follows; --timing-log-level 1 adds the step timers and
    --peak-flops-per-gpu the MFU column."""
    args = gpt_args(data, *COMMON, "--rampup-batch-size", "4", "4", "16", "--timing-log-level", "1",
                    "--train-samples", "48", "--lr-warmup-samples", "8", "--peak-flops-per-gpu", "1e9",
                    train_iters=None)
    result = run_script("pretrain_gpt.py", args)
    parsed = parse_iterations(result.stdout)
    batches = [parsed[i]["global batch size"] for i in sorted(parsed)]
    assert batches == [4, 4, 4, 4, 8, 8, 8, 8]
    consumed = [parsed[i]["consumed samples"] for i in sorted(parsed)]
    assert consumed == [4, 8, 12, 16, 24, 32, 40, 48]
    assert " iteration        8/       8 |" in result.stdout
    assert "time (ms) | forward-backward:" in result.stdout and "| optimizer:" in result.stdout
    assert all(parsed[i]["TFLOP/s per GPU"] >= 0 and parsed[i]["MFU"] > 0 for i in parsed)


def test_exit_duration_saves_and_stops(data, tmp_path):
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--exit-duration-in-mins", "0.0001", "--save",
                                                     str(tmp_path / "ckpt"), "--save-interval", "1000"))
    assert "exiting program at iteration 1: --exit-duration-in-mins 0.0001 reached" in result.stdout
    assert (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "1"


def test_bf16_with_gradient_and_parameter_statistics(data):
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, "--bf16", "--log-params-norm",
                                                     "--log-num-zeros-in-grad", train_iters=4))
    parsed = parse_iterations(result.stdout)
    assert sorted(parsed) == [1, 2, 3, 4]
    for fields in parsed.values():
        assert fields["loss scale"] == 1.0 and fields["number of skipped iterations"] == 0
        assert fields["params norm"] > 0 and fields["num zeros"] >= 0 and fields["lm loss"] > 0
