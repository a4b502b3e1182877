"""examples/orqa_demo.sh end to end at tiny sizes: questions -> BERT -> ICT -> frozen index -> ORQA with
retrieved and with random blocks -> the test table (slow)."""
import os
import re
import shutil
import subprocess
import sys

import pytest

from test_training_lib import REPO


@pytest.mark.slow
def test_orqa_demo_runs_end_to_end(tmp_path, demo_corpus):
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(demo_corpus, demo / "corpus.json")
    from megatron.tokenizer import bert_uncased_vocab_path

    subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", str(demo / "corpus.json"), "--json-keys",
                    "text", "title", "--split-sentences", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file",
                    bert_uncased_vocab_path(), "--output-prefix", str(demo / "bert"), "--workers", "1"],
                   check=True, cwd=REPO, capture_output=True, text=True, timeout=600)
    env = dict(os.environ, PYTHON=sys.executable, DEMO_DIR=str(demo), BERT_ITERS="2", ICT_ITERS="2", EPOCHS="1",
               HIDDEN="32", BATCH="8", QA_BATCH="4", NUM_QUESTIONS="40", PASSAGE_WORDS="30", BLOCK_SEQ="48",
               QUESTION_SEQ="24", OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "orqa_demo.sh")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=1800)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    rows = re.findall(r"^(ORQA \(retrieved blocks\)|same reader, random blocks) +\| +(\d+) \| +([\d.]+) \| +([\d.]+)$",
                      result.stdout, re.M)
    assert [row[0] for row in rows] == ["ORQA (retrieved blocks)", "same reader, random blocks"]
    assert rows[0][1] == rows[1][1] != "0"  # the same held-out questions
    assert (demo / "checkpoints" / "orqa" / "latest_checkpointed_iteration.txt").is_file()
