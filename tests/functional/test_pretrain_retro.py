"""pretrain_retro.py end to end on tiny retmmap data made on the fly: validation reports the loss
with and without retrieval, resume is exact (losses, grad norms, LR, data position), and bad RETRO
inputs end in one line naming the flag or file."""
import re

import numpy as np
import pytest

from megatron.core.datasets.knn_map import KNNMapWriter
from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDatasetBuilder
from megatron.tokenizer import bert_uncased_vocab_path
from test_training_lib import parse_iterations, run_script

CHUNK, K = 8, 3
VALIDATION = re.compile(r"validation loss at iteration (\d+) \| lm loss value: (\S+) \| lm loss PPL: (\S+) \| "
                        r"lm loss without retrieval value: (\S+) \| lm loss without retrieval PPL: (\S+) \|")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """40 documents of repeated token patterns, the same text as a retrieval DB, and a KNN map whose
    first neighbour of chunk c is the same chunk of the next document (a near copy) and whose
    second is missing (-1)."""
    out = tmp_path_factory.mktemp("retro_data")
    rng = np.random.default_rng(5)
    patterns = [rng.integers(1000, 1200, size=CHUNK * 5) for _ in range(8)]
    docs = [np.concatenate([patterns[i % 8], rng.integers(1000, 1200, size=int(rng.integers(3, 20)))])
            for i in range(40)]
    for name, db in (("train", False), ("db", True)):
        builder = RetrievalIndexedDatasetBuilder(str(out / f"{name}.bin"), np.uint16, pad_id=0, chunk_size=CHUNK,
                                                 stride=CHUNK, retrieval_db=db)
        for doc in docs:
            builder.add_item(doc.astype(np.uint16))
        builder.finalize(str(out / f"{name}.idx"))
    from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset

    train = RetrievalIndexedDataset(str(out / "train"))
    rows = np.full((train.chunks, K), -1, dtype=np.int64)
    for d in range(len(train)):
        first, end = train.document_chunk_range(d)
        other_first, other_end = train.document_chunk_range((d + 8) % len(train))
        for c in range(first, end):
            rows[c, 0] = min(other_first + (c - first), other_end - 1)
            rows[c, 2] = (c * 7) % train.chunks
    with KNNMapWriter(str(out / "knn.bin"), K) as writer:
        writer.write(rows)
    return out


def retro_args(data, *extra, train_iters=6):
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--train-iters", str(train_iters), "--lr-warmup-iters", "1", "--lr", "1e-3", "--min-lr", "1e-4",
            "--lr-decay-style", "cosine", "--clip-grad", "1.0", "--log-interval", "1", "--eval-interval", "3",
            "--eval-iters", "1", "--split", "80,20,0", "--num-workers", "0", "--seed", "1234",
            "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", bert_uncased_vocab_path(),
            "--retro-train-data", str(data / "train"), "--retro-db", str(data / "db"),
            "--retro-knn-map", str(data / "knn.bin"), "--retro-chunk-size", str(CHUNK),
            "--retro-num-neighbors", "2", "--retro-encoder-layers", "1", "--retro-decoder-cca-layers", "1",
            "--position-embedding-type", "rope", "--data-cache-path", str(data / "cache"), *extra]


def _lines_from(stdout, first):
    return {i: (v["lm loss"], v["grad norm"], v["learning rate"]) for i, v in parse_iterations(stdout).items()
            if i >= first}


def test_validation_with_and_without_retrieval_and_exact_resume(data, tmp_path):
    args = retro_args(data, "--hidden-dropout", "0.1", "--attention-dropout", "0.1")
    straight = run_script("pretrain_retro.py", args, timeout=600)
    lines = VALIDATION.findall(straight.stdout)
    assert [int(line[0]) for line in lines] == [3, 6]
    for _, loss, ppl, blank_loss, blank_ppl in lines:
        assert float(loss) > 0 and float(blank_loss) > 0
        assert abs(float(ppl) - np.exp(float(loss))) < 1e-3 * float(ppl)
        assert abs(float(blank_ppl) - np.exp(float(blank_loss))) < 1e-3 * float(blank_ppl)
        assert loss != blank_loss  # the neighbours reach the logits
    records = [r for r in straight.stdout.records if r["kind"] == "validation"]
    assert set(records[0]["losses"]) == {"lm loss", "lm loss without retrieval"}

    save = ["--save", str(tmp_path / "ckpt"), "--save-interval", "3"]
    first = run_script("pretrain_retro.py", args + save + ["--exit-interval", "3"], timeout=600)
    assert "exiting program at iteration 3" in first.stdout
    resumed = run_script("pretrain_retro.py", args + save + ["--load", str(tmp_path / "ckpt")], timeout=600)
    want = _lines_from(straight.stdout, 4)
    assert sorted(want) == [4, 5, 6]
    assert _lines_from(resumed.stdout, 1) == want
    assert parse_iterations(resumed.stdout)[4]["consumed samples"] == 16
    assert VALIDATION.findall(resumed.stdout)[0] == lines[1]


@pytest.mark.parametrize("extra,message", [
    (["--seq-length", "30"], "--seq-length 30 is not a multiple of --retro-chunk-size 8"),
    (["--retro-num-neighbors", "4"], r"--retro-num-neighbors 4 must lie in \[1, K=3\]"),
    (["--retro-decoder-cca-layers", "2"], r"--retro-decoder-cca-layers \[2\] must be increasing"),
    (["--retro-chunk-size", "16"], "differs from --retro-chunk-size 16"),
])
def test_bad_retro_inputs_are_one_line(data, extra, message):
    result = run_script("pretrain_retro.py", retro_args(data, *extra, train_iters=2), check=False, timeout=300)
    assert result.returncode != 0
    assert re.search(message, result.stderr), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("extra", [["--tensor-model-parallel-size", "2"],
                                   ["--tensor-model-parallel-size", "2", "--sequence-parallel"],
                                   ["--recompute-granularity", "full", "--recompute-method", "uniform",
                                    "--recompute-num-layers", "1"]])
def test_layouts_and_recompute_reproduce_the_single_process_losses(data, extra):
    from test_training_lib import assert_close, losses

    # One padded vocabulary for TP1 and TP2 (the BERT vocabulary rounds up differently for each).
    args = retro_args(data, "--hidden-dropout", "0", "--attention-dropout", "0", "--make-vocab-size-divisible-by",
                      "256", train_iters=4)
    want = run_script("pretrain_retro.py", args, timeout=600).stdout
    nproc = 2 if "--tensor-model-parallel-size" in extra else 1
    got = run_script("pretrain_retro.py", args + extra, nproc=nproc, timeout=600).stdout
    assert_close(losses(got), losses(want), 1e-5, " ".join(extra))
    assert_close([float(v) for v in VALIDATION.findall(got)[0][1::2]],
                 [float(v) for v in VALIDATION.findall(want)[0][1::2]], 1e-5, "validation")


def test_dry_run_is_refused_rather_than_planning_another_model(data):
    result = run_script("pretrain_retro.py", retro_args(data, "--dry-run", "--world-size", "2", train_iters=2),
                        check=False, timeout=300)
    assert result.returncode != 0
    assert "--dry-run does not plan RETRO models" in result.stderr, result.stderr[-2000:]
