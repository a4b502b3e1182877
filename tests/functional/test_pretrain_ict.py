"""pretrain_ict.py end to end: the seed command line (2020 flag spellings, --fp16) from a tiny
pretrain_bert.py checkpoint, top-k accuracies on iteration and validation lines, resume from
--load, one-line errors for a BERT that does not fit, and (slow) equal losses from a BERT saved at
another layout, and at DP=2 and TP=2."""
import re

import pytest

from test_training_lib import demo_data, parse_iterations, run_script

SIZES = ["--num-layers", "2", "--num-attention-heads", "4", "--hidden-size", "32", "--seq-length", "64",
         "--max-position-embeddings", "64"]
LOGGING = ["--log-interval", "1", "--eval-iters", "1", "--distributed-backend", "gloo"]
SMALL = ["--split", "90,8,2", *LOGGING]


def _vocab() -> str:
    from megatron.tokenizer import bert_uncased_vocab_path

    return bert_uncased_vocab_path()


@pytest.fixture(scope="module")
def bert_checkpoint(tmp_path_factory):
    data = demo_data()
    save = str(tmp_path_factory.mktemp("bert") / "ckpt")
    run_script("pretrain_bert.py", SIZES + SMALL + [
        "--micro-batch-size", "4", "--global-batch-size", "8", "--train-iters", "2", "--lr", "1e-3",
        "--data-path", f"{data}/bert_text_sentence", "--vocab-file", _vocab(), "--num-workers", "0",
        "--eval-interval", "1000", "--save", save, "--save-interval", "2"])
    return save


def seed_command(bert: str, ict: str, train_iters: int, *extra: str):
    """The seed's pretrain_ict.py command line, sizes scaled down. It gives no --split: Megatron's
    default "969, 30, 1" leaves the demo corpus (391 documents) no test document."""
    data = demo_data()
    return SIZES + [
        "--batch-size", "8", "--ict-head-size", "16", "--train-iters", str(train_iters),
        "--checkpoint-activations", "--bert-load", bert, "--load", ict, "--save", ict,
        "--data-path", f"{data}/bert_text_sentence", "--titles-data-path", f"{data}/bert_title_sentence",
        "--vocab-file", _vocab(), "--lr", "1e-4", "--num-workers", "2", "--lr-decay-style", "linear",
        "--weight-decay", "1e-2", "--clip-grad", "1.0", "--warmup", ".01", "--save-interval", "2",
        "--query-in-block-prob", "0.1", "--fp16", *LOGGING, *extra]


def test_seed_command_trains_from_bert_reports_topk_and_resumes(bert_checkpoint, tmp_path):
    ict = str(tmp_path / "ict")
    # A moderate first loss scale: the default 2^32 overflows and skips the few iterations run here.
    extra = ["--initial-loss-scale", "1024", "--eval-interval", "2"]
    # The first run stops at iteration 2 (saved); the same command then resumes to iteration 4.
    first = run_script("pretrain_ict.py", seed_command(bert_checkpoint, ict, 4, *extra, "--exit-interval", "2")).stdout
    assert f"from the BERT checkpoint {bert_checkpoint}" in first
    # The empty test split is skipped with one warning (as Megatron-LM does), not an error.
    data = demo_data()
    assert [line for line in first.splitlines() if "WARNING" in line and "split" in line] == [
        f"WARNING: {data}/bert_text_sentence: the test split of --split 969, 30, 1 is empty (0 of 391 documents): "
        "test evaluation is skipped"]
    lines = parse_iterations(first)
    assert sorted(lines) == [1, 2]
    for fields in lines.values():
        assert 0.0 <= fields["top1_acc"] <= fields["top5_acc"] <= 100.0
        assert fields["retrieval loss"] > 0.0
        assert fields["number of skipped iterations"] == 0
    validation = re.findall(r"validation loss at iteration 2 \| retrieval loss value: \S+ \| .*"
                            r"top1_acc value: (\S+) \| .*top5_acc value: (\S+) \|", first)
    assert validation and all(0.0 <= float(v) <= 100.0 for pair in validation for v in pair)

    # The same split written unquoted, as Megatron prints its default: three shell words.
    second = run_script("pretrain_ict.py", seed_command(bert_checkpoint, ict, 4, *extra,
                                                        "--split", "969,", "30,", "1")).stdout
    assert "the test split of --split 969, 30, 1 is empty" in second
    assert f"--load {ict} holds a checkpoint: resuming from it, --bert-load not used" in second
    assert "from the BERT checkpoint" not in second
    assert sorted(parse_iterations(second)) == [3, 4]


def test_bert_of_another_size_is_one_line_naming_the_keys(bert_checkpoint, tmp_path):
    args = seed_command(bert_checkpoint, str(tmp_path / "ict"), 2)
    args[args.index("--hidden-size") + 1] = "64"
    result = run_script("pretrain_ict.py", args, check=False)
    assert result.returncode != 0
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"pretrain_ict.py: error: --bert-load {bert_checkpoint}"), result.stderr[-2000:]
    assert "shape mismatch: embedding.position_embeddings.weight (64, 32) vs model (64, 64)" in last
    assert "saved hidden_size 32, this run --hidden-size 64" in last
    assert "Traceback" not in result.stderr


def test_missing_bert_checkpoint_is_one_line(tmp_path):
    missing = str(tmp_path / "no_bert")
    result = run_script("pretrain_ict.py", seed_command(missing, str(tmp_path / "ict"), 2), check=False)
    assert result.returncode != 0
    assert result.stderr.strip().splitlines()[-1] == f"pretrain_ict.py: error: --bert-load {missing}: no such directory"


def test_pipeline_parallelism_is_refused_by_the_model_provider(monkeypatch):
    import argparse
    import importlib.util
    import os

    from test_training_lib import REPO

    spec = importlib.util.spec_from_file_location("pretrain_ict", os.path.join(REPO, "pretrain_ict.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    monkeypatch.setattr(script, "get_args", lambda: argparse.Namespace(pipeline_model_parallel_size=2))
    with pytest.raises(script.ICTSetupError, match="--pipeline-model-parallel-size 2: the ICT biencoder runs on "
                                                   "one pipeline stage"):
        script.model_provider()


def _fp32_args(bert: str, *extra: str):
    data = demo_data()
    return SIZES + SMALL + [
        # No projection and no score scaling: scores of raw [CLS] states are large enough for the
        # losses to depend visibly on every weight.
        "--micro-batch-size", "8", "--global-batch-size", "8", "--train-iters", "2",
        "--bert-load", bert, "--data-path", f"{data}/bert_text_sentence",
        "--titles-data-path", f"{data}/bert_title_sentence", "--vocab-file", _vocab(), "--lr", "1e-3",
        "--num-workers", "0", "--hidden-dropout", "0", "--attention-dropout", "0", "--eval-interval", "1000",
        "--retriever-report-topk-accuracies", "1", "3", "5", *extra]


@pytest.mark.slow
def test_bert_saved_at_tp2_pp2_and_tp2_dp2_runs_give_the_single_process_losses(bert_checkpoint, tmp_path):
    from megatron.checkpoint_tools.reshard import reshard_checkpoint

    reference = parse_iterations(run_script("pretrain_ict.py", _fp32_args(bert_checkpoint)).stdout)
    assert {"top1_acc", "top3_acc", "top5_acc"} <= set(reference[1])
    resharded = str(tmp_path / "bert_tp2_pp2")
    reshard_checkpoint(bert_checkpoint, resharded, 2, 2)
    from_resharded = parse_iterations(run_script("pretrain_ict.py", _fp32_args(resharded)).stdout)
    assert from_resharded[1]["retrieval loss"] == pytest.approx(reference[1]["retrieval loss"], rel=1e-6)
    # DP=2: four examples a rank, negatives gathered from both; the same losses and accuracies.
    dp2 = parse_iterations(run_script("pretrain_ict.py", _fp32_args(bert_checkpoint, "--micro-batch-size", "4"),
                                      nproc=2, timeout=600).stdout)
    # TP=2: towers split over two ranks, embeddings replicated, nothing gathered.
    tp2 = parse_iterations(run_script("pretrain_ict.py", _fp32_args(bert_checkpoint, "--tensor-model-parallel-size",
                                                                     "2"), nproc=2, timeout=600).stdout)
    for label, run in (("dp2", dp2), ("tp2", tp2)):
        for iteration in (1, 2):
            for key in ("retrieval loss", "top1_acc", "top3_acc", "top5_acc"):
                assert run[iteration][key] == pytest.approx(reference[iteration][key], rel=1e-5), \
                    (label, iteration, key)


@pytest.mark.slow
def test_example_script_runs_scaled_down(bert_checkpoint, tmp_path):
    import os
    import subprocess

    from test_training_lib import REPO, script_env

    data = demo_data()
    env = script_env(NUM_LAYERS="2", HIDDEN_SIZE="32", NUM_HEADS="4", SEQ_LENGTH="64",
               MAX_POSITION_EMBEDDINGS="64", BATCH_SIZE="8", ICT_HEAD_SIZE="16", TRAIN_ITERS="2",
               LOG_INTERVAL="1", EVAL_INTERVAL="2", EVAL_ITERS="1", SAVE_INTERVAL="2", PRECISION="",
               BERT_LOAD=bert_checkpoint, CHECKPOINT_PATH=str(tmp_path / "ict"),
               DATA_PATH=f"{data}/bert_text_sentence", TITLES_DATA_PATH=f"{data}/bert_title_sentence")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "pretrain_ict.sh")], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    lines = parse_iterations(result.stdout)
    assert sorted(lines) == [1, 2] and all("top5_acc" in fields for fields in lines.values())
    assert (tmp_path / "ict" / "latest_checkpointed_iteration.txt").read_text().strip() == "2"


@pytest.mark.slow
def test_newer_flag_spellings_and_a_shared_tower(bert_checkpoint, tmp_path):
    data = demo_data()
    stdout = run_script("pretrain_ict.py", SIZES + SMALL + [
        "--micro-batch-size", "8", "--biencoder-projection-dim", "16", "--biencoder-shared-query-context-model",
        "--retriever-score-scaling", "--use-one-sent-docs", "--activations-checkpoint-method", "uniform",
        "--lr-warmup-fraction", ".01", "--train-iters", "2", "--lr", "1e-4", "--bert-load", bert_checkpoint,
        "--data-path", f"{data}/bert_text_sentence", "--titles-data-path", f"{data}/bert_title_sentence",
        "--vocab-file", _vocab(), "--num-workers", "0", "--eval-interval", "1000",
        "--save", str(tmp_path / "ict"), "--save-interval", "2"]).stdout
    assert sorted(parse_iterations(stdout)) == [1, 2]
    import torch

    saved = torch.load(tmp_path / "ict" / "iter_0000002" / "mp_rank_00" / "model_optim_rng.pt",
                       map_location="cpu", weights_only=False)
    assert set(saved["model"]) == {"shared_model"}
    assert saved["model"]["shared_model"]["projection_enc"]["weight"].shape == (16, 32)
