"""The example scripts (the README's command lines) run as written, scaled down by the variables the
README names, on the demo data with the scripts' own --split (949,50,1 leaves its 391 documents no test
document: that evaluation is skipped with a warning). ``python`` on PATH fails here: the scripts run
``${PYTHON:-python3}``."""
import os
import subprocess

import pytest

from test_training_lib import REPO, _free_port, demo_data, parse_iterations, script_env

TINY = {"NUM_LAYERS": "2", "HIDDEN_SIZE": "32", "NUM_HEADS": "4", "SEQ_LENGTH": "32", "MICRO_BATCH_SIZE": "2",
        "GLOBAL_BATCH_SIZE": "4", "TRAIN_ITERS": "4", "LR_DECAY_ITERS": "4", "LOG_INTERVAL": "1",
        "SAVE_INTERVAL": "2", "EVAL_INTERVAL": "2", "EVAL_ITERS": "1", "PRECISION": "",
        "EXTRA_ARGS": "--num-workers 0"}


@pytest.fixture(scope="module")
def data():
    return demo_data()


def _run_example(name: str, env: dict, timeout: float = 300) -> subprocess.CompletedProcess:
    # A free port for the scripts that launch torchrun (their default 6000 may be taken).
    full_env = script_env(MASTER_PORT=str(_free_port()), **TINY)
    full_env.update(env)
    result = subprocess.run(["bash", os.path.join(REPO, "examples", name)], cwd=REPO, env=full_env,
                            capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, f"{name} exited {result.returncode}\n{result.stdout[-2000:]}\n{result.stderr[-4000:]}"
    return result


def _check_trained(result, checkpoint_dir, keys=("lm loss",), test_split_empty=True):
    parsed = parse_iterations(result.stdout)
    assert sorted(parsed) == [1, 2, 3, 4]
    for key in keys:
        assert all(parsed[i][key] > 0 for i in parsed), key
    assert "validation loss at iteration 2" in result.stdout
    if test_split_empty:
        assert "the test split of --split 949,50,1 is empty (0 of 391 documents): test evaluation is skipped" \
            in result.stdout
        assert "test loss" not in result.stdout
    assert (checkpoint_dir / "latest_checkpointed_iteration.txt").read_text().strip() == "4"


def test_pretrain_gpt_example(data, tmp_path):
    result = _run_example("pretrain_gpt.sh", {
        "DATA_PATH": f"{data}/gpt_text_document", "VOCAB_FILE": f"{data}/gpt2/vocab.json",
        "MERGE_FILE": f"{data}/gpt2/merges.txt", "CHECKPOINT_PATH": str(tmp_path / "gpt")})
    _check_trained(result, tmp_path / "gpt")


def test_pretrain_bert_example(data, tmp_path):
    result = _run_example("pretrain_bert.sh", {"DATA_PATH": f"{data}/bert_text_sentence",
                                               "CHECKPOINT_PATH": str(tmp_path / "bert")})
    _check_trained(result, tmp_path / "bert", keys=("lm loss", "sop loss"))


def test_pretrain_t5_example(data, tmp_path):
    result = _run_example("pretrain_t5.sh", {"DATA_PATH": f"{data}/bert_text_sentence",
                                             "CHECKPOINT_PATH": str(tmp_path / "t5"), "DECODER_SEQ_LENGTH": "16",
                                             "KV_CHANNELS": "8", "FFN_HIDDEN_SIZE": "128"})
    _check_trained(result, tmp_path / "t5")


def test_pretrain_gpt_distributed_with_mp_example(data, tmp_path):
    result = _run_example("pretrain_gpt_distributed_with_mp.sh", {
        "GPUS_PER_NODE": "2", "TP": "1", "PP": "2",
        "DATA_PATH": f"{data}/gpt_text_document", "VOCAB_FILE": f"{data}/gpt2/vocab.json",
        "MERGE_FILE": f"{data}/gpt2/merges.txt", "CHECKPOINT_PATH": str(tmp_path / "gpt")})
    _check_trained(result, tmp_path / "gpt")


@pytest.mark.slow
@pytest.mark.parametrize("name,env", [
    ("pretrain_gpt_distributed.sh", {"GLOBAL_BATCH_SIZE": "8"}),
    ("pretrain_bert_distributed.sh", {"GLOBAL_BATCH_SIZE": "8"}),
    ("pretrain_t5_distributed.sh", {"GLOBAL_BATCH_SIZE": "8", "DECODER_SEQ_LENGTH": "16", "KV_CHANNELS": "8",
                                    "FFN_HIDDEN_SIZE": "128"}),
    ("pretrain_bert_distributed_with_mp.sh", {"TP": "2", "PP": "1"}),
    ("pretrain_t5_distributed.sh", {"DECODER_SEQ_LENGTH": "16", "KV_CHANNELS": "8", "FFN_HIDDEN_SIZE": "128",
                                    "EXTRA_ARGS": "--num-workers 0 --pipeline-model-parallel-size 2 "
                                                  "--pipeline-model-parallel-split-rank 1"}),
])
def test_distributed_examples(data, tmp_path, name, env):
    is_bert = "bert" in name or "t5" in name
    paths = ({"DATA_PATH": f"{data}/bert_text_sentence"} if is_bert else
             {"DATA_PATH": f"{data}/gpt_text_document", "VOCAB_FILE": f"{data}/gpt2/vocab.json",
              "MERGE_FILE": f"{data}/gpt2/merges.txt"})
    result = _run_example(name, {"GPUS_PER_NODE": "2", "CHECKPOINT_PATH": str(tmp_path / "ckpt"),
                                 **paths, **env}, timeout=600)
    _check_trained(result, tmp_path / "ckpt", keys=("lm loss", "sop loss") if "bert" in name else ("lm loss",))


@pytest.mark.slow
def test_gpt3_175B_example_runs_scaled_down_without_slurm(data, tmp_path):
    result = _run_example("pretrain_gpt3_175B.sh", {
        "NNODES": "1", "GPUS_PER_NODE": "2", "TP": "1", "PP": "2", "MICRO_BATCH_SIZE": "1", "GLOBAL_BATCH_SIZE": "4",
        "RAMPUP_BATCH_SIZE": "", "TRAIN_SAMPLES": "16", "LR_DECAY_SAMPLES": "16", "LR_WARMUP_SAMPLES": "4",
        "EVAL_INTERVAL": "2", "DATA_PATH": f"{data}/gpt_text_document",
        "VOCAB_FILE": f"{data}/gpt2/vocab.json", "MERGE_FILE": f"{data}/gpt2/merges.txt",
        "CHECKPOINT_PATH": str(tmp_path / "ckpt"), "SAVE_INTERVAL": "2"}, timeout=600)
    _check_trained(result, tmp_path / "ckpt", test_split_empty=False)  # its split is 98,2,0
