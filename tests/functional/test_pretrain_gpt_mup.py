"""pretrain_gpt.py --use-mup end to end: TP2 reproduces the single-process μP run (initialisation
from the full fan-in, per-parameter learning rates, multipliers), and save-then-resume equals the
uninterrupted run (the optimizer groups and their multipliers are rebuilt identically)."""
import pytest

from test_training_lib import assert_close, demo_data, gpt_args, losses, parse_iterations, run_script

# Width 64 tuned at base width 32: every hidden matrix has LR multiplier 1/2 (MLP 4h -> h included).
MUP = ["--split", "90,8,2", "--num-workers", "0", "--hidden-size", "64", "--use-mup", "--mup-base-hidden-size", "32"]


@pytest.fixture(scope="module")
def data():
    return demo_data()


@pytest.fixture(scope="module")
def straight(data):
    return run_script("pretrain_gpt.py", gpt_args(data, *MUP, train_iters=8)).stdout


def _lines_from(stdout: str, first: int):
    parsed = parse_iterations(stdout)
    return {i: (v["lm loss"], v["grad norm"], v["learning rate"]) for i, v in parsed.items() if i >= first}


def test_mup_tp2_matches_single_process(data, straight):
    result = run_script("pretrain_gpt.py", gpt_args(data, *MUP, "--tensor-model-parallel-size", "2", train_iters=8),
                        nproc=2, timeout=600)
    assert_close(losses(result.stdout), losses(straight), 1e-5, "muP tp2")


def test_mup_resume_is_exact(data, straight, tmp_path):
    args = gpt_args(data, *MUP, train_iters=8)
    save = ["--save", str(tmp_path / "ckpt"), "--save-interval", "4"]
    first = run_script("pretrain_gpt.py", args + save + ["--exit-interval", "4"])
    assert "exiting program at iteration 4" in first.stdout
    resumed = run_script("pretrain_gpt.py", args + save + ["--load", str(tmp_path / "ckpt")])
    want = _lines_from(straight, 5)
    assert sorted(want) == [5, 6, 7, 8]
    assert _lines_from(resumed.stdout, 1) == want
    # A run without μP (or with another base) may not resume it: its learning rates would differ.
    refused = run_script("pretrain_gpt.py", args + ["--mup-base-hidden-size", "16", "--load",
                                            str(tmp_path / "ckpt")], check=False)
    assert refused.returncode != 0
    assert "mup_base_hidden_size 32 but this run has 16 (--mup-base-hidden-size)" in refused.stdout + refused.stderr
