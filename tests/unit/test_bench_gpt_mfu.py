"""Smoke test of benchmarks/bench_gpt_mfu.py: the tiny configuration runs both sides end to end
(our training step and the Hugging Face GPT-2 baseline) and prints the table."""
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_tiny_configuration_runs_both_sides():
    env = dict(os.environ, PYTHONPATH=str(ROOT), CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "benchmarks/bench_gpt_mfu.py", "--tiny", "--iters", "1", "--warmup", "0",
                             "--peak-tflops", "1.0"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    rows = [line.split() for line in result.stdout.splitlines() if line.startswith("tiny ")]
    assert [row[1] for row in rows] == ["megatron", "hf-gpt2", "speed-up"], result.stdout
    for row in rows[:2]:
        ms, tokens, tflops, mfu = float(row[2]), float(row[3]), float(row[4]), row[5]
        assert ms > 0 and tokens > 0 and tflops >= 0 and mfu.endswith("%")


def test_bad_model_name_is_refused(capsys):
    import pytest

    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_gpt_mfu

    with pytest.raises(SystemExit) as exc:
        bench_gpt_mfu.parse_args(["--tiny", "--models", "7b"])
    assert exc.value.code == 2
    assert "--models 7b needs CUDA" in capsys.readouterr().err
