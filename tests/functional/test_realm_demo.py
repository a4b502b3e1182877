"""examples/realm_demo.sh end to end at tiny sizes: BERT -> ICT -> block index -> REALM and the
no-retrieval baseline -> the held-out table (slow: about two minutes on a loaded 2-core machine)."""
import os
import re
import shutil
import subprocess

import pytest
import torch

from test_training_lib import REPO


@pytest.mark.slow
def test_realm_demo_runs_end_to_end(tmp_path, demo_corpus):
    demo = tmp_path / "demo"
    demo.mkdir()
    shutil.copy(demo_corpus, demo / "corpus.json")
    from megatron.tokenizer import bert_uncased_vocab_path

    subprocess.run(["python", "tools/preprocess_data.py", "--input", str(demo / "corpus.json"), "--json-keys", "text",
                    "title", "--split-sentences", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file",
                    bert_uncased_vocab_path(), "--output-prefix", str(demo / "bert"), "--workers", "1"],
                   check=True, cwd=REPO, capture_output=True, text=True, timeout=600)
    env = dict(os.environ, DEMO_DIR=str(demo), BERT_ITERS="2", ICT_ITERS="2", REALM_ITERS="2", REFRESH="1",
               HIDDEN="32", EVAL_ITERS="1", BATCH="8", ICT_BATCH="8", REALM_BATCH="4", OMP_NUM_THREADS="1",
               PYTHONUNBUFFERED="1")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "realm_demo.sh")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=1200)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "REALM index: " in out and "from --block-data-path" in out
    assert "embedded with the weights of iteration 1 (refresh every 1 iterations)" in out
    rows = re.findall(r"^(BERT without retrieval|REALM \(8 candidates\)) +\| +(\S+) \| +(\S+) \| +(\S+) \| +(\S+)$",
                      out, re.M)
    assert [row[0] for row in rows] == ["BERT without retrieval", "REALM (8 candidates)"]
    assert rows[0][4] == "-" and float(rows[1][4]) == float(rows[1][4])  # utility only where there is retrieval
    saved = torch.load(demo / "checkpoints" / "realm" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                       map_location="cpu", weights_only=False)
    from megatron.checkpoint_state import flatten_state_dict

    # Both towers (one shared tower here) and the reader, under retriever. / reader.
    prefixes = {".".join(key.split(".")[:2]) for key in flatten_state_dict(saved["model"])}
    assert prefixes == {"retriever.shared_model", "reader.language_model", "reader.lm_head"}
