"""The README's demo command (examples/run_demo.sh) end to end, into a temporary directory."""
import os
import subprocess

from megatron.core.datasets.indexed_dataset import IndexedDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_run_demo_script(tmp_path):
    env = dict(os.environ, DEMO_DIR=str(tmp_path / "demo"), WORKERS="2")
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
