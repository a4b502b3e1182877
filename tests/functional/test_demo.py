"""The README's demo command (examples/run_demo.sh) end to end, into a temporary directory."""
import os
import subprocess

from test_training_lib import script_env

from megatron.core.datasets.indexed_dataset import IndexedDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_run_demo_script(tmp_path):
    # A short run keeps the suite fast: 20 iterations, then the resume script runs on to 40.
    env = script_env(DEMO_DIR=str(tmp_path / "demo"), WORKERS="2", DEMO_ITERS="20", TRAIN_ITERS="40",
                     LOG_INTERVAL="10")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "run_demo.sh")], env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    demo = tmp_path / "demo"
    gpt = IndexedDataset(str(demo / "gpt_text_document"))
    text = IndexedDataset(str(demo / "bert_text_sentence"))
    title = IndexedDataset(str(demo / "bert_title_sentence"))
    documents = sum(1 for _ in open(demo / "corpus.json", encoding="utf-8"))
    assert len(gpt) == documents and gpt.doc_idx[-1] == documents
    assert len(text.doc_idx) - 1 == documents == len(title.doc_idx) - 1
    assert len(text) > 5 * documents  # sentence-level
    assert (demo / "gpt2" / "vocab.json").exists() and (demo / "gpt2" / "merges.txt").exists()
    tracker = demo / "checkpoints" / "gpt" / "latest_checkpointed_iteration.txt"
    assert tracker.read_text().strip() == "20"
    assert " iteration       20/      40 |" in result.stdout

    resumed = subprocess.run(["bash", os.path.join(REPO, "examples", "resume_demo.sh")], env=env,
                             capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert tracker.read_text().strip() == "40"
    assert " iteration       30/      40 |" in resumed.stdout
    assert " iteration       10/      40 |" not in resumed.stdout  # it resumed, not restarted
