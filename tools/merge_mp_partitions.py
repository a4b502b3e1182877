"""Merge the tensor-parallel partitions of a checkpoint into one (TP 1), as Megatron-LM's tool does.

    python tools/merge_mp_partitions.py --model-type GPT --tensor-model-parallel-size 2 \\
        --target-pipeline-model-parallel-size 1 --load CKPT --save OUT [the model's other flags]

``--tensor-model-parallel-size`` is the source's size and must match the checkpoint; the other
model flags Megatron's tool takes are accepted, but the model shape is read from the checkpoint.
Only the weights and arguments are written (no optimizer or RNG state).
"""
import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.checkpoint_tools.reshard import SourceCheckpoint, check_model_type, reshard_checkpoint  # noqa: E402
from megatron.checkpointing import CheckpointError, _saved_arg  # noqa: E402

MODEL_TYPES = ("BERT", "GPT", "RACE", "MNLI", "QQP")


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model-type", required=True, choices=MODEL_TYPES)
    parser.add_argument("--tensor-model-parallel-size", type=int, default=None,
                        help="the source checkpoint's tensor-parallel size (checked)")
    parser.add_argument("--target-pipeline-model-parallel-size", type=int, default=1)
    parser.add_argument("--load", required=True, help="checkpoint directory, or one of its iter_* directories")
    parser.add_argument("--iteration", type=int, default=None,
                        help="merge this saved iteration instead of the one the tracker file names")
    parser.add_argument("--save", required=True)
    parser.add_argument("--true-vocab-size", type=int, default=None)
    args, ignored = parser.parse_known_args(argv)
    return args, ignored


def main(argv=None) -> int:
    args, ignored = parse_args(argv)
    if ignored:
        print(f"merge_mp_partitions.py: the model shape comes from the checkpoint; ignoring {' '.join(ignored)}")
    try:
        source = SourceCheckpoint(args.load, args.iteration)
        check_model_type(source, args.model_type)
        saved_tp = _saved_arg(source.args, "tensor_model_parallel_size") or 1
        if args.tensor_model_parallel_size is not None and args.tensor_model_parallel_size != saved_tp:
            raise CheckpointError(f"--tensor-model-parallel-size {args.tensor_model_parallel_size} but {args.load} "
                                  f"was saved with tensor_model_parallel_size {saved_tp}")
        if source.release:
            raise CheckpointError(f"{args.load}: merging needs an iteration number in the tracker, found 'release'")
        written = reshard_checkpoint(source.load_dir, args.save, 1, args.target_pipeline_model_parallel_size,
                                     args.true_vocab_size, iteration=source.iteration)
    except (CheckpointError, FileNotFoundError) as error:
        print(f"merge_mp_partitions.py: error: {error}", file=sys.stderr)
        return 1
    print(f"merged {saved_tp} tensor-parallel partitions into {written}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
