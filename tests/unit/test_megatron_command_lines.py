"""Megatron-LM users' command lines that must run here: --split written unquoted, pretraining GPT_ARGS
given to tools that do not train, fine-tuning lengths from --epochs, the reshard hint for a checkpoint of
another layout, and torch DDP without its deprecation warning."""
import os
import types
import warnings

import pytest
import torch

from megatron.arguments import parse_args

MODEL = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 32 "
         "--micro-batch-size 2 --global-batch-size 4 --vocab-size 100")
# Megatron's GPT_ARGS without --train-iters, as users pass them to generation and zero-shot evaluation.
SCHEDULE = " --lr 0.00015 --lr-decay-iters 320000 --lr-decay-style cosine --lr-warmup-fraction .01"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def parse(text, **defaults):
    return parse_args(argv=text.split(), defaults=defaults)


def test_split_written_unquoted_is_the_same_string(capsys):
    assert parse(MODEL + " --split 969, 30, 1").split == "969, 30, 1"
    assert parse(MODEL + " --split 949,50,1 --seed 3").split == "949,50,1"
    assert parse(MODEL).split == "969, 30, 1"


def test_tools_that_do_not_train_accept_the_training_schedule_and_say_it_has_no_effect(capsys):
    with pytest.raises(ValueError, match="--lr-decay-iters needs --train-iters or --train-samples"):
        parse(MODEL + SCHEDULE)  # pretraining still refuses a schedule without a length
    capsys.readouterr()
    args = parse(MODEL + SCHEDULE, training_schedule="none")
    assert args.lr_decay_steps is None and args.lr_warmup_steps is None
    notes = [line for line in capsys.readouterr().out.splitlines() if line.startswith("note:")]
    assert notes == ["note: this tool does not train; --lr-decay-iters, --lr-warmup-fraction (training schedule) "
                     "have no effect"]
    # GPT_ARGS with their length (and a rampup that needs samples) are accepted too, and OUTPUT_ARGS.
    parse(MODEL + SCHEDULE + " --train-iters 500000 --rampup-batch-size 2 2 100", training_schedule="none")
    capsys.readouterr()
    args = parse(MODEL + " --save-interval 10000 --eval-interval 1000", training_schedule="none")
    assert args.save is None and args.save_interval is None
    assert "note: this tool saves no checkpoint; --save-interval 10000 has no effect" in capsys.readouterr().out
    with pytest.raises(ValueError, match="--save-interval 10000 needs --save"):
        parse(MODEL + " --save-interval 10000")


def test_generation_and_zero_shot_tasks_choose_no_training_and_fine_tuning_epochs():
    from megatron.text_generation.cli import GENERATION_DEFAULTS
    from tasks.main import _task_defaults

    assert GENERATION_DEFAULTS["training_schedule"] == "none"
    for task, schedule in (("LAMBADA", "none"), ("WIKITEXT103", "none"), ("RETRIEVER-EVAL", "none"),
                           ("RACE", "epochs"), ("MNLI", "epochs"), ("QQP", "epochs")):
        assert _task_defaults(["--task", task])["training_schedule"] == schedule


def test_fine_tuning_takes_warmup_fraction_and_derives_the_length_from_epochs(capsys):
    from tasks.finetune_utils import _set_training_length

    race = MODEL + " --lr 1.0e-5 --lr-warmup-fraction 0.06 --weight-decay 1.0e-1"
    args = parse(race, training_schedule="epochs")  # no --epochs yet: evaluation only
    args = parse(race + " --train-iters 99", training_schedule="epochs")
    assert args.train_iters is None and "note: --train-iters 99 replaced" in capsys.readouterr().out
    args.epochs = 3
    assert _set_training_length(args, num_train_samples=50) == 12  # 50 // global batch 4
    assert (args.train_iters, args.lr_decay_steps, args.lr_warmup_steps) == (36, 144, pytest.approx(0.06 * 144))
    with pytest.raises(ValueError, match="--lr-warmup-samples does not apply to fine-tuning"):
        parse(MODEL + " --lr 1e-5 --lr-warmup-samples 10", training_schedule="epochs")
    with pytest.raises(ValueError, match="mutually exclusive"):
        parse(race + " --lr-warmup-iters 2", training_schedule="epochs")
    # Fine-tuning saves improvements, at no interval: --save alone is enough.
    assert parse(race + " --save /nonexistent/ft", training_schedule="epochs").save == "/nonexistent/ft"
    with pytest.raises(ValueError, match="needs --save-interval"):
        parse(MODEL + " --train-iters 4 --lr 1e-5 --save /nonexistent/pt")
    args = parse(MODEL + " --lr 1e-5 --lr-warmup-iters 40", training_schedule="epochs")
    args.epochs = 3
    with pytest.raises(ValueError, match="--lr-warmup-iters 40 exceeds the 36 iterations"):
        _set_training_length(args, num_train_samples=50)


def test_checkpoint_of_another_layout_points_at_checkpoint_util(tmp_path):
    from megatron.checkpointing import CheckpointError, _model_file, load_checkpoint, save_checkpoint
    from test_checkpointing import gpt, make_args

    save_checkpoint(1, [gpt(0)], None, None, make_args(tmp_path))
    load = make_args(tmp_path).load
    with pytest.raises(CheckpointError) as error:
        load_checkpoint([gpt(1)], None, None, make_args(tmp_path, tensor_model_parallel_size=2))
    assert "was saved with tensor_model_parallel_size 1 but this run has 2" in str(error.value)
    assert (f"reshard it to this layout first: python tools/checkpoint_util.py --load-dir {load} --save-dir "
            f"{load}_tp2_pp1 --target-tensor-parallel-size 2 --target-pipeline-parallel-size 1") in str(error.value)
    # Tensor-parallel rank 1 of a TP=2 run finds no file of its own in a TP=1 checkpoint.
    rank1 = types.SimpleNamespace(tp_rank=1, pp_rank=0, tensor_model_parallel_size=2, pipeline_model_parallel_size=1)
    with pytest.raises(CheckpointError, match=f"tools/checkpoint_util.py --load-dir {load} "):
        _model_file(os.path.join(load, "iter_0000001"), rank1)


def test_torch_ddp_wraps_without_a_deprecation_warning(tmp_path):
    import torch.distributed as dist

    from megatron.model_setup import _no_forward_buffer_sync

    if dist.is_initialized():
        pytest.skip("a process group is already initialised in this process")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/store", rank=0, world_size=1)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.nn.parallel.DistributedDataParallel(torch.nn.Linear(2, 2), **_no_forward_buffer_sync())
        assert not [w for w in caught if "broadcast_buffers" in str(w.message)]
    finally:
        dist.destroy_process_group()
