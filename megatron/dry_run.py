"""``--dry-run``: check a layout for ``--world-size`` ranks and print what each rank would hold.

Nothing is allocated and no process is started, so a 1,024-rank layout can be checked on a
laptop. Parameters are counted on the models themselves: tensor-parallel rank 0 of every stage
(and model chunk) is built on the ``meta`` device, as the pretraining scripts build it, so the
counts are exact by construction (padded vocab, position embeddings, heads, the copy of the tied
word embedding on the last stage, GQA, SwiGLU, RMSNorm, bias-free linears). Memory is an estimate:

- weights and gradients: parameters of the rank x bytes of their dtype (gradients in fp32 with
  ``--accumulate-allreduce-grads-in-fp32``, forced by ``--bf16``);
- optimizer state: Adam keeps fp32 master weights + two moments (12 bytes/param with fp16/bf16,
  8 in fp32 where the weights are their own master), SGD master + momentum; sharded over
  data-parallel ranks with ``--use-distributed-optimizer``;
- activations: Korthikanti et al. 2022, per layer and micro-batch with 16-bit activations
  ``s*b*h*(34 + 5*a*s/h)`` bytes, of which ``10*s*b*h`` stays whole on every tensor-parallel
  rank without sequence parallelism (``s*b*h*(10 + 24/t + 5*a*s/(h*t))``), everything ``/t``
  with it. The 24 is ``4(p + g)/h`` for Q, K, V and the projection input (p query and g key
  channels: 8 with multi-head attention) plus ``4f/h`` for the MLP's input to and output of
  GeLU (16 at f = 4h), ``8f/h`` with SwiGLU (both halves, SiLU(gate) and the product); selective recomputation drops the ``5*a*s/h`` term, full recomputation keeps only
  each layer's input (``2*s*b*h``) plus one recomputed group. A stage holds as many micro-batches
  as the pipeline schedule has in flight on it; fp32 doubles every activation byte.
"""
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

from megatron.core import layer_layout

GiB = 2 ** 30
MODEL_NAMES = ("gpt", "bert", "t5")


@dataclass
class Params:
    """Parameters split over tensor-parallel ranks and parameters every TP rank holds whole."""

    split: int = 0
    replicated: int = 0

    def __add__(self, other: "Params") -> "Params":
        return Params(self.split + other.split, self.replicated + other.replicated)

    def __mul__(self, n: int) -> "Params":
        return Params(self.split * n, self.replicated * n)

    def total(self) -> int:
        return self.split + self.replicated

    def per_rank(self, tp: int) -> int:
        return self.split // tp + self.replicated


@dataclass
class Stage:
    index: int
    layers: Dict[str, int]
    params: Params
    tied_copy: int = 0
    """Parameters duplicated from another stage (the word embedding of the output layer, T5's decoder embedding)."""
    memory: Dict[str, float] = field(default_factory=dict)


def _widths(args) -> Tuple[int, int, int, int]:
    """(hidden h, query channels p, key/value channels g, MLP width f) for the activation estimate."""
    p = args.kv_channels * args.num_attention_heads
    g = args.kv_channels * (getattr(args, "num_query_groups", None) or args.num_attention_heads)
    return args.hidden_size, p, g, args.ffn_hidden_size


def model_name_from(model_type, model_name: Optional[str] = None) -> str:
    """gpt / bert / t5 from an explicit name, a ModelType (encoder-decoder means T5), or the script name."""
    if model_name is not None:
        name = model_name.lower()
    elif isinstance(model_type, str):
        name = model_type.lower()
    else:
        import os
        import sys

        from megatron.core.transformer import ModelType

        if model_type == ModelType.encoder_and_decoder:
            name = "t5"
        else:
            script = os.path.basename(sys.argv[0]) if sys.argv else ""
            name = "bert" if "bert" in script else "gpt"
    if name not in MODEL_NAMES:
        raise ValueError(f"--dry-run knows the models {', '.join(MODEL_NAMES)}, got {name!r}")
    return name


def _fake_groups(tp: int, pp: int, pp_rank: int, virtual: Optional[int], virtual_rank: Optional[int],
                 split: Optional[int]):
    """Tensor-parallel rank 0 of stage ``pp_rank`` of a layout, without torch.distributed: enough to
    build that rank's model, which validates the layout before any communication."""
    from megatron.core.parallel_state import ProcessGroups

    return ProcessGroups(
        rank=pp_rank * tp, world_size=tp * pp, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        virtual_pipeline_model_parallel_size=virtual, virtual_pipeline_model_parallel_rank=virtual_rank,
        pipeline_model_parallel_split_rank=split, tp_ranks=[pp_rank * tp + i for i in range(tp)],
        pp_ranks=[j * tp for j in range(pp)], dp_ranks=[pp_rank * tp],
        embd_ranks=sorted({0, (pp - 1) * tp} | ({split * tp} if split else set())))


def _build_on_meta(args, model_name: str, pg, pre_process: bool, post_process: bool, add_encoder: bool = True,
                   add_decoder: bool = True):
    """This rank's model as the pretraining scripts build it, on the ``meta`` device (no memory)."""
    import torch

    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models import BertModel, GPTModel, T5Model

    config = core_transformer_config_from_args(args)
    vocab, positions = args.padded_vocab_size, args.max_position_embeddings
    with torch.device("meta"):
        if model_name == "gpt":
            return GPTModel(config, vocab, positions, pre_process=pre_process, post_process=post_process, pg=pg)
        if model_name == "bert":
            binary_head = getattr(args, "bert_binary_head", True)
            return BertModel(config, vocab, positions, num_tokentypes=2 if binary_head else 0,
                             add_binary_head=binary_head, pre_process=pre_process, post_process=post_process, pg=pg)
        return T5Model(config, vocab, positions, pre_process=pre_process, post_process=post_process,
                       add_encoder=add_encoder, add_decoder=add_decoder, pg=pg)


def _count(model, tp: int, tied_embedding: bool = False) -> Tuple[Params, int]:
    """(parameters of all ``tp`` ranks, of which copies of another stage's): tensor-parallel
    parameters are ``tp`` times this rank's."""
    params, tied = Params(), 0
    for name, param in model.named_parameters():
        whole = param.numel() * (tp if getattr(param, "tensor_model_parallel", False) else 1)
        if getattr(param, "tensor_model_parallel", False):
            params += Params(split=whole)
        else:
            params += Params(replicated=whole)
        if name.startswith("word_embeddings_for_head.") or (tied_embedding and ".embedding." in f".{name}"):
            tied += whole
    return params, tied


def stage_parameters(args, model_name: str, pipeline_size: Optional[int] = None) -> List[Stage]:
    """Parameters of every pipeline stage (all its model chunks and all its TP ranks together),
    counted on the models themselves, built on the ``meta`` device; layers placed by
    ``megatron.core.layer_layout``."""
    whole = pipeline_size is not None
    pp = pipeline_size if whole else args.pipeline_model_parallel_size
    tp = 1 if whole else args.tensor_model_parallel_size
    split = None if whole else args.pipeline_model_parallel_split_rank
    virtual = None if whole else args.virtual_pipeline_model_parallel_size
    if model_name == "t5" and pp > 1 and split is None:
        raise ValueError(f"T5 with --pipeline-model-parallel-size {pp} needs --pipeline-model-parallel-split-rank")
    stages = []
    for index in range(pp):
        params, tied, layers = Params(), 0, {}
        if model_name == "t5":
            encoder, decoder = pp == 1 or index < split, pp == 1 or index >= split
            model = _build_on_meta(args, model_name, _fake_groups(tp, pp, index, None, None, split),
                                   pre_process=pp == 1 or index in (0, split),
                                   post_process=pp == 1 or index in (split - 1, pp - 1),
                                   add_encoder=encoder, add_decoder=decoder)
            params, tied = _count(model, tp, tied_embedding=pp > 1 and index == split)
            for stack, present in ((layer_layout.ENCODER, encoder), (layer_layout.DECODER, decoder)):
                if present:
                    layers[stack] = layer_layout.stage_layer_range(args.num_layers, pp, index, None, None, split,
                                                                   stack)[0]
        else:
            count = 0
            for chunk in range(virtual or 1):
                pg = _fake_groups(tp, pp, index, virtual, chunk if virtual else None, None)
                model = _build_on_meta(args, model_name, pg, pg.is_pipeline_first_stage(),
                                       pg.is_pipeline_last_stage())
                chunk_params, chunk_tied = _count(model, tp)
                params, tied = params + chunk_params, tied + chunk_tied
                count += layer_layout.stage_layer_range(args.num_layers, pp, index, virtual, chunk)[0]
            layers = {"layers": count}
        stages.append(Stage(index, layers, params, tied))
    return stages


def _in_flight_layers(args, stage: int, layers_on_stage: int) -> Tuple[int, float]:
    """(micro-batches whose activations a stage holds at its peak, layers' worth per micro-batch)."""
    pp, micro = args.pipeline_model_parallel_size, args.num_micro_batches
    virtual = args.virtual_pipeline_model_parallel_size
    if pp == 1:
        return 1, layers_on_stage
    if virtual is None:
        return min(pp - stage, micro), layers_on_stage
    # Interleaved warm-up: 2 per later stage plus a full round of the other chunks, then one more.
    chunk_microbatches = min((pp - stage - 1) * 2 + (virtual - 1) * pp + 1, micro * virtual)
    return chunk_microbatches, layers_on_stage / virtual


def recompute_setting(args) -> Tuple[str, Optional[str], Optional[int]]:
    """The configured recomputation, or full uniform recomputation of single layers to compare with."""
    if args.recompute_granularity is None:
        return "full", "uniform", 1
    return args.recompute_granularity, args.recompute_method, args.recompute_num_layers


def _activation_bytes(args, seq: int, layers: float, in_flight: int) -> Tuple[float, float]:
    """Activation bytes of one stage without recomputation and with ``recompute_setting(args)``."""
    s, b, h, a = seq, args.micro_batch_size, args.hidden_size, args.num_attention_heads
    t = args.tensor_model_parallel_size
    scale = 2.0 if args.params_dtype.itemsize == 4 else 1.0
    sp = args.sequence_parallel
    attention = 5.0 * a * s / (h * t)
    _, p, g, f = _widths(args)
    split = (4.0 * (p + g) + (8.0 if getattr(args, "swiglu", False) else 4.0) * f) / h  # 24 for GPT
    full = s * b * h * (((10.0 + split) / t if sp else 10.0 + split / t) + attention)
    plain = full * layers * in_flight * scale
    granularity, method, group = recompute_setting(args)
    if granularity == "selective":
        return plain, (full - s * b * h * attention) * layers * in_flight * scale
    layer_input = 2.0 * s * b * h / (t if sp else 1)
    if method == "uniform":
        stored = layer_input * layers * in_flight + full * min(group, layers)
    else:
        recomputed = min(group, layers)
        stored = (layer_input * recomputed + full * (layers - recomputed)) * in_flight + full
    return plain, stored * scale


def _memory(args, stage: Stage, model_name: str) -> Dict[str, float]:
    tp, dp = args.tensor_model_parallel_size, args.data_parallel_size
    per_rank = stage.params.per_rank(tp)
    half = args.fp16 or args.bf16
    weight_bytes = 2 if half else 4
    grad_bytes = 4 if (not half or args.accumulate_allreduce_grads_in_fp32) else 2
    if args.optimizer == "adam":
        optim_bytes = 12 if half else 8
    else:
        optim_bytes = (4 if half else 0) + (4 if args.sgd_momentum else 0)
    optimizer = per_rank * optim_bytes / (dp if args.use_distributed_optimizer else 1)
    plain = recompute = 0.0
    for stack, count in stage.layers.items():
        seq = args.decoder_seq_length if stack == "decoder" and args.decoder_seq_length else args.seq_length
        in_flight, layers = _in_flight_layers(args, stage.index, count)
        without, with_ = _activation_bytes(args, seq, layers, in_flight)
        plain, recompute = plain + without, recompute + with_
    if stage.index == args.pipeline_model_parallel_size - 1:
        # fp32 logits (and their softmax, kept for backward) of one micro-batch on the last stage.
        seq = args.decoder_seq_length if model_name == "t5" and args.decoder_seq_length else args.seq_length
        logits = 2 * 4.0 * seq * args.micro_batch_size * args.padded_vocab_size / tp
        plain, recompute = plain + logits, recompute + logits
    memory = {"weights": per_rank * weight_bytes, "gradients": per_rank * grad_bytes, "optimizer": optimizer,
              "activations": plain, "activations_recompute": recompute}
    static = memory["weights"] + memory["gradients"] + optimizer
    memory["total"] = static + (recompute if args.recompute_granularity else plain)
    return memory


def _resolve_vocab(args) -> None:
    if getattr(args, "padded_vocab_size", None) is not None:
        return
    if getattr(args, "tokenizer_type", None) is None:
        raise ValueError("--dry-run needs --vocab-size V or the tokenizer flags (--tokenizer-type and its files)")
    from megatron.tokenizer import build_tokenizer

    build_tokenizer(args)


def plan(args, model_type, model_name: Optional[str] = None) -> Dict:
    """The dry-run plan as data: per-stage parameters and memory per rank."""
    name = model_name_from(model_type, model_name)
    _resolve_vocab(args)
    if name == "t5" and args.decoder_seq_length is None:
        raise ValueError("T5 needs --decoder-seq-length")
    if name != "t5" and args.pipeline_model_parallel_split_rank is not None:
        raise ValueError(f"--pipeline-model-parallel-split-rank {args.pipeline_model_parallel_split_rank} is for "
                         f"encoder-decoder models (T5), not {name.upper()}")
    stages = stage_parameters(args, name)
    for stage in stages:
        stage.memory = _memory(args, stage, name)
    unique = stage_parameters(args, name, pipeline_size=1)[0].params.total()
    return {"model": name, "stages": stages, "total_parameters": unique,
            "sum_of_stages": sum(stage.params.total() for stage in stages)}


def format_plan(args, result: Dict) -> str:
    tp, pp, dp = args.tensor_model_parallel_size, args.pipeline_model_parallel_size, args.data_parallel_size
    virtual = args.virtual_pipeline_model_parallel_size
    lines = [
        f"dry run: {result['model'].upper()} on {args.world_size} ranks",
        f"  layout: tensor-parallel {tp} x pipeline-parallel {pp} x data-parallel {dp}"
        + (f", virtual stages {virtual}" if virtual else "")
        + (f", decoder from stage {args.pipeline_model_parallel_split_rank}"
           if args.pipeline_model_parallel_split_rank is not None else ""),
        f"  batch: micro {args.micro_batch_size} x data-parallel {dp} x {args.num_micro_batches} micro-batches = "
        f"global {args.global_batch_size}"
        + (f" (ramp-up {' '.join(str(v) for v in args.rampup_batch_size)})" if args.rampup_batch_size else ""),
        f"  model: {args.num_layers} layers, hidden {args.hidden_size}, {args.num_attention_heads} heads"
        + (f" in {args.num_query_groups} query groups"
           if getattr(args, "num_query_groups", None) not in (None, args.num_attention_heads) else "")
        + f", ffn {args.ffn_hidden_size}{' SwiGLU' if getattr(args, 'swiglu', False) else ''}, "
        f"seq {args.seq_length}, padded vocab {args.padded_vocab_size}, "
        f"{str(args.params_dtype).replace('torch.', '')}",
        "  parameters per pipeline stage (all tensor-parallel ranks of the stage / one rank):",
    ]
    for stage in result["stages"]:
        layers = ", ".join(f"{count} {kind}" if kind != "layers" else f"{count} layers"
                           for kind, count in stage.layers.items())
        tied = f" (incl. tied copy {stage.tied_copy:,})" if stage.tied_copy else ""
        lines.append(f"    stage {stage.index:>3}: {layers:<22} {stage.params.total():>18,} / "
                     f"{stage.params.per_rank(tp):>16,}{tied}")
    lines.append(f"  total parameters: {result['total_parameters']:,} ({result['total_parameters'] / 1e9:.2f} B; "
                 f"tied weights counted once; stages sum to {result['sum_of_stages']:,})")
    granularity, method, group = recompute_setting(args)
    setting = granularity if granularity == "selective" else f"{granularity} {method} {group}"
    configured = "configured" if args.recompute_granularity else "for comparison, not configured"
    lines.append("  estimated memory per rank (GiB): weights / gradients / optimizer / activations "
                 f"(no recompute | recompute {setting}, {configured}) / total as configured")
    for stage in result["stages"]:
        m = {key: value / GiB for key, value in stage.memory.items()}
        lines.append(f"    stage {stage.index:>3}: {m['weights']:8.2f} / {m['gradients']:8.2f} / {m['optimizer']:8.2f} / "
                     f"({m['activations']:8.2f} | {m['activations_recompute']:8.2f}) / {m['total']:8.2f}")
    peak = max(result["stages"], key=lambda stage: stage.memory["total"])
    lines.append(f"  peak: stage {peak.index}, {peak.memory['total'] / GiB:.2f} GiB per rank")
    return "\n".join(lines)


def run_dry_run(args, model_type, model_name: Optional[str] = None) -> Dict:
    """Print the plan for ``args`` (validated, with ``--world-size``) and return it; creates no process."""
    result = plan(args, model_type, model_name)
    print(format_plan(args, result), flush=True)
    return result
