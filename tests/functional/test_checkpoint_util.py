"""tools/checkpoint_util.py and tools/merge_mp_partitions.py end to end: a GPT trained at TP2 x PP2
is resharded, and every layout computes the same validation and test losses (fixed batches) as the
original computed at the end of its training."""
import os
import re
import subprocess
import sys

import pytest

from test_training_lib import REPO, demo_data, gpt_args, run_script

COMMON = ["--split", "90,8,2", "--num-workers", "0"]
TP2PP2 = ["--tensor-model-parallel-size", "2", "--pipeline-model-parallel-size", "2"]


@pytest.fixture(scope="module")
def data():
    return demo_data()


def eval_losses(stdout):
    """The validation losses at the first evaluation and at the end, and the test loss."""
    return [float(value) for value in re.findall(r"(?:validation|test) loss at .*?lm loss value: (\S+)", stdout)]


@pytest.fixture(scope="module")
def trained(data, tmp_path_factory):
    """A GPT checkpoint trained 4 iterations at TP2 x PP2, and its losses on the validation/test batches."""
    save = str(tmp_path_factory.mktemp("ckpt") / "tp2pp2")
    result = run_script("pretrain_gpt.py", gpt_args(data, *COMMON, *TP2PP2, "--save", save, "--save-interval", "4",
                                                    "--eval-interval", "4", train_iters=4), nproc=4, timeout=600)
    want = eval_losses(result.stdout)
    assert len(want) == 3, result.stdout[-2000:]
    return save, want


def loaded_losses(data, load, nproc, layout):
    """The same evaluations from the loaded weights: one step at learning rate 0 leaves them unchanged, and
    --finetune starts the validation data from its first batch as the original's first evaluation did."""
    args = gpt_args(data, *COMMON, "--load", load, "--finetune", "--lr", "0", "--min-lr", "0",
                    "--lr-warmup-iters", "0", "--eval-interval", "1", *layout,
                    train_iters=None) + ["--train-iters", "1"]
    return eval_losses(run_script("pretrain_gpt.py", args, nproc=nproc, timeout=600).stdout)


def tool(script, *args, check=True):
    result = subprocess.run([sys.executable, os.path.join(REPO, "tools", script), *args],
                            capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stderr
    return result


def test_reshard_to_tp1_gives_the_same_loss(data, trained, tmp_path):
    trained, original_loss = trained
    out = str(tmp_path / "tp1")
    tool("checkpoint_util.py", "--model-type", "GPT", "--load-dir", trained, "--save-dir", out,
         "--target-tensor-parallel-size", "1", "--target-pipeline-parallel-size", "1")
    assert sorted(os.listdir(os.path.join(out, "iter_0000004"))) == ["mp_rank_00"]
    with open(os.path.join(out, "latest_checkpointed_iteration.txt")) as f:
        assert f.read().strip() == "4"
    assert loaded_losses(data, out, 1, []) == pytest.approx(original_loss, rel=1e-5)


@pytest.mark.slow
def test_reshard_to_tp4_gives_the_same_loss(data, trained, tmp_path):
    trained, original_loss = trained
    out = str(tmp_path / "tp4")
    tool("checkpoint_util.py", "--load-dir", trained, "--save-dir", out, "--target-tensor-parallel-size", "4")
    assert sorted(os.listdir(os.path.join(out, "iter_0000004"))) == [f"mp_rank_0{i}" for i in range(4)]
    assert loaded_losses(data, out, 4, ["--tensor-model-parallel-size", "4"]) == pytest.approx(original_loss, rel=1e-5)


@pytest.mark.slow
def test_merge_mp_partitions_keeps_pipeline_stages(data, trained, tmp_path):
    trained, original_loss = trained
    out = str(tmp_path / "merged")
    tool("merge_mp_partitions.py", "--model-type", "GPT", "--tensor-model-parallel-size", "2",
         "--target-pipeline-model-parallel-size", "2", "--load", trained, "--save", out)
    assert sorted(os.listdir(os.path.join(out, "iter_0000004"))) == ["mp_rank_00_000", "mp_rank_00_001"]
    got = loaded_losses(data, out, 2, ["--pipeline-model-parallel-size", "2"])
    assert got == pytest.approx(original_loss, rel=1e-5)


def test_bad_targets_fail_with_a_message(trained, tmp_path, capsys):
    trained = trained[0]
    from tools.checkpoint_util import main as checkpoint_util
    from tools.merge_mp_partitions import main as merge_mp_partitions

    assert checkpoint_util(["--load-dir", trained, "--save-dir", str(tmp_path / "x"),
                            "--target-tensor-parallel-size", "3"]) == 1
    assert "--target-tensor-parallel-size 3 does not divide num_attention_heads 4" in capsys.readouterr().err
    assert merge_mp_partitions(["--model-type", "GPT", "--tensor-model-parallel-size", "4", "--load", trained,
                                "--save", str(tmp_path / "y")]) == 1
    assert "saved with tensor_model_parallel_size 2" in capsys.readouterr().err
    assert checkpoint_util(["--load-dir", str(tmp_path / "none"), "--save-dir", str(tmp_path / "z")]) == 1
    assert "no checkpoint tracker file" in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "x") and not os.path.exists(tmp_path / "y")


def t5_args(data, *extra):
    from megatron.tokenizer import bert_uncased_vocab_path

    return ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--kv-channels", "8",
            "--ffn-hidden-size", "128", "--encoder-seq-length", "32", "--decoder-seq-length", "16",
            "--max-position-embeddings", "32", "--micro-batch-size", "2", "--global-batch-size", "8",
            "--lr", "1e-3", "--min-lr", "1e-4", "--lr-decay-style", "cosine", "--weight-decay", "0.01",
            "--clip-grad", "1.0", "--hidden-dropout", "0", "--attention-dropout", "0", "--seed", "1234",
            "--data-path", f"{data}/bert_text_sentence", "--vocab-file", bert_uncased_vocab_path(),
            "--vocab-extra-ids", "100", "--log-interval", "1", "--eval-iters", "1",
            "--distributed-backend", "gloo", *COMMON, *extra]


@pytest.mark.slow
def test_t5_split_pipeline_checkpoint_reshards_to_tp1_with_the_same_loss(data, tmp_path):
    """T5 trained at TP2 x PP2 (split rank 1), resharded to TP1 x PP1 and back to PP2 at TP1."""
    save = str(tmp_path / "t5_tp2pp2")
    layout = [*TP2PP2, "--pipeline-model-parallel-split-rank", "1"]
    result = run_script("pretrain_t5.py", t5_args(data, *layout, "--train-iters", "4", "--lr-warmup-iters", "2",
                                                  "--save", save, "--save-interval", "4", "--eval-interval", "4"),
                        nproc=4, timeout=600)
    want = eval_losses(result.stdout)
    assert len(want) == 3, result.stdout[-2000:]

    def losses(load, nproc, *flags):
        args = t5_args(data, "--load", load, "--finetune", "--lr", "0", "--min-lr", "0", "--lr-warmup-iters", "0",
                       "--eval-interval", "1", "--train-iters", "1", *flags)
        return eval_losses(run_script("pretrain_t5.py", args, nproc=nproc, timeout=600).stdout)

    tp1 = str(tmp_path / "t5_tp1")
    tool("checkpoint_util.py", "--model-type", "T5", "--load-dir", save, "--save-dir", tp1)
    assert sorted(os.listdir(os.path.join(tp1, "iter_0000004"))) == ["mp_rank_00"]
    assert losses(tp1, 1) == pytest.approx(want, rel=1e-5)
    pp2 = str(tmp_path / "t5_pp2")
    tool("checkpoint_util.py", "--load-dir", tp1, "--save-dir", pp2, "--target-pipeline-parallel-size", "2")
    assert losses(pp2, 2, "--pipeline-model-parallel-size", "2", "--pipeline-model-parallel-split-rank", "1") == \
        pytest.approx(want, rel=1e-5)


# -- choosing the iteration, and the model type (checkpoints written in-process, no training) ----
def _tiny_checkpoint(directory, iterations=(3, 5), bert=False):
    """A tiny GPT (or BERT) saved at each of ``iterations`` with different weights; the tracker names the last."""
    import argparse

    import torch

    from megatron.checkpoint_tools.reshard import write_checkpoint
    from megatron.core.models import BertModel, GPTModel
    from megatron.core.transformer import TransformerConfig

    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0)
    args = argparse.Namespace(num_layers=2, hidden_size=32, num_attention_heads=4, kv_channels=8, ffn_hidden_size=128,
                              max_position_embeddings=16, seq_length=16, padded_vocab_size=64,
                              make_vocab_size_divisible_by=8, tensor_model_parallel_size=1,
                              pipeline_model_parallel_size=1, layernorm_epsilon=1e-5, openai_gelu=True,
                              bias_gelu_fusion=True, hidden_dropout=0.0, attention_dropout=0.0, tokenizer_type=None)
    weights = {}
    for iteration in iterations:
        torch.manual_seed(iteration)
        model = BertModel(config, 64, 16) if bert else GPTModel(config, 64, 16)
        weights[iteration] = {k: v.clone() for k, v in model.state_dict().items()}
        write_checkpoint(str(directory), {(0, 0): dict(model.state_dict())}, args, iteration, release=False)
    return str(directory), weights


def _merged(directory):
    from megatron.checkpoint_tools.reshard import SourceCheckpoint, merge_shards

    source = SourceCheckpoint(str(directory))
    return source.iteration, merge_shards(source)


def _same(full, weights):
    import torch

    return sorted(full) == sorted(weights) and all(torch.equal(full[k], weights[k]) for k in weights)


def test_converters_take_an_iteration_or_an_iter_directory(tmp_path, capsys):
    from tools.checkpoint_util import main as checkpoint_util
    from tools.convert_hf_checkpoint import main as convert_hf
    from tools.merge_mp_partitions import main as merge_mp

    ckpt, weights = _tiny_checkpoint(tmp_path / "gpt")
    assert (tmp_path / "gpt" / "latest_checkpointed_iteration.txt").read_text().strip() == "5"
    resharded = tmp_path / "tp2_it3"
    assert checkpoint_util(["--model-type", "GPT", "--load-dir", ckpt, "--iteration", "3", "--save-dir",
                            str(resharded), "--target-tensor-parallel-size", "2"]) == 0
    iteration, full = _merged(resharded)
    assert iteration == 3 and _same(full, weights[3])
    assert checkpoint_util(["--load-dir", os.path.join(ckpt, "iter_0000003"), "--save-dir", str(tmp_path / "b")]) == 0
    iteration, full = _merged(tmp_path / "b")
    assert iteration == 3 and _same(full, weights[3])
    assert checkpoint_util(["--load-dir", ckpt, "--save-dir", str(tmp_path / "latest")]) == 0
    assert _same(_merged(tmp_path / "latest")[1], weights[5])

    assert merge_mp(["--model-type", "GPT", "--tensor-model-parallel-size", "2", "--load",
                     os.path.join(str(resharded), "iter_0000003"), "--save", str(tmp_path / "merged")]) == 0
    assert _same(_merged(tmp_path / "merged")[1], weights[3])
    assert merge_mp(["--model-type", "GPT", "--tensor-model-parallel-size", "1", "--load", ckpt, "--iteration", "3",
                     "--save", str(tmp_path / "merged3")]) == 0
    assert _same(_merged(tmp_path / "merged3")[1], weights[3])

    from safetensors.torch import load_file

    assert convert_hf(["--direction", "to-hf", "--model-type", "GPT", "--load", ckpt, "--iteration", "3",
                       "--save", str(tmp_path / "hf")]) == 0
    exported = load_file(str(tmp_path / "hf" / "model.safetensors"))
    import torch

    assert torch.equal(exported["transformer.wte.weight"], weights[3]["language_model.embedding.word_embeddings.weight"])

    capsys.readouterr()
    assert checkpoint_util(["--load-dir", ckpt, "--iteration", "4", "--save-dir", str(tmp_path / "c")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--iteration 4:" in err[0] and "holds iterations [3, 5]" in err[0], err


def test_checkpoint_util_refuses_a_wrong_model_type(tmp_path, capsys):
    from tools.checkpoint_util import main as checkpoint_util
    from tools.merge_mp_partitions import main as merge_mp

    gpt, _ = _tiny_checkpoint(tmp_path / "gpt", iterations=(2,))
    bert, _ = _tiny_checkpoint(tmp_path / "bert", iterations=(2,), bert=True)
    capsys.readouterr()
    assert checkpoint_util(["--model-type", "BERT", "--load-dir", gpt, "--save-dir", str(tmp_path / "a")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--model-type BERT but" in err[0] and "holds a GPT model" in err[0], err
    assert not os.path.exists(tmp_path / "a")
    assert checkpoint_util(["--model-type", "GPT", "--load-dir", bert, "--save-dir", str(tmp_path / "b")]) == 1
    err = capsys.readouterr().err
    assert "--model-type GPT but" in err and "holds a BERT model (it has " in err
    assert checkpoint_util(["--model-type", "T5", "--load-dir", gpt, "--save-dir", str(tmp_path / "c")]) == 1
    assert merge_mp(["--model-type", "BERT", "--load", gpt, "--save", str(tmp_path / "d")]) == 1
    assert "holds a GPT model" in capsys.readouterr().err
    assert checkpoint_util(["--model-type", "BERT", "--load-dir", bert, "--save-dir", str(tmp_path / "e")]) == 0
