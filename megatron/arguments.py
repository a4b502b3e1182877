"""Megatron flags -> validated ``args`` -> the core's config dataclasses.

Every check lives in ``validate_args`` and fails with one line that names the flag(s) and the
numbers. Attribute names are Megatron's (``args.micro_batch_size``,
``args.tensor_model_parallel_size`` ...), so scripts and checkpoints written for Megatron-LM
read the same. Deprecated spellings are folded into the current ones and then removed from
``args``.
"""
import argparse
import importlib.util
import os
import sys
from typing import Optional, Set

import torch

from megatron.argument_groups import build_parser
from megatron.core import layer_layout
from megatron.tokenizer.build import vocab_size_with_padding


def _explicit_flags(extra_args_provider, argv) -> Set[str]:
    """Destinations the user set on the command line (defaults suppressed), to tell "given" from "default"."""
    parser = build_parser(extra_args_provider)
    for action in parser._actions:
        action.default = argparse.SUPPRESS
    namespace, _ = parser.parse_known_args(argv)
    return set(vars(namespace))


def parse_args(extra_args_provider=None, defaults={}, ignore_unknown_args=False, argv=None) -> argparse.Namespace:
    """Parse ``argv`` (default ``sys.argv[1:]``), apply the script's ``defaults`` where a flag was
    not given, take rank and world size from the launcher, validate and print the arguments."""
    parser = build_parser(extra_args_provider)
    argv = sys.argv[1:] if argv is None else list(argv)
    if ignore_unknown_args:
        args, _ = parser.parse_known_args(argv)
    else:
        args = parser.parse_args(argv)
    args._explicit_flags = _explicit_flags(extra_args_provider, argv)
    _set_rank_and_world_size(args)
    validate_args(args, defaults)
    print_args(args)
    return args


def _env_int(name: str) -> Optional[int]:
    value = os.environ.get(name)
    if value is None or value == "":
        return None
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"environment variable {name}={value!r} is not an integer") from None


def _set_rank_and_world_size(args) -> None:
    """torchrun and torch.distributed.launch set RANK/WORLD_SIZE/LOCAL_RANK; --dry-run takes --world-size."""
    env_rank, env_world, env_local = _env_int("RANK"), _env_int("WORLD_SIZE"), _env_int("LOCAL_RANK")
    dry_run_world_size = getattr(args, "dry_run_world_size", None)
    local_rank = getattr(args, "local_rank", None)
    if getattr(args, "dry_run", False):
        if dry_run_world_size is None:
            raise ValueError("--dry-run needs --world-size N (the number of ranks to plan for)")
        args.world_size, args.rank = dry_run_world_size, 0
    else:
        if dry_run_world_size is not None:
            raise ValueError(f"--world-size {dry_run_world_size} is only used with --dry-run; "
                             "launchers set WORLD_SIZE")
        args.world_size = env_world if env_world is not None else 1
        args.rank = env_rank if env_rank is not None else 0
    if args.world_size < 1:
        raise ValueError(f"world size {args.world_size} must be at least 1")
    if not 0 <= args.rank < args.world_size:
        raise ValueError(f"RANK {args.rank} is outside world size {args.world_size}")
    if env_local is not None and local_rank is not None and env_local != local_rank:
        raise ValueError(f"--local_rank {local_rank} disagrees with LOCAL_RANK={env_local}")
    args.local_rank = local_rank if local_rank is not None else (env_local if env_local is not None else 0)


_PARSER_DEFAULTS = None


def _given(args, name: str) -> bool:
    global _PARSER_DEFAULTS
    explicit = getattr(args, "_explicit_flags", None)
    if explicit is not None:
        return name in explicit
    # A namespace built without parse_args: a value that differs from the flag's default was given.
    if _PARSER_DEFAULTS is None:
        _PARSER_DEFAULTS = vars(build_parser().parse_known_args([])[0])
    return getattr(args, name, None) != _PARSER_DEFAULTS.get(name)


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _fold_deprecated(args) -> None:
    """Map 2020/2021 spellings onto the current attributes, refusing contradictions."""
    def fold(old, new, old_flag):
        value = getattr(args, old, None)
        if old in vars(args):
            delattr(args, old)
        if value is None:
            return
        current = getattr(args, new, None)
        if current is not None and current != value:
            raise ValueError(f"{old_flag} {value} contradicts {_flag(new)} {current}")
        setattr(args, new, value)

    fold("batch_size", "micro_batch_size", "--batch-size")
    fold("model_parallel_size", "tensor_model_parallel_size", "--model-parallel-size")
    fold("warmup", "lr_warmup_fraction", "--warmup")
    fold("ict_head_size", "biencoder_projection_dim", "--ict-head-size")
    if getattr(args, "biencoder_projection_dim", None) is None:
        args.biencoder_projection_dim = 0
    if getattr(args, "tensor_model_parallel_size", None) is None:
        args.tensor_model_parallel_size = 1

    # Recomputation: four generations of flags onto granularity / method / num_layers.
    old_num = [(getattr(args, n, None), f) for n, f in (("checkpoint_num_layers", "--checkpoint-num-layers"),
                                                        ("activations_checkpoint_num_layers",
                                                         "--activations-checkpoint-num-layers"))]
    methods = []
    if getattr(args, "checkpoint_activations", False):
        methods.append(("uniform", "--checkpoint-activations"))
    if getattr(args, "activations_checkpoint_method", None) is not None:
        methods.append((args.activations_checkpoint_method, "--activations-checkpoint-method"))
    selective = getattr(args, "recompute_activations", False)
    for name in ("checkpoint_activations", "checkpoint_num_layers", "activations_checkpoint_method",
                 "activations_checkpoint_num_layers", "recompute_activations"):
        if name in vars(args):
            delattr(args, name)
    if selective:
        if args.recompute_granularity not in (None, "selective"):
            raise ValueError(f"--recompute-activations (selective) contradicts --recompute-granularity "
                             f"{args.recompute_granularity}")
        args.recompute_granularity = "selective"
    for method, flag in methods:
        if args.recompute_granularity == "selective":
            raise ValueError(f"{flag} (full recomputation) contradicts selective recomputation")
        if args.recompute_method is not None and args.recompute_method != method:
            raise ValueError(f"{flag} ({method}) contradicts --recompute-method {args.recompute_method}")
        args.recompute_granularity, args.recompute_method = "full", method
    for value, flag in old_num:
        if value is None:
            continue
        if args.recompute_num_layers is not None and args.recompute_num_layers != value:
            raise ValueError(f"{flag} {value} contradicts --recompute-num-layers {args.recompute_num_layers}")
        args.recompute_num_layers = value

    if getattr(args, "use_rotary_position_embeddings", False):
        if _given(args, "position_embedding_type") and args.position_embedding_type != "rope":
            raise ValueError(f"--use-rotary-position-embeddings contradicts --position-embedding-type "
                             f"{args.position_embedding_type}")
        args.position_embedding_type = "rope"
    if "use_rotary_position_embeddings" in vars(args):
        delattr(args, "use_rotary_position_embeddings")

    # --no-position-embedding: implied by rope, otherwise no position information at all.
    if not getattr(args, "add_position_embedding", True):
        if _given(args, "position_embedding_type") and args.position_embedding_type == "learned_absolute":
            raise ValueError("--no-position-embedding contradicts --position-embedding-type learned_absolute")
        if args.position_embedding_type == "learned_absolute":
            args.position_embedding_type = "none"
    if "add_position_embedding" in vars(args):
        delattr(args, "add_position_embedding")
    # --norm-epsilon (megatron-core) and --layernorm-epsilon name the same value.
    norm_epsilon = getattr(args, "norm_epsilon", None)
    if norm_epsilon is not None:
        if _given(args, "layernorm_epsilon") and args.layernorm_epsilon != norm_epsilon:
            raise ValueError(f"--norm-epsilon {norm_epsilon} contradicts --layernorm-epsilon {args.layernorm_epsilon}")
        args.layernorm_epsilon = norm_epsilon
    if "norm_epsilon" in vars(args):
        delattr(args, "norm_epsilon")


def _require(args, *names) -> None:
    for name in names:
        if getattr(args, name, None) is None:
            raise ValueError(f"{_flag(name)} is required")


def _positive(args, *names, allow_zero=False) -> None:
    for name in names:
        value = getattr(args, name, None)
        if value is not None and (value < 0 or (value == 0 and not allow_zero)):
            raise ValueError(f"{_flag(name)} {value} must be {'>= 0' if allow_zero else '>= 1'}")


def _validate_layout(args) -> None:
    tp, pp, world = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.world_size
    _positive(args, "tensor_model_parallel_size", "pipeline_model_parallel_size")
    if world % (tp * pp) != 0:
        raise ValueError(f"world size {world} is not divisible by --tensor-model-parallel-size {tp} x "
                         f"--pipeline-model-parallel-size {pp}")
    args.data_parallel_size = world // (tp * pp)
    split = args.pipeline_model_parallel_split_rank
    layers = args.num_layers
    args.virtual_pipeline_model_parallel_size = None
    per_virtual = args.num_layers_per_virtual_pipeline_stage
    if per_virtual is not None:
        _positive(args, "num_layers_per_virtual_pipeline_stage")
        if layers % pp != 0 or (layers // pp) % per_virtual != 0:
            raise ValueError(f"--num-layers {layers} is not divisible by --pipeline-model-parallel-size {pp} x "
                             f"--num-layers-per-virtual-pipeline-stage {per_virtual}")
        args.virtual_pipeline_model_parallel_size = layers // pp // per_virtual
    # The rules themselves live in megatron.core.layer_layout, shared with the model and the tools.
    layer_layout.check_layer_layout(layers, pp, args.virtual_pipeline_model_parallel_size, split, _LAYOUT_FLAGS)


_LAYOUT_FLAGS = {"num_layers": "--num-layers", "pp": "--pipeline-model-parallel-size",
                 "virtual": "--num-layers-per-virtual-pipeline-stage", "split": "--pipeline-model-parallel-split-rank",
                 "recompute_num_layers": "--recompute-num-layers", "recompute_method": "--recompute-method",
                 "recompute_granularity": "--recompute-granularity"}


def fewest_layers_per_model_chunk(args) -> int:
    """Layers of the smallest model chunk of the layout (encoder or decoder side)."""
    return layer_layout.fewest_layers_per_model_chunk(args.num_layers, args.pipeline_model_parallel_size,
                                                      args.virtual_pipeline_model_parallel_size,
                                                      args.pipeline_model_parallel_split_rank)


def _validate_model(args) -> None:
    _require(args, "num_layers", "hidden_size", "num_attention_heads")
    _positive(args, "num_layers", "hidden_size", "num_attention_heads", "kv_channels", "ffn_hidden_size",
              "make_vocab_size_divisible_by")
    tp = args.tensor_model_parallel_size
    if args.num_attention_heads % tp != 0:
        raise ValueError(f"--num-attention-heads {args.num_attention_heads} is not divisible by "
                         f"--tensor-model-parallel-size {tp}")
    if getattr(args, "group_query_attention", False):
        if args.num_query_groups is None:
            args.num_query_groups = 1
        _positive(args, "num_query_groups")
        if args.num_attention_heads % args.num_query_groups != 0:
            raise ValueError(f"--num-attention-heads {args.num_attention_heads} is not divisible by "
                             f"--num-query-groups {args.num_query_groups}")
        if args.num_query_groups % tp != 0:
            raise ValueError(f"--num-query-groups {args.num_query_groups} is not divisible by "
                             f"--tensor-model-parallel-size {tp} (each rank holds whole key/value groups)")
    elif getattr(args, "num_query_groups", None) not in (None, args.num_attention_heads):
        # (Equal to the heads is what validation sets without grouping, so re-validating is harmless.)
        raise ValueError(f"--num-query-groups {args.num_query_groups} needs --group-query-attention")
    else:
        args.num_query_groups = args.num_attention_heads
    if args.kv_channels is None:
        if args.hidden_size % args.num_attention_heads != 0:
            raise ValueError(f"--hidden-size {args.hidden_size} is not divisible by --num-attention-heads "
                             f"{args.num_attention_heads} (or give --kv-channels)")
        args.kv_channels = args.hidden_size // args.num_attention_heads
    if args.ffn_hidden_size is None:
        if args.swiglu:
            # Two input projections: 2/3 of 4h keeps the parameter count of the 4h GeLU MLP (Megatron's rule).
            args.ffn_hidden_size = int((4 * args.hidden_size * 2 / 3) / 64) * 64
            if args.ffn_hidden_size < 1:
                raise ValueError(f"--swiglu with --hidden-size {args.hidden_size} gives no MLP width; "
                                 "give --ffn-hidden-size")
        else:
            args.ffn_hidden_size = 4 * args.hidden_size
    if args.ffn_hidden_size % tp != 0:
        raise ValueError(f"--ffn-hidden-size {args.ffn_hidden_size} is not divisible by "
                         f"--tensor-model-parallel-size {tp}")
    for name in ("attention_dropout", "hidden_dropout"):
        if not 0.0 <= getattr(args, name) < 1.0:
            raise ValueError(f"{_flag(name)} {getattr(args, name)} must lie in [0, 1)")
    if not 0.0 < args.rotary_percent <= 1.0:
        raise ValueError(f"--rotary-percent {args.rotary_percent} must lie in (0, 1]")
    if _given(args, "rotary_percent") and args.position_embedding_type != "rope":
        raise ValueError("--rotary-percent needs --position-embedding-type rope")
    if _given(args, "rotary_base") and args.position_embedding_type != "rope":
        raise ValueError("--rotary-base needs --position-embedding-type rope")
    if args.rotary_base <= 0:
        raise ValueError(f"--rotary-base {args.rotary_base:g} must be positive")
    rotated = int(args.kv_channels * args.rotary_percent)
    if args.position_embedding_type == "rope" and (rotated % 2 != 0 or rotated == 0):
        raise ValueError(f"--rotary-percent {args.rotary_percent} x kv channels {args.kv_channels} must give an even "
                         "number of rotated channels")

    # Sequence lengths: --seq-length and --encoder-seq-length name the same thing.
    if args.seq_length is not None and args.encoder_seq_length is not None and args.seq_length != args.encoder_seq_length:
        raise ValueError(f"--seq-length {args.seq_length} contradicts --encoder-seq-length {args.encoder_seq_length}")
    if args.seq_length is None and args.encoder_seq_length is None:
        raise ValueError("--seq-length (or --encoder-seq-length) is required")
    args.seq_length = args.encoder_seq_length = args.seq_length or args.encoder_seq_length
    _positive(args, "seq_length", "decoder_seq_length")
    if args.position_embedding_type == "learned_absolute":
        _require(args, "max_position_embeddings")
        _positive(args, "max_position_embeddings")
        for name in ("seq_length", "decoder_seq_length"):
            value = getattr(args, name)
            if value is not None and value > args.max_position_embeddings:
                raise ValueError(f"{_flag(name)} {value} exceeds --max-position-embeddings "
                                 f"{args.max_position_embeddings}")
    elif args.max_position_embeddings is None:
        args.max_position_embeddings = max(args.seq_length, args.decoder_seq_length or 0)

    if tp == 1 and args.sequence_parallel:
        # Nothing to split with one tensor-parallel rank; Megatron turns it off the same way.
        args.sequence_parallel = False
    if args.sequence_parallel:
        for name in ("seq_length", "decoder_seq_length"):
            value = getattr(args, name)
            if value is not None and value % tp != 0:
                raise ValueError(f"{_flag(name)} {value} is not divisible by --tensor-model-parallel-size {tp} "
                                 "(--sequence-parallel)")

    if args.apply_query_key_layer_scaling is None:
        args.apply_query_key_layer_scaling = True
    if args.apply_query_key_layer_scaling:
        # The 1/layer scaling is multiplied back inside the softmax, which is exact only in fp32.
        args.attention_softmax_in_fp32 = True
    if args.use_cpu_initialization is None:
        args.use_cpu_initialization = True
    _note_settings_without_effect(args)
    if args.init_method_xavier_uniform and _given(args, "init_method_std"):
        raise ValueError("--init-method-std has no effect with --init-method-xavier-uniform; give one of them")
    _validate_mup(args)


def _validate_mup(args) -> None:
    """--use-mup and its base sizes; the base model's derived sizes are checked by building its config."""
    names = ("mup_base_hidden_size", "mup_base_num_attention_heads", "mup_base_ffn_hidden_size")
    if not getattr(args, "use_mup", False):
        for name in names:
            if getattr(args, name, None) is not None:
                raise ValueError(f"{_flag(name)} needs --use-mup")
        return
    _require(args, "mup_base_hidden_size")
    _positive(args, *names)
    if args.optimizer != "adam":
        raise ValueError(f"--use-mup needs --optimizer adam (its per-parameter learning rates are Adam's rule), "
                         f"got --optimizer {args.optimizer}")
    if args.init_method_xavier_uniform:
        raise ValueError("--use-mup scales the normal --init-method-std initialisation; it cannot be combined with "
                         "--init-method-xavier-uniform")
    from megatron.core.transformer import TransformerConfig

    try:
        TransformerConfig(num_layers=args.num_layers, hidden_size=args.hidden_size,
                          num_attention_heads=args.num_attention_heads, num_query_groups=args.num_query_groups,
                          kv_channels=args.kv_channels, ffn_hidden_size=args.ffn_hidden_size, use_mup=True,
                          mup_base_hidden_size=args.mup_base_hidden_size,
                          mup_base_num_attention_heads=args.mup_base_num_attention_heads,
                          mup_base_ffn_hidden_size=args.mup_base_ffn_hidden_size)
    except ValueError as error:
        raise ValueError(f"--use-mup: {error} (flags --mup-base-hidden-size, --mup-base-num-attention-heads, "
                         "--mup-base-ffn-hidden-size)") from None


def _note_settings_without_effect(args) -> None:
    """Megatron flags that users' command lines carry but that change nothing here: accepted, with
    one line each (rank 0) saying so."""
    notes = []
    if getattr(args, "onnx_safe", False):
        notes.append("--onnx-safe has no effect: the unfused GeLU already is the exportable erf form")
    if _given(args, "gradient_accumulation_fusion"):
        notes.append("--no-gradient-accumulation-fusion has no effect: weight gradients are always accumulated "
                     "by autograd (there is no fused weight-gradient kernel here)")
    # Nothing reads it: Megatron's fused weight-gradient GEMM (an apex/CUDA extension) does not exist here.
    args.gradient_accumulation_fusion = False
    explicit_softmax = getattr(args, "torch_compile", False) and getattr(args, "attention_dropout", 0.0) > 0
    if not getattr(args, "masked_softmax_fusion", True) and not explicit_softmax:
        notes.append("--no-masked-softmax-fusion has no effect in this run: attention runs torch's "
                     "scaled_dot_product_attention, which computes its own softmax (the separate softmax runs "
                     "only under --torch-compile with attention dropout)")
    if notes and args.rank == 0:
        for note in notes:
            print(f"note: {note}", flush=True)


def _validate_recompute(args) -> None:
    if getattr(args, "distribute_saved_activations", False):
        raise ValueError("--distribute-saved-activations is not supported: recomputation checkpoints are kept whole "
                         "on each tensor-parallel rank")
    if args.recompute_granularity == "full" and args.recompute_num_layers is None:
        args.recompute_num_layers = 1  # Megatron's default for full recomputation
    layer_layout.check_recompute(args.recompute_granularity, args.recompute_method, args.recompute_num_layers,
                                 _LAYOUT_FLAGS)
    if args.recompute_granularity == "full":
        layer_layout.check_recompute_layers(args.recompute_method, args.recompute_num_layers,
                                            fewest_layers_per_model_chunk(args), _LAYOUT_FLAGS)


def _validate_batch(args) -> None:
    from megatron.microbatches import build_num_microbatches_calculator

    _require(args, "micro_batch_size")
    _positive(args, "micro_batch_size", "global_batch_size")
    unit = args.micro_batch_size * args.data_parallel_size
    if args.global_batch_size is None:
        args.global_batch_size = unit
        if args.rank == 0:
            print(f"setting global batch size to {args.global_batch_size}", flush=True)
    if args.global_batch_size % unit != 0:
        raise ValueError(f"--global-batch-size {args.global_batch_size} is not divisible by --micro-batch-size "
                         f"{args.micro_batch_size} x data-parallel size {args.data_parallel_size}")
    if args.rampup_batch_size is not None and len(args.rampup_batch_size) == 0:
        raise ValueError("--rampup-batch-size takes 3 values: start increment samples")
    if args.rampup_batch_size:
        try:
            args.rampup_batch_size = [int(v) for v in args.rampup_batch_size]
        except ValueError:
            raise ValueError(f"--rampup-batch-size values must be integers, got "
                             f"{' '.join(args.rampup_batch_size)}") from None
    # Builds (and so checks) the ramp-up arithmetic without printing; global_vars builds the real one.
    calculator = build_num_microbatches_calculator(1, args.rampup_batch_size, args.global_batch_size,
                                                   args.micro_batch_size, args.data_parallel_size)
    args.num_micro_batches = args.global_batch_size // unit
    pp = args.pipeline_model_parallel_size
    if args.virtual_pipeline_model_parallel_size is not None:
        counts = {args.num_micro_batches}
        if args.rampup_batch_size:
            counts |= {calculator.start_batch_size // unit, calculator.batch_size_increment // unit}
        for count in sorted(counts):
            if count % pp != 0:
                raise ValueError(f"{count} micro-batches per iteration is not divisible by "
                                 f"--pipeline-model-parallel-size {pp} (the interleaved schedule needs it)")


# What a script trains, chosen by the script through its ``args_defaults`` (not a flag):
#   "iterations" (pretraining, the default): the length is --train-iters or --train-samples;
#   "epochs" (tasks/main.py fine-tuning): the length comes from --epochs and the training data;
#   "none" (generation, zero-shot evaluation): nothing trains, and the training-schedule flags of
#   the user's pretraining arguments (Megatron's GPT_ARGS) are accepted and have no effect.
TRAINING_SCHEDULES = ("iterations", "epochs", "none")
_SCHEDULE_FLAGS = ("train_iters", "train_samples", "lr_decay_iters", "lr_decay_samples", "lr_warmup_iters",
                   "lr_warmup_samples", "lr_warmup_fraction", "lr_warmup_init", "rampup_batch_size")


def training_schedule(args) -> str:
    schedule = getattr(args, "training_schedule", None) or "iterations"
    if schedule not in TRAINING_SCHEDULES:
        raise ValueError(f"training_schedule {schedule!r} (a script default) must be one of {TRAINING_SCHEDULES}")
    return schedule


def _schedule_flags_given(args):
    return [_flag(name) for name in _SCHEDULE_FLAGS if _given(args, name) and getattr(args, name) not in (None, 0, [])]


def _validate_training_length(args) -> None:
    schedule = training_schedule(args)
    if schedule == "none":
        given = _schedule_flags_given(args)
        if given and args.rank == 0:
            print(f"note: this tool does not train; {', '.join(given)} (training schedule) "
                  f"{'has' if len(given) == 1 else 'have'} no effect", flush=True)
        args.lr_decay_steps = args.lr_warmup_steps = args.wd_incr_steps = None
        return
    if schedule == "epochs":
        _validate_epochs_schedule(args)
        return
    _positive(args, "train_iters", "train_samples", "lr_decay_iters", "lr_decay_samples")
    _positive(args, "lr_warmup_iters", "lr_warmup_samples", allow_zero=True)
    if args.train_iters is not None and args.train_samples is not None:
        raise ValueError(f"--train-iters {args.train_iters} and --train-samples {args.train_samples} are mutually "
                         "exclusive")
    fraction = args.lr_warmup_fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--lr-warmup-fraction {fraction} must lie in [0, 1]")
    if args.train_iters is not None:
        for name, zero in (("lr_decay_samples", None), ("lr_warmup_samples", 0)):
            if getattr(args, name) not in (None, zero):
                raise ValueError(f"{_flag(name)} {getattr(args, name)} needs --train-samples, not --train-iters")
        if args.rampup_batch_size:
            raise ValueError("--rampup-batch-size needs --train-samples (ramp-up is defined in samples), "
                             "not --train-iters")
        if fraction is not None and args.lr_warmup_iters != 0:
            raise ValueError(f"--lr-warmup-fraction {fraction} and --lr-warmup-iters {args.lr_warmup_iters} are "
                             "mutually exclusive")
        gbs = args.global_batch_size
        if args.lr_decay_iters is None:
            args.lr_decay_iters = args.train_iters
        # The scheduler counts samples; iteration flags are scaled by the (constant) global batch.
        args.lr_decay_steps = args.lr_decay_iters * gbs
        args.wd_incr_steps = args.train_iters * gbs
        args.lr_warmup_steps = fraction * args.lr_decay_steps if fraction is not None else args.lr_warmup_iters * gbs
    elif args.train_samples is not None:
        for name, zero in (("lr_decay_iters", None), ("lr_warmup_iters", 0)):
            if getattr(args, name) not in (None, zero):
                raise ValueError(f"{_flag(name)} {getattr(args, name)} needs --train-iters, not --train-samples")
        if fraction is not None and args.lr_warmup_samples != 0:
            raise ValueError(f"--lr-warmup-fraction {fraction} and --lr-warmup-samples {args.lr_warmup_samples} are "
                             "mutually exclusive")
        if args.lr_decay_samples is None:
            args.lr_decay_samples = args.train_samples
        args.lr_decay_steps = args.lr_decay_samples
        args.wd_incr_steps = args.train_samples
        args.lr_warmup_steps = fraction * args.lr_decay_steps if fraction is not None else args.lr_warmup_samples
    else:
        for name in ("lr_decay_iters", "lr_decay_samples", "lr_warmup_iters", "lr_warmup_samples",
                     "lr_warmup_fraction", "lr_warmup_init", "rampup_batch_size"):
            if _given(args, name) and getattr(args, name) not in (None, 0, []):
                raise ValueError(f"{_flag(name)} needs --train-iters or --train-samples")
        args.lr_decay_steps = args.lr_warmup_steps = args.wd_incr_steps = None
        return
    if args.lr is None:
        raise ValueError("--lr is required for training (--train-iters/--train-samples given)")
    _validate_lr_and_weight_decay(args)


def _validate_epochs_schedule(args) -> None:
    """Fine-tuning: tasks.finetune_utils turns --epochs into iterations once it has read the data;
    the warm-up and decay flags are checked here, in iterations (a fraction of them for
    --lr-warmup-fraction, as in Megatron-LM's README command lines for RACE and MNLI)."""
    _positive(args, "lr_decay_iters")
    _positive(args, "lr_warmup_iters", allow_zero=True)
    fraction = args.lr_warmup_fraction
    if fraction is not None and not 0.0 <= fraction <= 1.0:
        raise ValueError(f"--lr-warmup-fraction {fraction} must lie in [0, 1]")
    for name in ("lr_decay_samples", "lr_warmup_samples", "rampup_batch_size"):
        if _given(args, name) and getattr(args, name) not in (None, 0, []):
            raise ValueError(f"{_flag(name)} does not apply to fine-tuning, which counts iterations: its length is "
                             "--epochs passes over --train-data (warm-up: --lr-warmup-fraction or --lr-warmup-iters)")
    replaced = [f"{_flag(name)} {getattr(args, name)}" for name in ("train_iters", "train_samples")
                if getattr(args, name, None) is not None]
    if replaced and args.rank == 0:
        # Megatron-LM overwrites them the same way: pretraining arguments reused for a task still run.
        print(f"note: {' and '.join(replaced)} replaced: fine-tuning runs --epochs passes over --train-data",
              flush=True)
    args.train_iters = args.train_samples = None
    if fraction is not None and args.lr_warmup_iters != 0:
        raise ValueError(f"--lr-warmup-fraction {fraction} and --lr-warmup-iters {args.lr_warmup_iters} are "
                         "mutually exclusive")
    args.lr_decay_steps = args.lr_warmup_steps = args.wd_incr_steps = None  # set from --epochs
    if not getattr(args, "epochs", None):
        return  # evaluation only
    if args.lr is None:
        raise ValueError(f"--lr is required for fine-tuning (--epochs {args.epochs} given)")
    _validate_lr_and_weight_decay(args)


def _validate_lr_and_weight_decay(args) -> None:
    if args.lr < 0 or args.min_lr < 0:
        raise ValueError(f"--lr {args.lr} and --min-lr {args.min_lr} must be >= 0")
    if args.min_lr > args.lr:
        raise ValueError(f"--min-lr {args.min_lr} exceeds --lr {args.lr}")
    if not 0.0 <= args.lr_warmup_init <= args.lr:
        raise ValueError(f"--lr-warmup-init {args.lr_warmup_init} must lie in [0, --lr {args.lr}]")
    if args.lr_decay_steps is not None and args.lr_warmup_steps > args.lr_decay_steps:
        raise ValueError(f"lr warmup of {args.lr_warmup_steps:g} samples exceeds the lr decay of "
                         f"{args.lr_decay_steps} samples (--lr-warmup-* vs --lr-decay-*/--train-*)")

    if args.weight_decay_incr_style == "constant":
        for name in ("start_weight_decay", "end_weight_decay"):
            # Equal to --weight-decay: what a previous validation of this namespace filled in.
            if getattr(args, name) not in (None, args.weight_decay):
                raise ValueError(f"{_flag(name)} needs --weight-decay-incr-style linear|cosine")
        args.start_weight_decay = args.end_weight_decay = args.weight_decay
    else:
        _require(args, "start_weight_decay", "end_weight_decay")
    if args.override_opt_param_scheduler and args.use_checkpoint_opt_param_scheduler:
        raise ValueError("--override-lr-scheduler and --use-checkpoint-lr-scheduler are mutually exclusive")


def _validate_torch_compile(args) -> None:
    if _given(args, "torch_compile_backend") and not args.torch_compile:
        raise ValueError("--torch-compile-backend needs --torch-compile")
    if args.torch_compile:
        import torch._dynamo

        backends = torch._dynamo.list_backends(exclude_tags=())
        if args.torch_compile_backend not in backends:
            raise ValueError(f"--torch-compile-backend {args.torch_compile_backend!r} is not one of "
                             f"{', '.join(sorted(backends))}")


def _validate_precision(args) -> None:
    if args.fp16 and args.bf16:
        raise ValueError("--fp16 and --bf16 are mutually exclusive")
    args.params_dtype = torch.half if args.fp16 else torch.bfloat16 if args.bf16 else torch.float
    if args.bf16 and not args.accumulate_allreduce_grads_in_fp32:
        # bf16's 8-bit mantissa loses small gradient contributions when accumulated in bf16.
        args.accumulate_allreduce_grads_in_fp32 = True
        if args.rank == 0:
            print("accumulate and all-reduce gradients in fp32 for bfloat16 data type.", flush=True)
    if args.fp32_residual_connection and not (args.fp16 or args.bf16):
        raise ValueError("--fp32-residual-connection needs --fp16 or --bf16")
    if args.fp16_lm_cross_entropy and not args.fp16:
        raise ValueError("--fp16-lm-cross-entropy needs --fp16")
    if not args.fp16:
        for name in ("loss_scale", "initial_loss_scale", "min_loss_scale", "loss_scale_window", "hysteresis"):
            if _given(args, name):
                raise ValueError(f"{_flag(name)} needs --fp16 (loss scaling applies to fp16 training only)")
    if args.loss_scale is not None and args.loss_scale <= 0:
        raise ValueError(f"--loss-scale {args.loss_scale} must be positive")
    if args.initial_loss_scale < args.min_loss_scale:
        raise ValueError(f"--initial-loss-scale {args.initial_loss_scale:g} is below --min-loss-scale "
                         f"{args.min_loss_scale:g}")
    _positive(args, "loss_scale_window", "hysteresis")
    if args.DDP_impl == "torch":
        if args.use_distributed_optimizer:
            raise ValueError("--use-distributed-optimizer is not supported with --DDP-impl torch: the sharded "
                             "optimizer needs the local DDP's contiguous gradient buffers")
        if args.accumulate_allreduce_grads_in_fp32:
            why = "--bf16 forces it" if args.bf16 else "it was given"
            raise ValueError(f"--accumulate-allreduce-grads-in-fp32 ({why}) is not supported with --DDP-impl torch: "
                             "fp32 gradient buffers belong to --DDP-impl local")
    if args.clip_grad < 0:
        raise ValueError(f"--clip-grad {args.clip_grad} must be >= 0 (0 turns clipping off)")


def _validate_checkpointing(args) -> None:
    if training_schedule(args) == "none":
        # Megatron's OUTPUT_ARGS (--save-interval ...) passed to a tool that trains nothing: nothing to save.
        given = [f"{_flag(name)} {getattr(args, name)}" for name in ("save", "save_interval")
                 if getattr(args, name) is not None]
        if given and args.rank == 0:
            print(f"note: this tool saves no checkpoint; {' and '.join(given)} "
                  f"{'has' if len(given) == 1 else 'have'} no effect", flush=True)
        args.save = args.save_interval = None
    # Fine-tuning saves each improvement on the validation sets, at no interval.
    if args.save is not None and args.save_interval is None and training_schedule(args) != "epochs":
        raise ValueError(f"--save {args.save} needs --save-interval")
    if args.save_interval is not None and args.save is None:
        raise ValueError(f"--save-interval {args.save_interval} needs --save")
    _positive(args, "save_interval")
    for name, needs in (("no_save_optim", "save"), ("no_save_rng", "save"), ("no_load_optim", "load"),
                        ("no_load_rng", "load"), ("finetune", "load"), ("use_checkpoint_opt_param_scheduler", "load")):
        if getattr(args, name) and getattr(args, needs) is None:
            flag = "--use-checkpoint-lr-scheduler" if name == "use_checkpoint_opt_param_scheduler" else _flag(name)
            raise ValueError(f"{flag} needs --{needs}")
    # Megatron's 2021 attribute names, read by older tools.
    args.override_lr_scheduler = args.override_opt_param_scheduler
    args.use_checkpoint_lr_scheduler = args.use_checkpoint_opt_param_scheduler


_TENSORBOARD_ONLY = ("tensorboard_log_interval", "tensorboard_queue_size", "log_timers_to_tensorboard",
                     "log_batch_size_to_tensorboard", "log_learning_rate_to_tensorboard",
                     "log_loss_scale_to_tensorboard", "log_validation_ppl_to_tensorboard")


def _validate_logging_and_data(args) -> None:
    _positive(args, "log_interval", "eval_interval", "tensorboard_log_interval", "tensorboard_queue_size",
              "exit_interval")
    _positive(args, "eval_iters", "num_workers", "vocab_extra_ids", allow_zero=True)
    if args.exit_duration_in_mins is not None and args.exit_duration_in_mins <= 0:
        raise ValueError(f"--exit-duration-in-mins {args.exit_duration_in_mins} must be positive")
    if args.distributed_timeout_minutes <= 0:
        raise ValueError(f"--distributed-timeout-minutes {args.distributed_timeout_minutes} must be positive")
    if args.seed < 0:
        raise ValueError(f"--seed {args.seed} must be >= 0")
    if args.peak_flops_per_gpu is not None and args.peak_flops_per_gpu <= 0:
        raise ValueError(f"--peak-flops-per-gpu {args.peak_flops_per_gpu:g} must be positive")
    if args.tensorboard_dir is None:
        for name in _TENSORBOARD_ONLY:
            if _given(args, name):
                flag = {"log_learning_rate_to_tensorboard": "--no-log-learnig-rate-to-tensorboard",
                        "log_loss_scale_to_tensorboard": "--no-log-loss-scale-to-tensorboard"}.get(name, _flag(name))
                raise ValueError(f"{flag} needs --tensorboard-dir")
    elif not getattr(args, "dry_run", False) and importlib.util.find_spec("tensorboard") is None:
        raise ValueError(f"--tensorboard-dir {args.tensorboard_dir} needs the tensorboard package, which is not "
                         "installed (pip install tensorboard)")
    if args.data_impl in ("lazy", "cached"):
        raise ValueError(f"--data-impl {args.data_impl} is not supported: training reads the mmap format; convert "
                         "legacy (lazy/cached) files with tools/preprocess_data.py or read them with "
                         "megatron.core.datasets.indexed_dataset.make_dataset")
    separate = [name for name in ("train_data_path", "valid_data_path", "test_data_path") if getattr(args, name, None)]
    if args.data_impl == "tfrecord":
        # MLPerf BERT TFRecords: --data-path is the training files, --valid/--test-data-path the held-out ones.
        if args.train_data_path:
            raise ValueError("--data-impl tfrecord reads training files from --data-path, not --train-data-path")
        if args.tfrecord_shuffle_buffer < 1:
            raise ValueError(f"--tfrecord-shuffle-buffer {args.tfrecord_shuffle_buffer} must be >= 1")
        separate = []
    elif _given(args, "tfrecord_index_dir") or _given(args, "tfrecord_shuffle_buffer"):
        raise ValueError("--tfrecord-index-dir and --tfrecord-shuffle-buffer need --data-impl tfrecord")
    if separate and args.data_path:
        raise ValueError(f"--data-path cannot be combined with {', '.join(_flag(n) for n in separate)}: give one "
                         "blend to split, or separate paths")
    if args.dataloader_type is None:
        args.dataloader_type = "single"
    if not 0.0 <= args.mask_prob <= 1.0 or not 0.0 <= args.short_seq_prob <= 1.0:
        raise ValueError(f"--mask-prob {args.mask_prob} and --short-seq-prob {args.short_seq_prob} must lie in [0, 1]")

    if args.vocab_size is not None:
        _positive(args, "vocab_size")
        for name in ("vocab_file", "merge_file", "tokenizer_model"):
            if getattr(args, name) is not None:
                raise ValueError(f"--vocab-size {args.vocab_size} cannot be combined with {_flag(name)}: the "
                                 "tokenizer sets the vocabulary size")
        if _given(args, "tokenizer_type"):
            raise ValueError(f"--vocab-size {args.vocab_size} replaces the tokenizer: drop --tokenizer-type "
                             f"{args.tokenizer_type}")
        # A script's default tokenizer needs files this run does not have.
        args.tokenizer_type = None
        args.padded_vocab_size = vocab_size_with_padding(args.vocab_size + args.vocab_extra_ids, args)


def default_retro_decoder_cca_layers(num_layers: int) -> list:
    """NeMo's [3, 5] for its 6-layer decoder; otherwise Megatron-LM's layers 6, 9, 12, ... (0-based 5, 8, ...)."""
    if num_layers == 6:
        return [3, 5]
    return list(range(5, num_layers, 3))


def _validate_retro(args) -> None:
    """RETRO's flags (pretrain_retro.py, tools/generate_samples_retro.py)."""
    _positive(args, "retro_chunk_size", "retro_num_neighbors", "retro_encoder_layers")
    if getattr(args, "dry_run", False):
        raise ValueError("--dry-run does not plan RETRO models (it builds GPT, BERT and T5 only)")
    if args.retro_chunk_size < 2:
        raise ValueError(f"--retro-chunk-size {args.retro_chunk_size} must be >= 2")
    if args.pipeline_model_parallel_size != 1:
        raise ValueError(f"RETRO does not support pipeline parallelism: --pipeline-model-parallel-size "
                         f"{args.pipeline_model_parallel_size} must be 1 (as in NeMo)")
    if args.seq_length is not None and args.seq_length % args.retro_chunk_size != 0:
        raise ValueError(f"--seq-length {args.seq_length} is not a multiple of --retro-chunk-size {args.retro_chunk_size}")
    if args.retro_decoder_cca_layers is None:
        args.retro_decoder_cca_layers = default_retro_decoder_cca_layers(args.num_layers)
        if not args.retro_decoder_cca_layers:
            raise ValueError(f"--num-layers {args.num_layers} is below 6: give --retro-decoder-cca-layers explicitly")
    dec, enc = args.retro_decoder_cca_layers, args.retro_encoder_cca_layers
    if sorted(set(dec)) != dec or dec[0] < 0 or dec[-1] >= args.num_layers:
        raise ValueError(f"--retro-decoder-cca-layers {dec} must be increasing 0-based indices below --num-layers "
                         f"{args.num_layers}")
    if sorted(set(enc)) != enc or (enc and (enc[0] < 0 or enc[-1] >= args.retro_encoder_layers)):
        raise ValueError(f"--retro-encoder-cca-layers {enc} must be increasing 0-based indices below "
                         f"--retro-encoder-layers {args.retro_encoder_layers}")
    if args.position_embedding_type == "learned_absolute" and args.max_position_embeddings is not None and \
            args.max_position_embeddings < 2 * args.retro_chunk_size:
        raise ValueError(f"--max-position-embeddings {args.max_position_embeddings} is shorter than a neighbour "
                         f"(2 x --retro-chunk-size {args.retro_chunk_size})")


def validate_args(args, defaults={}):
    """Resolve old spellings, derive values and check every constraint; returns ``args``."""
    if not hasattr(args, "world_size") or not hasattr(args, "rank"):
        _set_rank_and_world_size(args)
    # A script's defaults fill only what the command line left unset.
    for key, value in defaults.items():
        current = getattr(args, key, None)
        if current is None:
            setattr(args, key, value)
        elif current != value and args.rank == 0:
            print(f"WARNING: overriding default arguments for {key}:{value} with {key}:{current}", flush=True)
    _fold_deprecated(args)
    _require(args, "num_layers")
    _validate_layout(args)
    _validate_model(args)
    _validate_recompute(args)
    _validate_batch(args)
    _validate_training_length(args)
    _validate_precision(args)
    _validate_torch_compile(args)
    _validate_checkpointing(args)
    _validate_logging_and_data(args)
    if hasattr(args, "retro_chunk_size"):
        _validate_retro(args)
    args.consumed_train_samples = 0
    args.consumed_valid_samples = 0
    args.iteration = 0
    return args


def print_args(args) -> None:
    """Rank 0 prints every argument, sorted, between Megatron's banner lines (once per namespace)."""
    if getattr(args, "rank", 0) != 0 or getattr(args, "_printed", False):
        return
    args._printed = True
    lines = ["------------------------ arguments ------------------------"]
    for name in sorted(vars(args)):
        if name.startswith("_"):
            continue
        lines.append(f"  {name} {'.' * max(1, 48 - len(name))} {getattr(args, name)}")
    lines.append("-------------------- end of arguments ---------------------")
    print("\n".join(lines), flush=True)
