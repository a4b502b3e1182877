"""examples/mlperf_bert_demo.sh end to end at tiny sizes: text -> TFRecords -> eval pick -> indexes ->
pretrain_bert.py --data-impl tfrecord with masked-LM and NSP accuracy in the validation lines."""
import json
import os
import subprocess

from test_training_lib import REPO, VALIDATION_RE, script_env

from megatron.core.datasets.tfrecord import read_records


def tiny_corpus(path, documents=48):
    from pydoc_data.topics import topics

    with open(path, "w", encoding="utf-8") as f:
        for i, (title, text) in enumerate(sorted(topics.items())[:documents]):
            f.write(json.dumps({"id": i, "title": title, "text": text[:3000]}) + "\n")


def test_mlperf_bert_demo_runs_end_to_end(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    tiny_corpus(demo / "corpus.json")
    env = script_env(DEMO_DIR=str(demo), WORKERS="2", PARTS="2", EVAL_DOCS="6", VOCAB_SIZE="400", SEQ="32",
                     PREDS="5", DUPE="2", EVAL_PICK="16", ITERS="4", EVAL_INTERVAL="2", EVAL_ITERS="2", BATCH="8",
                     HIDDEN="32", LAYERS="1", HEADS="2")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "mlperf_bert_demo.sh")], env=env, cwd=REPO,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    parts = sorted(os.listdir(demo / "tfrecord"))
    assert parts == ["part-00000-of-00002", "part-00001-of-00002"]
    assert sorted(os.listdir(demo / "idx" / "train")) == [p + ".idx" for p in parts]
    assert len(read_records(str(demo / "eval" / "eval_10k"))) == 16
    validations = VALIDATION_RE.findall(result.stdout)
    assert len(validations) >= 2
    for _, _, values in validations:
        assert "mlm acc value" in values and "nsp acc value" in values and "lm loss value" in values
