"""MNLI and QQP: read the GLUE TSVs, tokenize the sentence pairs, fine-tune and evaluate."""
import os
from typing import Dict, List

import numpy as np

from megatron.global_vars import get_args, get_tokenizer
from megatron.utils import print_rank_0
from tasks.finetune_utils import Sample, finetune
from tasks.glue.data import NUM_CLASSES, READERS, build_pair_sample


def build_samples(task: str, path: str, tokenizer, seq_length: int) -> List[Sample]:
    samples = []
    for example in READERS[task](path):
        sample = build_pair_sample(tokenizer.tokenize(example.text_a), tokenizer.tokenize(example.text_b),
                                   seq_length, tokenizer.cls, tokenizer.sep, tokenizer.pad)
        sample["label"] = np.int64(example.label)
        samples.append(sample)
    return samples


def main():
    args = get_args()
    task = args.task
    if args.epochs is None:
        raise ValueError(f"--task {task} needs --epochs (0 evaluates only)")
    if not args.valid_data:
        raise ValueError(f"--task {task} needs --valid-data (one or more TSV files)")
    if args.epochs > 0 and not args.train_data:
        raise ValueError(f"--task {task} with --epochs {args.epochs} needs --train-data")
    tokenizer = get_tokenizer()
    train: List[Sample] = []
    for path in args.train_data or []:
        train += build_samples(task, path, tokenizer, args.seq_length)
    valid: Dict[str, List[Sample]] = {}
    for path in args.valid_data:
        name = os.path.splitext(os.path.basename(path))[0]
        if name in valid:  # two dev.tsv from different directories
            name = path
        valid[name] = build_samples(task, path, tokenizer, args.seq_length)
    print_rank_0(f"> {task}: {len(train)} training examples, validation sets "
                 + ", ".join(f"{name} ({len(samples)})" for name, samples in valid.items()))
    finetune(task, train, valid, NUM_CLASSES[task])
