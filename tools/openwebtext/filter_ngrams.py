#!/usr/bin/env python
"""Decontaminate a training corpus against evaluation sets: documents containing any
--max-ngram-size-word n-gram of a task's text (or a whole task example of at least
--min-ngram-size words, when shorter) are split around each match (or removed); the match
counts per task are printed.

    python tools/openwebtext/filter_ngrams.py --tasks lambada race --lambada-path lambada.jsonl \\
        --race-path RACE/test --dedup-dataset corpus.json text --output clean.json

Task files are in the layouts tasks/main.py reads: --lambada-path (JSON lines with "text"),
--wikitext-path (WikiText-103 token files), --race-path (RACE directories or *.txt files),
--mnli-path / --qqp-path (GLUE TSV files). Each takes one or more paths.
"""
import argparse
import collections
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.preprocessing.webtext import ngrams  # noqa: E402
from megatron.preprocessing.webtext.jsonl import (WebtextError, byte_progress, check_inputs, ordered_map,  # noqa: E402
                                                  positive_workers, print_counts, read_batches, run_cli,
                                                  write_lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", required=True, type=str.lower,
                        help=f"Evaluation sets to remove: {', '.join(ngrams.TASKS)}.")
    for task in ngrams.TASKS:
        flag = "--wikitext-path" if task == "wikitext103" else f"--{task}-path"
        parser.add_argument(flag, dest=f"{task}_path", nargs="+", default=None, help=f"{task} file(s).")
    parser.add_argument("--dedup-dataset", nargs=2, required=True, metavar=("FILE", "TEXT_KEY"),
                        help="The corpus to decontaminate and the JSON key of its text.")
    parser.add_argument("--output", required=True, help="The decontaminated corpus.")
    parser.add_argument("--max-ngram-size", type=int, default=13, help="Words per n-gram.")
    parser.add_argument("--min-ngram-size", type=int, default=8,
                        help="Task examples shorter than --max-ngram-size are matched whole if at least this long.")
    parser.add_argument("--mode", choices=("split", "remove"), default="split",
                        help="split: cut matches out and keep the pieces; remove: drop the document.")
    parser.add_argument("--remove-char-each-side", type=int, default=200,
                        help="Characters cut on each side of a match (widened to whole words).")
    parser.add_argument("--filter-text-char-len", type=int, default=200, help="Pieces shorter than this are dropped.")
    parser.add_argument("--splits-count", type=int, default=10,
                        help="Documents with more matches than this are dropped whole.")
    parser.add_argument("--num-threads", "--workers", dest="workers", type=int, default=1,
                        help="Worker processes.")
    return parser.parse_args(argv)


def load_tasks(args):
    tasks = {}
    for task in dict.fromkeys(args.tasks):
        if task not in ngrams.TASKS:
            raise WebtextError(f"--tasks {task}: unknown task (choose from {', '.join(ngrams.TASKS)})")
        paths = getattr(args, f"{task}_path")
        if not paths:
            flag = "--wikitext-path" if task == "wikitext103" else f"--{task}-path"
            raise WebtextError(f"--tasks {task} needs {flag}")
        tasks[task] = ngrams.task_texts(task, paths)
    for task in ngrams.TASKS:
        if getattr(args, f"{task}_path") and task not in tasks:
            print(f"note: a path was given for {task}, which is not in --tasks; it has no effect", file=sys.stderr)
    return tasks


def main(argv=None):
    args = parse_args(argv)
    positive_workers(args.workers, "--num-threads")
    for flag in ("remove_char_each_side", "filter_text_char_len", "splits_count"):
        if getattr(args, flag) < 0:
            raise WebtextError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 0")
    data, text_key = args.dedup_dataset
    check_inputs([data])
    index = ngrams.build_index(load_tasks(args), args.max_ngram_size, args.min_ngram_size)
    print(f"{len(index):,} task n-grams from {', '.join(index.task_names)} "
          f"(lengths {min(index.lengths, default=0)}..{max(index.lengths, default=0)} words)")
    config = ngrams.FilterConfig(text_key=text_key, mode=args.mode, remove_char_each_side=args.remove_char_each_side,
                                 filter_text_char_len=args.filter_text_char_len, splits_count=args.splits_count)
    counts = collections.Counter()

    def lines():
        with byte_progress([data], "filter ngrams") as progress:
            for out, batch_counts in ordered_map(ngrams.filter_batch, read_batches([data], 256, progress), args.workers,
                                                 initializer=ngrams.init_worker, initargs=(index, config)):
                counts.update(batch_counts)
                yield from out

    written = write_lines(args.output, lines())
    print_counts(f"{counts['documents']:,} documents -> {written:,} written to {args.output}",
                 {k: counts[k] for k in ("documents", "clean", "split", "removed", "pieces")})
    print_counts("matches per task", {f"{t} ({what})": counts[f"{t}:{what}"]
                                      for t in index.task_names for what in ("matches", "documents")})


if __name__ == "__main__":
    run_cli(main)
