"""pretrain_realm.py end to end on a small slice of the demo corpus, from tiny BERT and ICT checkpoints:
the REALM metrics on iteration and validation lines, index refreshes, an exact resume (the index
snapshot reloaded), equal losses with the refresh sharded over two data-parallel ranks, and
one-line errors."""
import json
import os
import subprocess
import sys

import pytest

from test_training_lib import REPO, parse_iterations, run_script

SIZES = ["--num-layers", "2", "--num-attention-heads", "4", "--hidden-size", "32", "--max-position-embeddings", "64"]
COMMON = ["--split", "80,10,10", "--log-interval", "1", "--distributed-backend", "gloo", "--num-workers", "0"]
NUM_DOCS = 40
REALM_KEYS = {"marginal loss", "retrieval_utility", "masked_span_acc", "masked_token_acc", "source_doc_in_topk",
              "null_doc_prob", "index staleness", "index refresh s"}


def _vocab() -> str:
    from megatron.tokenizer import bert_uncased_vocab_path

    return bert_uncased_vocab_path()


@pytest.fixture(scope="module")
def realm_inputs(tmp_path_factory, demo_corpus):
    """Small corpus (the first documents of the demo corpus) preprocessed into sentences and titles,
    a BERT and an ICT checkpoint (two iterations each)."""
    root = tmp_path_factory.mktemp("realm")
    corpus = str(root / "corpus.json")
    with open(demo_corpus, encoding="utf-8") as src, open(corpus, "w", encoding="utf-8") as dst:
        for _, line in zip(range(NUM_DOCS), src):
            dst.write(line)
    subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", corpus, "--json-keys", "text", "title",
                    "--split-sentences", "--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", _vocab(),
                    "--output-prefix", str(root / "bert"), "--workers", "1"],
                   check=True, cwd=REPO, capture_output=True, text=True, timeout=300)
    body, titles = str(root / "bert_text_sentence"), str(root / "bert_title_sentence")
    small = ["--micro-batch-size", "8", "--global-batch-size", "8", "--train-iters", "2", "--lr", "1e-3",
             "--vocab-file", _vocab(), "--eval-interval", "1000", "--eval-iters", "1", "--save-interval", "2"]
    run_script("pretrain_bert.py", SIZES + COMMON + small + [
        "--seq-length", "64", "--data-path", body, "--save", str(root / "bert")])
    run_script("pretrain_ict.py", SIZES + COMMON + small + [
        "--seq-length", "32", "--ict-head-size", "16", "--bert-load", str(root / "bert"), "--data-path", body,
        "--titles-data-path", titles, "--save", str(root / "ict")])
    return {"root": root, "corpus": corpus, "body": body, "titles": titles, "bert": str(root / "bert"),
            "ict": str(root / "ict")}


def realm_args(inputs, *extra: str, train_iters: int = 4):
    return SIZES + COMMON + [
        "--seq-length", "32", "--query-seq-length", "24", "--ict-head-size", "16", "--realm-num-candidates", "4",
        "--micro-batch-size", "2", "--global-batch-size", "4", "--train-iters", str(train_iters), "--lr", "1e-3",
        "--ict-load", inputs["ict"], "--bert-load", inputs["bert"], "--data-path", inputs["body"],
        "--titles-data-path", inputs["titles"], "--salient-span-json", inputs["corpus"], "--vocab-file", _vocab(),
        "--index-refresh-interval", "2", "--indexer-batch-size", "32", "--eval-iters", "1", *extra]


def test_trains_refreshes_and_resumes_exactly(realm_inputs, tmp_path):
    # The uninterrupted run: index built from the ICT weights, refreshed before iteration 3.
    full = run_script("pretrain_realm.py", realm_args(realm_inputs, "--eval-interval", "4")).stdout
    assert "salient spans: the corpus's salient_spans where given, else capitalisation heuristic" in full
    lines = parse_iterations(full)
    assert sorted(lines) == [1, 2, 3, 4]
    for fields in lines.values():
        assert REALM_KEYS <= set(fields)
        assert 0.0 <= fields["masked_span_acc"] <= fields["masked_token_acc"] + 1e-9 <= 100.0 + 1e-9
        assert 0.0 < fields["null_doc_prob"] < 1.0
    assert [lines[i]["index staleness"] for i in (1, 2, 3, 4)] == [0.0, 1.0, 0.0, 1.0]
    assert "embedded with the weights of iteration 2 (refresh every 2 iterations)" in full
    assert "validation loss at iteration 4 | index refresh s value" in full

    # Stopped at iteration 3 (one after the refresh), then resumed: the snapshot of the index built at
    # iteration 2 is reloaded, and iteration 4 is the uninterrupted run's, bit for bit.
    save = str(tmp_path / "realm")
    run_script("pretrain_realm.py", realm_args(realm_inputs, "--eval-interval", "1000", "--save", save,
                                               "--save-interval", "1000", "--load", save, "--exit-interval", "3"))
    assert sorted(os.listdir(os.path.join(save, "realm_index"))) == ["built_at_0000000", "built_at_0000002"]
    resumed = run_script("pretrain_realm.py", realm_args(realm_inputs, "--eval-interval", "4", "--save", save,
                                                         "--save-interval", "1000", "--load", save)).stdout
    assert "the snapshot built at iteration 2 reloaded" in resumed
    again = parse_iterations(resumed)
    assert sorted(again) == [4]
    for key in ("marginal loss", "retrieval_utility", "masked_token_acc", "source_doc_in_topk", "index staleness"):
        assert again[4][key] == lines[4][key], key
    assert again[4]["grad norm"] == lines[4]["grad norm"]


def test_sync_refresh_at_dp2_equals_dp1(realm_inputs):
    no_dropout = ["--hidden-dropout", "0", "--attention-dropout", "0", "--eval-interval", "1000", "--eval-iters", "0"]
    one = parse_iterations(run_script("pretrain_realm.py", realm_args(realm_inputs, *no_dropout)).stdout)
    two = parse_iterations(run_script("pretrain_realm.py", realm_args(realm_inputs, *no_dropout),
                                      nproc=2, timeout=600).stdout)
    assert sorted(two) == sorted(one) == [1, 2, 3, 4]
    for iteration in one:
        for key in ("marginal loss", "retrieval_utility", "source_doc_in_topk", "masked_token_acc"):
            assert two[iteration][key] == pytest.approx(one[iteration][key], rel=1e-5, abs=1e-6), (iteration, key)


def test_joint_length_over_the_position_embeddings_is_one_line(realm_inputs):
    args = realm_args(realm_inputs, "--eval-interval", "1000")
    args[args.index("--query-seq-length") + 1] = "40"
    result = run_script("pretrain_realm.py", args, check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == (
        "pretrain_realm.py: error: --query-seq-length 40 + --seq-length 32 - 1 = 71 joint tokens exceed "
        "--max-position-embeddings 64")


@pytest.mark.slow
def test_bad_spans_given_by_the_corpus_are_one_line_naming_the_line(realm_inputs, tmp_path):
    lines = open(realm_inputs["corpus"], encoding="utf-8").read().splitlines()
    doc = json.loads(lines[0])
    doc["salient_spans"] = [[0, 10 ** 6]]
    bad = tmp_path / "bad.json"
    bad.write_text("\n".join([json.dumps(doc)] + lines[1:]) + "\n", encoding="utf-8")
    args = realm_args(realm_inputs, "--eval-interval", "1000", "--data-cache-path", str(tmp_path / "cache"))
    args[args.index("--salient-span-json") + 1] = str(bad)
    result = run_script("pretrain_realm.py", args, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pretrain_realm.py: error: {bad}:1: salient span [0, 1000000] is not [start, end)")


@pytest.mark.slow
def test_tensor_parallel_2_equals_1(realm_inputs):
    # Each layout pads the vocabulary differently; the reader's softmax covers the true vocabulary only.
    no_dropout = ["--hidden-dropout", "0", "--attention-dropout", "0", "--eval-interval", "1000", "--eval-iters", "0"]
    one = parse_iterations(run_script("pretrain_realm.py", realm_args(realm_inputs, *no_dropout)).stdout)
    two = parse_iterations(run_script("pretrain_realm.py", realm_args(realm_inputs, *no_dropout,
                                                                      "--tensor-model-parallel-size", "2"),
                                      nproc=2, timeout=600).stdout)
    for iteration in one:
        for key in ("marginal loss", "retrieval_utility", "source_doc_in_topk", "masked_token_acc"):
            assert two[iteration][key] == pytest.approx(one[iteration][key], rel=1e-5, abs=1e-6), (iteration, key)
