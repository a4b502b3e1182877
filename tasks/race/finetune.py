"""RACE: fine-tune BERT to pick one of four answers; accuracy per validation directory."""
import os
from typing import Dict, List

from megatron.global_vars import get_args, get_tokenizer
from megatron.utils import print_rank_0
from tasks.finetune_utils import Sample, finetune
from tasks.race.data import race_files, read_race_file


def build_samples(path: str, tokenizer, seq_length: int) -> List[Sample]:
    samples = []
    for file in race_files(path):
        samples += read_race_file(file, tokenizer.tokenize, seq_length, tokenizer.cls, tokenizer.sep, tokenizer.pad)
    return samples


def _name(path: str) -> str:
    """dev/middle -> dev_middle: the last two path parts tell the RACE sets apart."""
    parts = os.path.normpath(path).split(os.sep)
    return "_".join(parts[-2:])


def main():
    args = get_args()
    if args.epochs is None:
        raise ValueError("--task RACE needs --epochs (0 evaluates only)")
    if not args.valid_data:
        raise ValueError("--task RACE needs --valid-data (RACE directories such as dev/middle)")
    if args.epochs > 0 and not args.train_data:
        raise ValueError(f"--task RACE with --epochs {args.epochs} needs --train-data")
    tokenizer = get_tokenizer()
    train: List[Sample] = []
    for path in args.train_data or []:
        train += build_samples(path, tokenizer, args.seq_length)
    valid: Dict[str, List[Sample]] = {_name(path): build_samples(path, tokenizer, args.seq_length)
                                      for path in args.valid_data}
    print_rank_0(f"> RACE: {len(train)} training questions, validation sets "
                 + ", ".join(f"{name} ({len(samples)})" for name, samples in valid.items()))
    # One score per choice; the four scores are the question's logits.
    finetune("RACE", train, valid, num_classes=1, multiple_choice=True)
