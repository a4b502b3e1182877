"""examples/ict_demo.sh end to end at tiny sizes: BERT -> ICT -> block index -> held-out evaluation."""
import json
import os
import shutil
import subprocess

from test_training_lib import REPO, demo_data, script_env

from megatron.retrieval.block_store import BlockData


def test_ict_demo_runs_end_to_end(tmp_path):
    data = demo_data()
    demo = tmp_path / "demo"
    demo.mkdir()
    for name in ("bert_text_sentence", "bert_title_sentence"):
        for ext in (".bin", ".idx"):
            shutil.copy(os.path.join(data, name + ext), demo / (name + ext))
    env = script_env(DEMO_DIR=str(demo), BERT_ITERS="3", ICT_ITERS="4", HIDDEN="32", SEQ="64", BATCH="8")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "ict_demo.sh")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    out = result.stdout
    assert "top1_acc" in out and "top5_acc" in out
    assert "initialised from --bert-load" in out or "from the BERT checkpoint" in out

    # The index holds every block of the corpus once.
    store = BlockData.load(str(demo / "embedded_blocks.pkl"))
    assert len(store) > 0 and store.embeddings().shape == (len(store), 32)
    assert len(set(store.ids().tolist())) == len(store)

    report = json.loads((demo / "ict_heldout.json").read_text())
    names = [row["retriever"] for row in report["rows"]]
    assert names == ["random (expected)", "BERT before ICT (--bert-load)", "ICT retriever (--ict-load)",
                     "all-MiniLM-L6-v2 (off the shelf)"]
    queries = report["queries"]
    assert queries > 20
    random_row = report["rows"][0]
    assert abs(random_row["top1"] - 100.0 / queries) < 1e-9 and abs(random_row["top20"] - 2000.0 / queries) < 1e-9
    for row in report["rows"]:
        assert 0.0 <= row["top1"] <= row["top5"] <= row["top20"] <= 100.0
    # A model trained on a billion sentence pairs finds most held-out blocks even at top-1.
    assert report["rows"][3]["top1"] > 10 * random_row["top1"]
    assert "held-out ICT retrieval" in out
