"""Fine-tuning under model parallelism: MNLI and RACE at TP2 (from a TP2-resharded checkpoint)
and at PP2 (from a PP2-resharded one) report the same accuracies, epoch by epoch, and the same
losses as one process fine-tuning the original TP1/PP1 checkpoint."""
import os

import pytest

from test_tasks_finetune import GLUE, LOSS_RE, RACE, bert_checkpoint, metrics, model_args  # noqa: F401
from test_training_lib import run_script


def reshard(source: str, target: str, tp: int = 1, pp: int = 1) -> str:
    run_script("tools/checkpoint_util.py", ["--model-type", "BERT", "--load-dir", source, "--save-dir", target,
                                            "--target-tensor-parallel-size", str(tp),
                                            "--target-pipeline-parallel-size", str(pp)])
    return target


def mnli_args(checkpoint: str):
    mnli = os.path.join(GLUE, "MNLI")
    return model_args() + ["--task", "MNLI", "--pretrained-checkpoint", checkpoint, "--epochs", "2",
                           "--train-data", f"{mnli}/train.tsv", "--valid-data", f"{mnli}/dev_matched.tsv",
                           f"{mnli}/dev_mismatched.tsv"]


def race_args(checkpoint: str):
    return model_args() + ["--task", "RACE", "--pretrained-checkpoint", checkpoint, "--epochs", "1",
                           "--train-data", f"{RACE}/train", "--valid-data", f"{RACE}/dev/middle",
                           f"{RACE}/dev/high", "--keep-last"]


def assert_same_run(want_stdout: str, got_stdout: str, num_losses: int) -> None:
    want, got = metrics(want_stdout), metrics(got_stdout)
    assert want and got == want
    want_losses = [float(x) for x in LOSS_RE.findall(want_stdout)]
    got_losses = [float(x) for x in LOSS_RE.findall(got_stdout)]
    assert len(want_losses) == num_losses and got_losses == pytest.approx(want_losses, rel=1e-4)


@pytest.fixture(scope="module")
def mnli_reference(bert_checkpoint):  # noqa: F811
    return run_script("tasks/main.py", mnli_args(bert_checkpoint)).stdout


@pytest.mark.slow
def test_tensor_parallel_finetuning_matches_one_process(bert_checkpoint, mnli_reference, tmp_path):  # noqa: F811
    tp2 = reshard(bert_checkpoint, str(tmp_path / "tp2"), tp=2)
    got = run_script("tasks/main.py", mnli_args(tp2) + ["--tensor-model-parallel-size", "2"], nproc=2).stdout
    assert_same_run(mnli_reference, got, num_losses=4)


@pytest.mark.slow
def test_pipeline_parallel_finetuning_matches_one_process(bert_checkpoint, mnli_reference, tmp_path):  # noqa: F811
    pp2 = reshard(bert_checkpoint, str(tmp_path / "pp2"), pp=2)
    save = str(tmp_path / "mnli_pp2")
    got = run_script("tasks/main.py", mnli_args(pp2) + ["--pipeline-model-parallel-size", "2", "--save", save,
                                                        "--save-interval", "1000"], nproc=2).stdout
    assert_same_run(mnli_reference, got, num_losses=4)
    # The kept checkpoint (one file per stage) evaluates, forward-only through the pipeline, to its epoch's numbers.
    with open(os.path.join(save, "latest_checkpointed_iteration.txt")) as handle:
        best_epoch = int(handle.read()) // 2
    assert sorted(os.listdir(os.path.join(save, f"iter_{2 * best_epoch:07d}"))) == ["mp_rank_00_000", "mp_rank_00_001"]
    mnli = os.path.join(GLUE, "MNLI")
    again = run_script("tasks/main.py", model_args() + [
        "--task", "MNLI", "--epochs", "0", "--load", save, "--pipeline-model-parallel-size", "2", "--valid-data",
        f"{mnli}/dev_matched.tsv", f"{mnli}/dev_mismatched.tsv"], nproc=2).stdout
    want = metrics(got)
    assert metrics(again) == {(0, n): want[(best_epoch, n)] for n in ("dev_matched", "dev_mismatched")}


@pytest.mark.slow
def test_pipeline_parallel_multiple_choice_matches_one_process(bert_checkpoint, tmp_path):  # noqa: F811
    """RACE sends [s, choices x b, h] between stages: the schedule must be told the flattened rows."""
    want = run_script("tasks/main.py", race_args(bert_checkpoint)).stdout
    pp2 = reshard(bert_checkpoint, str(tmp_path / "pp2"), pp=2)
    got = run_script("tasks/main.py", race_args(pp2) + ["--pipeline-model-parallel-size", "2"], nproc=2).stdout
    assert_same_run(want, got, num_losses=1)


@pytest.mark.slow
def test_multiple_choice_head_is_saved_under_megatron_name(bert_checkpoint, tmp_path):  # noqa: F811
    import torch

    save = str(tmp_path / "race")
    run_script("tasks/main.py", race_args(bert_checkpoint) + ["--save", save, "--save-interval", "1000"])
    with open(os.path.join(save, "latest_checkpointed_iteration.txt")) as handle:
        iteration = int(handle.read())
    state = torch.load(os.path.join(save, f"iter_{iteration:07d}", "mp_rank_00", "model_optim_rng.pt"),
                       map_location="cpu", weights_only=False)["model"]
    assert set(state["multichoice_head"]) == {"weight", "bias"} and state["multichoice_head"]["weight"].shape == (1, 32)
    assert "classification_head" not in state
