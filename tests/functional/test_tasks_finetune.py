"""tasks/main.py --task MNLI / QQP / RACE end to end: fine-tune a tiny pretrained BERT on the
shipped files, report accuracy per validation set, keep the best checkpoint and evaluate it again."""
import os
import re

import pytest

from test_training_lib import REPO, demo_data, run_script

GLUE = os.path.join(REPO, "tests", "data", "glue")
RACE = os.path.join(REPO, "tests", "data", "race")
METRIC_RE = re.compile(r"^ > \|epoch: (\d+)\| metrics for (\w+): correct / total = (\d+) / (\d+) = ", re.M)
LOSS_RE = re.compile(r"classification loss: (\S+) \|")


def model_args():
    from megatron.tokenizer import bert_uncased_vocab_path

    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "4",
            "--lr", "1e-3", "--hidden-dropout", "0", "--attention-dropout", "0", "--vocab-file",
            bert_uncased_vocab_path(), "--make-vocab-size-divisible-by", "256", "--distributed-backend", "gloo",
            "--log-interval", "1"]


def metrics(stdout):
    return {(int(e), name): (int(c), int(t)) for e, name, c, t in METRIC_RE.findall(stdout)}


@pytest.fixture(scope="session")
def bert_checkpoint(tmp_path_factory):
    from megatron.tokenizer import bert_uncased_vocab_path

    data = demo_data()
    directory = str(tmp_path_factory.mktemp("task_bert") / "checkpoints")
    run_script("pretrain_bert.py", [
        "--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
        "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
        "--train-iters", "2", "--lr", "1e-3", "--data-path", f"{data}/bert_text_sentence", "--vocab-file",
        bert_uncased_vocab_path(), "--split", "90,8,2", "--num-workers", "0", "--eval-iters", "1",
        "--eval-interval", "1000", "--make-vocab-size-divisible-by", "256", "--distributed-backend", "gloo",
        "--save", directory, "--save-interval", "2"])
    return directory


def test_mnli_finetunes_keeps_the_best_checkpoint_and_reevaluates_it(bert_checkpoint, tmp_path):
    mnli = os.path.join(GLUE, "MNLI")
    valid = ["--valid-data", f"{mnli}/dev_matched.tsv", f"{mnli}/dev_mismatched.tsv"]
    save = str(tmp_path / "mnli")
    result = run_script("tasks/main.py", model_args() + [
        "--task", "MNLI", "--pretrained-checkpoint", bert_checkpoint, "--epochs", "2", "--train-data",
        f"{mnli}/train.tsv", *valid, "--save", save, "--save-interval", "1000"])
    got = metrics(result.stdout)
    assert set(got) == {(e, n) for e in (1, 2) for n in ("dev_matched", "dev_mismatched")}
    assert all(total == 4 for _, total in got.values())
    losses = [float(x) for x in LOSS_RE.findall(result.stdout)]
    assert len(losses) == 4 and all(0.5 < loss < 2.0 for loss in losses)  # 3 classes: about log 3 = 1.1
    assert "saved the best checkpoint so far (epoch 1" in result.stdout
    with open(os.path.join(save, "latest_checkpointed_iteration.txt")) as handle:
        best_iteration = int(handle.read())
    best_epoch = best_iteration // 2
    # Evaluating the kept checkpoint (split over two data-parallel ranks) reproduces that epoch's numbers.
    again = metrics(run_script("tasks/main.py", model_args() + ["--task", "MNLI", "--epochs", "0", "--load", save,
                                                                 *valid], nproc=2).stdout)
    assert again == {(0, n): got[(best_epoch, n)] for n in ("dev_matched", "dev_mismatched")}


@pytest.mark.slow
def test_qqp_data_parallel_training_matches_one_process(bert_checkpoint):
    qqp = os.path.join(GLUE, "QQP")
    args = model_args() + ["--task", "QQP", "--pretrained-checkpoint", bert_checkpoint, "--epochs", "1",
                           "--train-data", f"{qqp}/train.tsv", "--valid-data", f"{qqp}/dev.tsv"]
    one = run_script("tasks/main.py", args).stdout
    two = run_script("tasks/main.py", args, nproc=2).stdout
    assert metrics(one) == metrics(two) and list(metrics(one)) == [(1, "dev")]
    want, got = [float(x) for x in LOSS_RE.findall(one)], [float(x) for x in LOSS_RE.findall(two)]
    assert len(want) == 1 and got == pytest.approx(want, rel=1e-5)


def test_bad_tsv_fails_with_file_and_line(tmp_path):
    bad = tmp_path / "dev.tsv"
    bad.write_text("id\tqid1\tqid2\tquestion1\tquestion2\tis_duplicate\n0\t1\t2\tA?\tB?\tyes\n")
    result = run_script("tasks/main.py", model_args() + ["--task", "QQP", "--epochs", "0", "--valid-data", str(bad)],
                        check=False)
    assert result.returncode == 2
    assert f"tasks/main.py: error: {bad}:2: unknown QQP label 'yes' (expected 0 or 1)" in result.stderr


def test_race_multiple_choice_finetunes_and_reports_each_directory(bert_checkpoint):
    result = run_script("tasks/main.py", model_args() + [
        "--task", "RACE", "--pretrained-checkpoint", bert_checkpoint, "--epochs", "1", "--train-data",
        f"{RACE}/train", "--valid-data", f"{RACE}/dev/middle", f"{RACE}/dev/high", "--keep-last"])
    assert "RACE: 5 training questions, validation sets dev_middle (2), dev_high (3)" in result.stdout
    assert {name: total for (_, name), (_, total) in metrics(result.stdout).items()} == {"dev_middle": 2,
                                                                                        "dev_high": 3}
    (loss,) = [float(x) for x in LOSS_RE.findall(result.stdout)]
    assert 1.0 < loss < 1.8  # four choices: about log 4 = 1.39


def test_gpt_checkpoint_is_refused_as_a_pretrained_bert(tmp_path):
    """A checkpoint without this encoder's weights must not start fine-tuning from random weights."""
    fake = tmp_path / "not_bert"
    (fake / "iter_0000001" / "mp_rank_00").mkdir(parents=True)
    import torch

    torch.save({"model": {"something_else": {"weight": torch.zeros(2)}}, "iteration": 1, "checkpoint_version": 3.0},
               fake / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt")
    (fake / "latest_checkpointed_iteration.txt").write_text("1")
    qqp = os.path.join(GLUE, "QQP")
    result = run_script("tasks/main.py", model_args() + ["--task", "QQP", "--pretrained-checkpoint", str(fake),
                                                         "--epochs", "1", "--train-data", f"{qqp}/train.tsv",
                                                         "--valid-data", f"{qqp}/dev.tsv"], check=False)
    assert result.returncode == 2 and "holds no weights of this BERT encoder" in result.stderr, result.stderr[-2000:]
