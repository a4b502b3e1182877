"""pretrain_bert.py (masked LM + sentence-order head) under model parallelism reproduces the
single-process losses of both heads."""
import pytest

from test_training_lib import assert_close, demo_data, losses, run_script


@pytest.fixture(scope="module")
def bert_args():
    from megatron.tokenizer import bert_uncased_vocab_path

    data = demo_data()
    # The padded vocabulary must not depend on the tensor-parallel size for weights to agree.
    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
            "--train-iters", "6", "--lr", "1e-3", "--hidden-dropout", "0", "--attention-dropout", "0",
            "--data-path", f"{data}/bert_text_sentence", "--vocab-file", bert_uncased_vocab_path(),
            "--split", "90,8,2", "--num-workers", "0", "--log-interval", "1", "--eval-iters", "1",
            "--eval-interval", "1000", "--make-vocab-size-divisible-by", "256", "--distributed-backend", "gloo"]


@pytest.fixture(scope="module")
def reference(bert_args):
    stdout = run_script("pretrain_bert.py", bert_args).stdout
    return losses(stdout, "lm loss"), losses(stdout, "sop loss")


def _check(bert_args, reference, extra, nproc, label):
    stdout = run_script("pretrain_bert.py", bert_args + extra, nproc=nproc, timeout=600).stdout
    assert_close(losses(stdout, "lm loss"), reference[0], 1e-5, f"{label} lm loss")
    assert_close(losses(stdout, "sop loss"), reference[1], 1e-5, f"{label} sop loss")


def test_bert_pipeline_parallel_matches_single_process(bert_args, reference):
    _check(bert_args, reference, ["--pipeline-model-parallel-size", "2"], 2, "bert pp2")


@pytest.mark.slow
def test_bert_tensor_parallel_matches_single_process(bert_args, reference):
    _check(bert_args, reference, ["--tensor-model-parallel-size", "2"], 2, "bert tp2")


def test_bert_without_binary_head_trains_the_masked_lm_alone(bert_args):
    stdout = run_script("pretrain_bert.py", bert_args + ["--bert-no-binary-head"]).stdout
    lm = losses(stdout, "lm loss")
    assert len(lm) == 6 and all(loss == loss for loss in lm)  # six finite (non-NaN) losses
    assert "sop loss" not in stdout
