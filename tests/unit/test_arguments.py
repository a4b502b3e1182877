"""Flags -> args: Megatron names and defaults, old spellings, derived values, and every bad-argument message."""
import argparse
import re

import pytest
import torch

from megatron.arguments import parse_args, print_args, validate_args
from megatron.config_from_args import core_transformer_config_from_args

BASE = ("--num-layers 4 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 32 "
        "--micro-batch-size 2 --vocab-size 100")
TRAIN = BASE + " --train-iters 10 --lr 1e-3"


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def parse(text, world_size=None, monkeypatch=None, **kwargs):
    if world_size is not None:
        monkeypatch.setenv("WORLD_SIZE", str(world_size))
    return parse_args(argv=text.split(), **kwargs)


def test_megatron_defaults(capsys):
    args = parse(BASE)
    expected = dict(make_vocab_size_divisible_by=128, layernorm_epsilon=1e-5, attention_dropout=0.1,
                    hidden_dropout=0.1, weight_decay=0.01, clip_grad=1.0, adam_beta1=0.9, adam_beta2=0.999,
                    adam_eps=1e-8, sgd_momentum=0.9, log_interval=100, optimizer="adam", dataloader_type="single",
                    num_workers=2, seed=1234, init_method_std=0.02, lr_decay_style="linear", lr_warmup_iters=0,
                    min_lr=0.0, initial_loss_scale=2 ** 32, min_loss_scale=1.0, loss_scale_window=1000,
                    hysteresis=2, tensor_model_parallel_size=1, pipeline_model_parallel_size=1, DDP_impl="local",
                    eval_iters=100, eval_interval=1000, split="969, 30, 1", mask_prob=0.15, short_seq_prob=0.1,
                    data_impl="infer", tensorboard_log_interval=1, timing_log_level=0, bert_binary_head=True,
                    apply_query_key_layer_scaling=True, masked_softmax_fusion=True, bias_gelu_fusion=True,
                    bias_dropout_fusion=True, vocab_extra_ids=0, fp16=False, bf16=False)
    for name, value in expected.items():
        assert getattr(args, name) == value, name
    # Derived values.
    assert (args.world_size, args.rank, args.local_rank, args.data_parallel_size) == (1, 0, 0, 1)
    assert args.global_batch_size == 2 and args.num_micro_batches == 1
    assert args.kv_channels == 8 and args.ffn_hidden_size == 128 and args.encoder_seq_length == 16
    assert args.params_dtype == torch.float32 and args.virtual_pipeline_model_parallel_size is None
    assert (args.consumed_train_samples, args.consumed_valid_samples, args.iteration) == (0, 0, 0)
    assert args.padded_vocab_size == 128 and args.tokenizer_type is None
    assert parse(BASE.replace("--vocab-size 100", "--vocab-size 100 --vocab-extra-ids 30")).padded_vocab_size == 256


def test_environment_and_layout(monkeypatch, capsys):
    monkeypatch.setenv("RANK", "5")
    monkeypatch.setenv("LOCAL_RANK", "1")
    args = parse(BASE + " --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2", 8, monkeypatch)
    assert (args.world_size, args.rank, args.local_rank, args.data_parallel_size) == (8, 5, 1, 2)
    assert args.global_batch_size == 4
    assert capsys.readouterr().out == ""  # only rank 0 prints


def test_old_spellings(monkeypatch, capsys):
    args = parse(BASE.replace("--micro-batch-size 2", "--batch-size 3") +
                 " --model-parallel-size 2 --warmup 0.1 --checkpoint-activations --checkpoint-num-layers 2 "
                 "--train-iters 10 --lr 1e-3 --dataset-impl mmap --local_rank 0", 2, monkeypatch)
    assert args.micro_batch_size == 3 and args.tensor_model_parallel_size == 2 and args.lr_warmup_fraction == 0.1
    assert (args.recompute_granularity, args.recompute_method, args.recompute_num_layers) == ("full", "uniform", 2)
    assert args.data_impl == "mmap" and args.local_rank == 0
    for old in ("batch_size", "model_parallel_size", "warmup", "checkpoint_activations", "checkpoint_num_layers"):
        assert not hasattr(args, old)
    monkeypatch.setenv("WORLD_SIZE", "1")
    args = parse(BASE + " --activations-checkpoint-method block --activations-checkpoint-num-layers 2 "
                        "--data-impl mmap --local-rank 0 --use-rotary-position-embeddings")
    assert (args.recompute_granularity, args.recompute_method, args.recompute_num_layers) == ("full", "block", 2)
    assert args.data_impl == "mmap" and args.position_embedding_type == "rope"
    assert parse(BASE + " --recompute-activations").recompute_granularity == "selective"
    full = parse(BASE + " --recompute-granularity full --recompute-method uniform")
    assert full.recompute_num_layers == 1


def test_lr_schedule_resolution(capsys):
    args = parse(TRAIN + " --global-batch-size 8 --lr-warmup-iters 2")
    assert (args.lr_decay_iters, args.lr_decay_steps, args.lr_warmup_steps, args.wd_incr_steps) == (10, 80, 16, 80)
    args = parse(TRAIN + " --global-batch-size 8 --lr-decay-iters 5 --lr-warmup-fraction 0.5")
    assert (args.lr_decay_steps, args.lr_warmup_steps) == (40, 20)
    args = parse(BASE + " --train-samples 1000 --lr 1e-3 --lr-warmup-samples 100")
    assert (args.lr_decay_samples, args.lr_decay_steps, args.lr_warmup_steps, args.wd_incr_steps) == (1000, 1000, 100, 1000)
    args = parse(TRAIN + " --weight-decay-incr-style linear --start-weight-decay 0.0 --end-weight-decay 0.1")
    assert (args.start_weight_decay, args.end_weight_decay) == (0.0, 0.1)
    assert parse(TRAIN).start_weight_decay == parse(TRAIN).end_weight_decay == 0.01
    assert parse(TRAIN + " --override-lr-scheduler").override_opt_param_scheduler is True


def test_precision(capsys):
    args = parse(BASE + " --bf16")
    assert args.params_dtype == torch.bfloat16 and args.accumulate_allreduce_grads_in_fp32
    args = parse(BASE + " --fp16 --loss-scale 1024 --fp32-residual-connection --fp16-lm-cross-entropy")
    assert args.params_dtype == torch.half and args.loss_scale == 1024
    assert parse(BASE + " --no-query-key-layer-scaling").apply_query_key_layer_scaling is False
    assert parse(BASE + " --no-query-key-layer-scaling --attention-softmax-in-fp32").attention_softmax_in_fp32


def test_script_defaults_and_extra_args(capsys):
    def extra(parser):
        parser.add_argument("--my-flag", type=int, default=3)
        return parser

    args = parse(BASE.replace(" --vocab-size 100", "") + " --my-flag 4", extra_args_provider=extra,
                 defaults={"tokenizer_type": "GPT2BPETokenizer", "micro_batch_size": 7})
    assert args.my_flag == 4 and args.tokenizer_type == "GPT2BPETokenizer" and args.micro_batch_size == 2
    assert "WARNING: overriding default arguments for micro_batch_size:7 with micro_batch_size:2" in \
        capsys.readouterr().out
    # --vocab-size drops a script's default tokenizer, which would need files this run lacks.
    assert parse(BASE, defaults={"tokenizer_type": "GPT2BPETokenizer"}).tokenizer_type is None
    args = parse(BASE + " --unknown-flag 1", ignore_unknown_args=True)
    assert not hasattr(args, "unknown_flag")
    with pytest.raises(SystemExit):
        parse(BASE + " --unknown-flag 1")
    with pytest.raises(SystemExit):
        parse(BASE + " --optimizer lamb")
    with pytest.raises(SystemExit):  # no silent prefix matching
        parse(BASE + " --micro-batch 2")


def test_print_args_sorted_once(capsys):
    args = parse(BASE)
    out = capsys.readouterr().out
    block = out[out.index("------------------------ arguments ------------------------"):]
    assert block.rstrip().endswith("-------------------- end of arguments ---------------------")
    names = [line.split()[0] for line in block.splitlines()[1:-1]]
    assert names == sorted(names) and "micro_batch_size" in names and "_explicit_flags" not in names
    assert "  micro_batch_size ................................ 2" in block
    print_args(args)
    assert capsys.readouterr().out == ""


def test_validate_args_on_a_hand_built_namespace(capsys):
    args = parse(BASE)
    clean = argparse.Namespace(**{k: v for k, v in vars(args).items() if not k.startswith("_")})
    clean.global_batch_size = 5
    with pytest.raises(ValueError, match="--global-batch-size 5 is not divisible by --micro-batch-size 2 x "
                                         "data-parallel size 1"):
        validate_args(clean)


def test_core_config(capsys):
    args = parse(BASE + " --init-method-xavier-uniform --no-bias-gelu-fusion --openai-gelu --sequence-parallel "
                        "--recompute-granularity full --recompute-method block --recompute-num-layers 2")
    config = core_transformer_config_from_args(args)
    assert config.init_method is torch.nn.init.xavier_uniform_
    assert config.output_layer_init_method is torch.nn.init.xavier_uniform_
    assert not config.bias_gelu_fusion and config.openai_gelu
    assert config.sequence_parallel is False  # a single tensor-parallel rank has nothing to split
    assert (config.recompute_granularity, config.recompute_method, config.recompute_num_layers) == ("full", "block", 2)
    assert config.use_cpu_initialization is True
    assert core_transformer_config_from_args(parse(BASE + " --no-use-cpu-initialization")).use_cpu_initialization is False


def test_optimizer_and_ddp_configs(capsys):
    pytest.importorskip("megatron.core.optimizer.config")
    pytest.importorskip("megatron.core.distributed.config")
    from megatron.config_from_args import ddp_config_from_args, optimizer_config_from_args

    args = parse(TRAIN + " --bf16 --optimizer sgd --sgd-momentum 0.5 --clip-grad 0 --use-distributed-optimizer")
    opt = optimizer_config_from_args(args)
    assert (opt.optimizer, opt.lr, opt.sgd_momentum, opt.clip_grad, opt.bf16) == ("sgd", 1e-3, 0.5, 0.0, True)
    assert opt.params_dtype == torch.bfloat16 and opt.use_distributed_optimizer
    ddp = ddp_config_from_args(args)
    assert ddp.grad_reduce_in_fp32 and ddp.use_distributed_optimizer
    assert optimizer_config_from_args(parse(TRAIN + " --fp16 --loss-scale 8")).loss_scale == 8


# Each bad argument: (flags added to BASE, world size, the message).
BAD = [
    ("--global-batch-size 10 --micro-batch-size 4", 1,
     "--global-batch-size 10 is not divisible by --micro-batch-size 4 x data-parallel size 1"),
    ("--global-batch-size 6", 2, "--global-batch-size 6 is not divisible by --micro-batch-size 2 x data-parallel size 2"),
    ("--tensor-model-parallel-size 4", 6,
     "world size 6 is not divisible by --tensor-model-parallel-size 4 x --pipeline-model-parallel-size 1"),
    ("--tensor-model-parallel-size 8", 8, "--num-attention-heads 4 is not divisible by --tensor-model-parallel-size 8"),
    ("--num-attention-heads 5", 1, "--hidden-size 32 is not divisible by --num-attention-heads 5 (or give --kv-channels)"),
    ("--ffn-hidden-size 30 --tensor-model-parallel-size 4", 4,
     "--ffn-hidden-size 30 is not divisible by --tensor-model-parallel-size 4"),
    ("--pipeline-model-parallel-size 3", 3, "--num-layers 4 is not divisible by --pipeline-model-parallel-size 3"),
    ("--num-layers-per-virtual-pipeline-stage 1", 1,
     "--num-layers-per-virtual-pipeline-stage (the interleaved schedule) needs --pipeline-model-parallel-size >= 2, "
     "got 1"),
    ("--num-layers 8 --pipeline-model-parallel-size 4 --num-layers-per-virtual-pipeline-stage 3", 4,
     "--num-layers 8 is not divisible by --pipeline-model-parallel-size 4 x --num-layers-per-virtual-pipeline-stage 3"),
    ("--num-layers 8 --pipeline-model-parallel-size 4 --num-layers-per-virtual-pipeline-stage 1 "
     "--global-batch-size 12 --micro-batch-size 2", 4,
     "6 micro-batches per iteration is not divisible by --pipeline-model-parallel-size 4 (the interleaved schedule"),
    ("--pipeline-model-parallel-size 2 --pipeline-model-parallel-split-rank 2", 2,
     "--pipeline-model-parallel-split-rank 2 must lie in [1, --pipeline-model-parallel-size 2 - 1]"),
    ("--pipeline-model-parallel-size 4 --pipeline-model-parallel-split-rank 1", 4,
     "--num-layers 4 is not divisible by the 3 decoder stages"),
    ("--fp16 --bf16", 1, "--fp16 and --bf16 are mutually exclusive"),
    ("--train-iters 10 --train-samples 100 --lr 1", 1,
     "--train-iters 10 and --train-samples 100 are mutually exclusive"),
    ("--train-iters 10 --lr 1 --global-batch-size 8 --rampup-batch-size 2 2 100", 1,
     "--rampup-batch-size needs --train-samples (ramp-up is defined in samples), not --train-iters"),
    ("--train-samples 100 --lr 1 --global-batch-size 8 --rampup-batch-size 2 2", 1,
     "--rampup-batch-size takes 3 values (start, increment, samples), got 2: 2 2"),
    ("--train-samples 100 --lr 1 --global-batch-size 8 --rampup-batch-size 3 5 100", 1,
     "--rampup-batch-size start 3 is not divisible by --micro-batch-size 2 x data-parallel size 1"),
    ("--rampup-batch-size 2 2 10 --global-batch-size 8", 1, "--rampup-batch-size needs --train-iters or --train-samples"),
    ("--seq-length 64", 1, "--seq-length 64 exceeds --max-position-embeddings 32"),
    ("--decoder-seq-length 40", 1, "--decoder-seq-length 40 exceeds --max-position-embeddings 32"),
    ("--encoder-seq-length 8", 1, "--seq-length 16 contradicts --encoder-seq-length 8"),
    ("--save /tmp/x", 1, "--save /tmp/x needs --save-interval"),
    ("--save-interval 5", 1, "--save-interval 5 needs --save"),
    ("--finetune", 1, "--finetune needs --load"),
    ("--no-load-optim", 1, "--no-load-optim needs --load"),
    ("--no-save-rng", 1, "--no-save-rng needs --save"),
    ("--use-checkpoint-lr-scheduler", 1, "--use-checkpoint-lr-scheduler needs --load"),
    ("--train-iters 10 --lr 1 --override-lr-scheduler --use-checkpoint-lr-scheduler --load /tmp/x", 1,
     "--override-lr-scheduler and --use-checkpoint-lr-scheduler are mutually exclusive"),
    ("--train-iters 10 --lr 1 --lr-warmup-fraction 0.1 --lr-warmup-iters 2", 1,
     "--lr-warmup-fraction 0.1 and --lr-warmup-iters 2 are mutually exclusive"),
    ("--train-samples 100 --lr 1 --lr-warmup-fraction 0.1 --lr-warmup-samples 2", 1,
     "--lr-warmup-fraction 0.1 and --lr-warmup-samples 2 are mutually exclusive"),
    ("--train-iters 10 --lr 1 --lr-warmup-samples 5", 1, "--lr-warmup-samples 5 needs --train-samples, not --train-iters"),
    ("--train-iters 10 --lr 1 --lr-decay-samples 5", 1, "--lr-decay-samples 5 needs --train-samples, not --train-iters"),
    ("--train-samples 100 --lr 1 --lr-decay-iters 5", 1, "--lr-decay-iters 5 needs --train-iters, not --train-samples"),
    ("--train-samples 100 --lr 1 --lr-warmup-iters 5", 1, "--lr-warmup-iters 5 needs --train-iters, not --train-samples"),
    ("--train-iters 10 --lr 1 --lr-warmup-iters 20", 1,
     "lr warmup of 40 samples exceeds the lr decay of 20 samples"),
    ("--train-iters 10 --lr 1 --lr-warmup-fraction 1.5", 1, "--lr-warmup-fraction 1.5 must lie in [0, 1]"),
    ("--lr-warmup-iters 2", 1, "--lr-warmup-iters needs --train-iters or --train-samples"),
    ("--train-iters 10", 1, "--lr is required for training (--train-iters/--train-samples given)"),
    ("--train-iters 10 --lr 0.1 --min-lr 0.2", 1, "--min-lr 0.2 exceeds --lr 0.1"),
    ("--train-iters 10 --lr 1 --start-weight-decay 0.1", 1,
     "--start-weight-decay needs --weight-decay-incr-style linear|cosine"),
    ("--train-iters 10 --lr 1 --weight-decay-incr-style cosine", 1, "--start-weight-decay is required"),
    ("--DDP-impl torch --use-distributed-optimizer", 1,
     "--use-distributed-optimizer is not supported with --DDP-impl torch"),
    ("--DDP-impl torch --bf16", 1,
     "--accumulate-allreduce-grads-in-fp32 (--bf16 forces it) is not supported with --DDP-impl torch"),
    ("--fp32-residual-connection", 1, "--fp32-residual-connection needs --fp16 or --bf16"),
    ("--bf16 --fp16-lm-cross-entropy", 1, "--fp16-lm-cross-entropy needs --fp16"),
    ("--loss-scale 128", 1, "--loss-scale needs --fp16 (loss scaling applies to fp16 training only)"),
    ("--bf16 --hysteresis 4", 1, "--hysteresis needs --fp16"),
    ("--fp16 --initial-loss-scale 0.5", 1, "--initial-loss-scale 0.5 is below --min-loss-scale 1"),
    ("--recompute-granularity full", 1, "--recompute-granularity full needs --recompute-method uniform|block"),
    ("--recompute-method uniform", 1, "--recompute-method uniform needs --recompute-granularity full"),
    ("--recompute-num-layers 2", 1, "--recompute-num-layers 2 needs --recompute-granularity full"),
    ("--recompute-granularity full --recompute-method block --recompute-num-layers 3 --pipeline-model-parallel-size 2",
     2, "--recompute-num-layers 3 exceeds the 2 layers of a pipeline stage (--recompute-method block)"),
    ("--recompute-activations --checkpoint-activations", 1,
     "--checkpoint-activations (full recomputation) contradicts selective recomputation"),
    ("--checkpoint-activations --recompute-method block", 1,
     "--checkpoint-activations (uniform) contradicts --recompute-method block"),
    ("--recompute-granularity full --recompute-method uniform --recompute-num-layers 2 --checkpoint-num-layers 3", 1,
     "--checkpoint-num-layers 3 contradicts --recompute-num-layers 2"),
    ("--checkpoint-activations --distribute-checkpointed-activations", 1,
     "--distribute-saved-activations is not supported"),
    ("--batch-size 3", 1, "--batch-size 3 contradicts --micro-batch-size 2"),
    ("--model-parallel-size 2 --tensor-model-parallel-size 1", 2,
     "--model-parallel-size 2 contradicts --tensor-model-parallel-size 1"),
    ("--use-rotary-position-embeddings --position-embedding-type learned_absolute", 1,
     "--use-rotary-position-embeddings contradicts --position-embedding-type learned_absolute"),
    ("--rotary-percent 0.5", 1, "--rotary-percent needs --position-embedding-type rope"),
    ("--tensor-model-parallel-size 2 --sequence-parallel --seq-length 15", 2,
     "--seq-length 15 is not divisible by --tensor-model-parallel-size 2 (--sequence-parallel)"),
    ("--init-method-xavier-uniform --init-method-std 0.01", 1,
     "--init-method-std has no effect with --init-method-xavier-uniform"),
    ("--log-timers-to-tensorboard", 1, "--log-timers-to-tensorboard needs --tensorboard-dir"),
    ("--no-log-loss-scale-to-tensorboard", 1, "--no-log-loss-scale-to-tensorboard needs --tensorboard-dir"),
    ("--vocab-file /tmp/vocab.txt", 1, "--vocab-size 100 cannot be combined with --vocab-file"),
    ("--tokenizer-type GPT2BPETokenizer", 1,
     "--vocab-size 100 replaces the tokenizer: drop --tokenizer-type GPT2BPETokenizer"),
    ("--data-impl lazy", 1, "--data-impl lazy is not supported: training reads the mmap format"),
    ("--data-path a --train-data-path b", 1, "--data-path cannot be combined with --train-data-path"),
    ("--world-size 8", 1, "--world-size 8 is only used with --dry-run; launchers set WORLD_SIZE"),
    ("--attention-dropout 1.0", 1, "--attention-dropout 1.0 must lie in [0, 1)"),
    ("--micro-batch-size 0", 1, "--micro-batch-size 0 must be >= 1"),
    ("--log-interval 0", 1, "--log-interval 0 must be >= 1"),
    ("--distributed-timeout-minutes 0", 1, "--distributed-timeout-minutes 0.0 must be positive"),
    ("--clip-grad -1", 1, "--clip-grad -1.0 must be >= 0"),
    ("--train-iters 10 --lr 0.1 --lr-warmup-init 0.5", 1, "--lr-warmup-init 0.5 must lie in [0, --lr 0.1]"),
    ("--lr-warmup-init 0.5", 1, "--lr-warmup-init needs --train-iters or --train-samples"),
    ("--peak-flops-per-gpu 0", 1, "--peak-flops-per-gpu 0 must be positive"),
]


@pytest.mark.parametrize("flags,world_size,message", BAD, ids=[case[2][:60] for case in BAD])
def test_bad_arguments(flags, world_size, message, monkeypatch, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(BASE + " " + flags, world_size, monkeypatch)


@pytest.mark.parametrize("remove,message", [
    ("--num-layers 4", "--num-layers is required"),
    ("--micro-batch-size 2", "--micro-batch-size is required"),
    ("--seq-length 16", "--seq-length (or --encoder-seq-length) is required"),
    ("--max-position-embeddings 32", "--max-position-embeddings is required"),
])
def test_missing_required(remove, message, capsys):
    with pytest.raises(ValueError, match=re.escape(message)):
        parse(BASE.replace(remove, ""))


def test_rope_needs_no_position_table(capsys):
    args = parse(BASE.replace("--max-position-embeddings 32", "") + " --position-embedding-type rope "
                 "--decoder-seq-length 24")
    assert args.max_position_embeddings == 24


def test_environment_errors(monkeypatch, capsys):
    monkeypatch.setenv("LOCAL_RANK", "1")
    with pytest.raises(ValueError, match=re.escape("--local_rank 0 disagrees with LOCAL_RANK=1")):
        parse(BASE + " --local_rank 0")
    monkeypatch.setenv("RANK", "4")
    with pytest.raises(ValueError, match="RANK 4 is outside world size 2"):
        parse(BASE, 2, monkeypatch)


def test_tensorboard_dir_needs_the_package(monkeypatch, tmp_path, capsys):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "tensorboard" else real(name, *a))
    with pytest.raises(ValueError, match=r"--tensorboard-dir .* needs the tensorboard package, which is not installed "
                                         r"\(pip install tensorboard\)"):
        parse(BASE + f" --tensorboard-dir {tmp_path}")
