"""Convert checkpoints between our Megatron layout and Hugging Face ``transformers`` directories.

    # ours (any TP/PP) -> HF directory with config.json, model.safetensors and the tokenizer files
    python tools/convert_hf_checkpoint.py --direction to-hf --model-type GPT --load CKPT --save HF_DIR
    # an iteration other than the latest: --iteration N, or --load CKPT/iter_0000500
    # HF -> ours at any layout (written as a "release" checkpoint: weights and arguments only)
    python tools/convert_hf_checkpoint.py --direction from-hf --model-type GPT --load HF_DIR --save CKPT \\
        --target-tensor-parallel-size 2 --target-pipeline-parallel-size 1

    # a Llama-style GPT (rope, SwiGLU, RMSNorm, grouped-query attention) <-> LlamaForCausalLM
    python tools/convert_hf_checkpoint.py --direction from-hf --model-type llama --load HF_DIR --save CKPT

GPT maps to ``GPT2LMHeadModel``, llama (our GPT with the Llama options) to ``LlamaForCausalLM``, BERT
to ``MegatronBertForPreTraining`` (see ``megatron/checkpoint_tools/hf.py``). The exported vocabulary
is the padded one of the checkpoint. The export also holds the checkpoint's tokenizer (see
``megatron/checkpoint_tools/hf_tokenizer.py``), so ``AutoTokenizer.from_pretrained(HF_DIR)`` works.
An import checks every tensor's shape against ``config.json`` first and names the first that disagrees.
"""
import argparse
import json
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import torch  # noqa: E402

from megatron.checkpoint_tools import hf  # noqa: E402
from megatron.checkpoint_tools.hf_shapes import ShapeMismatch, check_hf_shapes  # noqa: E402
from megatron.checkpoint_tools.hf_tokenizer import TokenizerExportError, export_tokenizer  # noqa: E402
from megatron.checkpoint_tools.reshard import (  # noqa: E402
    SourceCheckpoint, check_target_tp, merge_shards, split_full, target_args, write_checkpoint)
from megatron.checkpointing import CheckpointError  # noqa: E402
from megatron.core.fileio import atomic_open, atomic_write_text  # noqa: E402

TO_HF = {"GPT": hf.gpt_to_hf, "BERT": hf.bert_to_hf, "llama": hf.llama_to_hf}
FROM_HF = {"GPT": hf.gpt_from_hf, "BERT": hf.bert_from_hf, "llama": hf.llama_from_hf}
MODEL_TYPES = {"gpt": "GPT", "bert": "BERT", "llama": "llama"}  # accepted in any case


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--direction", required=True, choices=["to-hf", "from-hf"])
    parser.add_argument("--model-type", required=True, type=lambda v: MODEL_TYPES.get(v.lower(), v),
                        choices=sorted(TO_HF), help="GPT, BERT or llama (any case)")
    parser.add_argument("--load", required=True,
                        help="source directory (our checkpoint or one of its iter_* directories, or an HF model "
                             "directory)")
    parser.add_argument("--iteration", type=int, default=None,
                        help="to-hf: convert this saved iteration instead of the one the tracker file names")
    parser.add_argument("--save", required=True, help="output directory")
    parser.add_argument("--target-tensor-parallel-size", type=int, default=1, help="from-hf only")
    parser.add_argument("--target-pipeline-parallel-size", type=int, default=1, help="from-hf only")
    parser.add_argument("--make-vocab-size-divisible-by", type=int, default=128,
                        help="from-hf: pad the vocabulary to a multiple of this x target TP, as training does")
    parser.add_argument("--post-layernorm", action="store_true",
                        help="to-hf BERT: ask for the post-LayerNorm BertForPreTraining (refused: it computes a "
                             "different function)")
    return parser.parse_args(argv)


def _write_safetensors(tensors, path: str) -> None:
    from safetensors.torch import save

    with atomic_open(path, "wb") as f:
        f.write(save(tensors, metadata={"format": "pt"}))


def to_hf(args) -> str:
    source = SourceCheckpoint(args.load, args.iteration)
    full = merge_shards(source)
    is_bert = "lm_head.dense.weight" in full
    if is_bert != (args.model_type == "BERT"):
        raise hf.ConversionError(f"{args.load} holds a {'BERT' if is_bert else 'GPT'} model, not --model-type "
                                 f"{args.model_type}")
    if args.model_type == "BERT":
        config, tensors = hf.bert_to_hf(full, source.args, post_layernorm=args.post_layernorm)
    else:
        config, tensors = TO_HF[args.model_type](full, source.args)
    os.makedirs(args.save, exist_ok=True)
    # Weights first, config last: a directory with a config.json is a complete model.
    _write_safetensors(tensors, os.path.join(args.save, "model.safetensors"))
    try:
        max_length = config.get("n_positions", config.get("max_position_embeddings"))
        written = export_tokenizer(source.args, args.save, max_length)
        print(f"wrote the tokenizer: {', '.join(written)}")
    except TokenizerExportError as error:
        print(f"convert_hf_checkpoint.py: notice: no tokenizer files written to {args.save}: {error}")
    atomic_write_text(os.path.join(args.save, "config.json"), json.dumps(config, indent=2, sort_keys=True) + "\n")
    return args.save


def _read_hf(directory: str):
    config_path = os.path.join(directory, "config.json")
    if not os.path.isfile(config_path):
        raise FileNotFoundError(f"no {config_path}: --load must be a Hugging Face model directory")
    with open(config_path, encoding="utf-8") as f:
        try:
            config = json.load(f)
        except json.JSONDecodeError as error:
            raise hf.ConversionError(f"{config_path}:{error.lineno}: invalid JSON: {error.msg}") from None
    weights = os.path.join(directory, "model.safetensors")
    if os.path.isfile(weights):
        from safetensors.torch import load_file

        tensors = load_file(weights)
    elif os.path.isfile(os.path.join(directory, "pytorch_model.bin")):
        weights = os.path.join(directory, "pytorch_model.bin")
        tensors = torch.load(weights, map_location="cpu", weights_only=True)
    else:
        raise FileNotFoundError(f"{directory} holds neither model.safetensors nor pytorch_model.bin")
    return config, tensors, weights


def from_hf(args) -> str:
    from megatron.tokenizer.build import vocab_size_with_padding

    config, tensors, weights_path = _read_hf(args.load)
    config_path = os.path.join(args.load, "config.json")
    # The mapping refuses configurations it cannot express first (their message is the more useful one);
    # then every tensor's shape must be the one config.json implies, or the arguments written with the
    # checkpoint would not describe its tensors.
    try:
        full, model_args = FROM_HF[args.model_type](config, tensors)
    except (KeyError, RuntimeError) as error:  # a missing tensor, or one that does not reshape as configured
        check_hf_shapes(args.model_type, config, tensors, config_path, weights_path)
        raise hf.ConversionError(f"{args.load}: the weights or config.json lack {error} "
                                 f"(is it a {args.model_type} model?)") from None
    check_hf_shapes(args.model_type, config, tensors, config_path, weights_path)
    tp, pp = args.target_tensor_parallel_size, args.target_pipeline_parallel_size
    check_target_tp(model_args, tp, "--target-tensor-parallel-size")
    model_args.make_vocab_size_divisible_by = args.make_vocab_size_divisible_by
    model_args.tensor_model_parallel_size = tp
    padded = vocab_size_with_padding(model_args.vocab_size, model_args)
    shards = split_full(full, model_args.num_layers, tp, pp, padded, swiglu=getattr(model_args, "swiglu", False))
    return write_checkpoint(args.save, shards, target_args(model_args, tp, pp, padded), 0, release=True)


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.iteration is not None and args.direction == "from-hf":
        print("convert_hf_checkpoint.py: error: --iteration applies to --direction to-hf (a Hugging Face directory "
              "holds one model)", file=sys.stderr)
        return 1
    try:
        written = to_hf(args) if args.direction == "to-hf" else from_hf(args)
    except (CheckpointError, hf.ConversionError, ShapeMismatch, FileNotFoundError) as error:
        print(f"convert_hf_checkpoint.py: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
