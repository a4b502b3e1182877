"""Reshard a GPT, BERT or T5 checkpoint to another tensor/pipeline-parallel layout, offline.

    python tools/checkpoint_util.py --model-type GPT --load-dir CKPT [--iteration N] --save-dir OUT \\
        --target-tensor-parallel-size 1 --target-pipeline-parallel-size 1

``--load-dir`` may also name an ``iter_*`` directory. A ``--model-type`` that is not what the
checkpoint holds is refused.

The output holds the model weights and arguments (no optimizer or RNG state, which belong to
one layout): continue from it with ``--no-load-optim --no-load-rng`` or ``--finetune``.
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.checkpoint_tools.reshard import reshard_checkpoint  # noqa: E402
from megatron.checkpointing import CheckpointError  # noqa: E402

MODEL_TYPES = ("GPT", "BERT", "T5")


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-type", choices=MODEL_TYPES, default=None,
                        help="the kind of model (checked against the checkpoint's tensors); the layout and "
                             "sizes are read from the checkpoint")
    parser.add_argument("--loader", default="megatron", choices=["megatron"])
    parser.add_argument("--saver", default="megatron", choices=["megatron"])
    parser.add_argument("--load-dir", required=True,
                        help="checkpoint directory (holding the tracker file), or one of its iter_* directories")
    parser.add_argument("--iteration", type=int, default=None,
                        help="convert this saved iteration instead of the one the tracker file names")
    parser.add_argument("--save-dir", required=True, help="output checkpoint directory")
    parser.add_argument("--target-tensor-parallel-size", type=int, default=1)
    parser.add_argument("--target-pipeline-parallel-size", type=int, default=1)
    parser.add_argument("--target-pipeline-model-parallel-split-rank", type=int, default=None,
                        help="T5 only: the first decoder stage of the target (default: the source's split "
                             "when the pipeline size is unchanged, else half the stages)")
    parser.add_argument("--true-vocab-size", type=int, default=None,
                        help="the tokenizer's vocabulary size, to re-pad the embedding for the target TP "
                             "(default: read from the saved tokenizer files)")
    return parser.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        written = reshard_checkpoint(args.load_dir, args.save_dir, args.target_tensor_parallel_size,
                                     args.target_pipeline_parallel_size, args.true_vocab_size,
                                     target_split_rank=args.target_pipeline_model_parallel_split_rank,
                                     iteration=args.iteration, model_type=args.model_type)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"checkpoint_util.py: error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {written} (TP {args.target_tensor_parallel_size} x PP {args.target_pipeline_parallel_size})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
