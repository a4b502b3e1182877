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


# -- the README's fine-tuning command lines (Megatron-LM's), run as written, sizes aside ------------------
def _readme_blocks():
    with open(os.path.join(REPO, "README.md")) as handle:
        return re.findall(r"```bash\n(.*?)```", handle.read(), re.S)


def _readme_finetune_script(task: str, bert_checkpoint: str, save: str) -> str:
    """The README's block for ``task`` (after the RACE block's shared variables), with the sizes of the
    tiny test checkpoint, the shipped sample files and ``python`` meaning the interpreter under test."""
    from megatron.tokenizer import bert_uncased_vocab_path

    race = next(block for block in _readme_blocks() if "--task RACE" in block)
    script = race if task == "RACE" else race[:race.index("TRAIN_DATA=")] + next(
        block for block in _readme_blocks() if f"--task {task}" in block)
    script = re.sub(r"^PRETRAINED_CHECKPOINT=\S+", f"PRETRAINED_CHECKPOINT={bert_checkpoint}", script, flags=re.M)
    script = re.sub(r"^VOCAB_FILE=\S+", f"VOCAB_FILE={bert_uncased_vocab_path()}", script, flags=re.M)
    script = re.sub(r"^CHECKPOINT_PATH=\S+", f"CHECKPOINT_PATH={save}", script, flags=re.M)
    script = script.replace("data/RACE/", RACE + "/").replace("data/glue_data/MNLI/", f"{GLUE}/MNLI/")
    for flag, size in (("--num-layers", 2), ("--hidden-size", 32), ("--num-attention-heads", 4),
                       ("--seq-length", 32), ("--max-position-embeddings", 32)):
        script = re.sub(rf"{flag} \d+", f"{flag} {size}", script)
    script = script.replace('--vocab-file $VOCAB_FILE"', '--vocab-file $VOCAB_FILE --make-vocab-size-divisible-by 256"')
    return 'python() { "$PYTHON_UNDER_TEST" "$@"; }\nset -e\n' + script


def _run_readme(task, bert_checkpoint, tmp_path):
    import subprocess
    import sys

    save = str(tmp_path / task.lower())
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", PYTHON_UNDER_TEST=sys.executable)
    result = subprocess.run(["bash", "-c", _readme_finetune_script(task, bert_checkpoint, save)], cwd=REPO, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{result.stdout[-2000:]}\n{result.stderr[-3000:]}"
    return result.stdout, save


def test_readme_race_command_line_runs_and_evaluates_dev_sets_smaller_than_a_batch(bert_checkpoint, tmp_path):
    stdout, save = _run_readme("RACE", bert_checkpoint, tmp_path)
    # --micro-batch-size 4 against dev sets of 2 and 3 questions: each is evaluated whole, not 0 / 0.
    assert {key: total for key, (_, total) in metrics(stdout).items()} == {
        (e, n): t for e in (1, 2, 3) for n, t in (("dev_middle", 2), ("dev_high", 3))}
    assert " > dev_middle: 2 examples, fewer than one batch (--micro-batch-size 4 x 1 data-parallel ranks)" in stdout
    assert os.path.isfile(os.path.join(save, "latest_checkpointed_iteration.txt"))
    # The log says where the weights come from; --fp16 on this CPU is called out once.
    assert "no --load given" not in stdout
    assert f"fine-tuning from --pretrained-checkpoint {bert_checkpoint} (encoder weights)" in stdout
    assert stdout.count("notice: --fp16 on a CPU") == 1
    assert "--eval-interval, --eval-iters, --save-interval have no effect" in stdout


def test_readme_mnli_command_line_runs(bert_checkpoint, tmp_path):
    stdout, _ = _run_readme("MNLI", bert_checkpoint, tmp_path)
    assert {key: total for key, (_, total) in metrics(stdout).items()} == {
        (e, n): 4 for e in range(1, 6) for n in ("dev_matched", "dev_mismatched")}
