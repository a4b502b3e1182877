"""examples/retro_demo.sh end to end at tiny sizes (slow: the sentence-transformers encoder embeds
every chunk twice and a model trains): both validation losses are printed and both generation modes
write their samples."""
import json
import os
import re
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.mark.slow
def test_retro_demo_runs_end_to_end(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path), DOCS="10", MAX_CHARS="400", CHUNK="16", K="3", SEQ="32",
               ITERS="4", WARMUP="1", EVAL_INTERVAL="2", EVAL_ITERS="1", LAYERS="2", CCA_LAYERS="1", HIDDEN="32", MBS="2",
               GEN_TOKENS="20", OMP_NUM_THREADS="1")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "retro_demo.sh")], env=env, capture_output=True,
                            text=True, timeout=1800)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "== done" in result.stdout
    lines = re.findall(r"validation loss at iteration \d+ \| lm loss value: \S+ \| lm loss PPL: \S+ \| "
                       r"lm loss without retrieval value: \S+", result.stdout)
    assert len(lines) == 2
    for mode in ("with", "without"):
        samples = [json.loads(line) for line in open(tmp_path / f"samples_{mode}_retrieval.jsonl", encoding="utf-8")]
        assert [s["prompt"] for s in samples] == ["Return the number of", "The os module provides"]
        assert all(s["length"] > 0 for s in samples)
