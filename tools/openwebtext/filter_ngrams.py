#!/usr/bin/env python
"""Decontaminate a training corpus against evaluation sets: documents containing any
--max-ngram-size-word n-gram of a task's text (or a whole task example of at least
--min-ngram-size words, when shorter) are split around each match (or removed); the match
counts per task are printed.

    python tools/openwebtext/filter_ngrams.py --tasks lambada race --lambada-path lambada.jsonl \\
        --race-path RACE/test --dedup-dataset corpus.json text --output clean.json

Two passes over the corpus, as in Megatron-LM: the first counts in how many documents each task
n-gram occurs, and n-grams found in --key-threshold (10) or more documents are common text
(licence lines, boilerplate), not contamination, and are not filtered; the second filters with
the rest. --save-dictionary writes the n-grams the second pass uses (a JSON object, n-gram ->
its tasks); --load-dictionary reads such a file, or the pickle Megatron-LM's tool saves, instead
of reading the tasks and counting (--tasks is then not needed).

Task files are in the layouts tasks/main.py reads: --lambada-path (JSON lines with "text"),
--wikitext-path (WikiText-103 token files), --race-path (RACE directories or *.txt files),
--mnli-path / --qqp-path (GLUE TSV files). Each takes one or more paths. Megatron-LM's tasks that
it downloads from the Hugging Face hub (squad, natural_questions, triviaqa, webqa, drop, coqa,
piqa) are not available offline.
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

DEFAULT_KEY_THRESHOLD = 10  # Megatron-LM's default


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--tasks", nargs="+", default=None, type=str.lower,
                        help=f"Evaluation sets to remove: {', '.join(ngrams.TASKS)} (required unless "
                             "--load-dictionary is given).")
    for task, flag in ngrams.TASK_FLAGS.items():
        parser.add_argument(flag, dest=f"{task}_path", nargs="+", default=None, help=f"{task} file(s).")
    parser.add_argument("--dedup-dataset", nargs=2, required=True, metavar=("FILE", "TEXT_KEY"),
                        help="The corpus to decontaminate and the JSON key of its text.")
    parser.add_argument("--output", default=None,
                        help="The decontaminated corpus (may be left out when --save-dictionary is given).")
    parser.add_argument("--max-ngram-size", type=int, default=13, help="Words per n-gram.")
    parser.add_argument("--min-ngram-size", type=int, default=8,
                        help="Task examples shorter than --max-ngram-size are matched whole if at least this long.")
    parser.add_argument("--key-threshold", type=int, default=None,
                        help=f"Task n-grams found in at least this many documents of the corpus are common text "
                             f"and not filtered (default {DEFAULT_KEY_THRESHOLD}, as in Megatron-LM); 0 skips the "
                             "counting pass and filters every task n-gram.")
    parser.add_argument("--save-dictionary", default=None, metavar="FILE",
                        help="Write the n-grams the filtering pass uses (a JSON object, n-gram -> its tasks).")
    parser.add_argument("--load-dictionary", default=None, metavar="FILE",
                        help="Filter with the n-grams of this file (from --save-dictionary, or Megatron-LM's pickle) "
                             "instead of reading --tasks and counting.")
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


def check_args(args):
    positive_workers(args.workers, "--num-threads")
    for flag in ("remove_char_each_side", "filter_text_char_len", "splits_count"):
        if getattr(args, flag) < 0:
            raise WebtextError(f"--{flag.replace('_', '-')} {getattr(args, flag)} must be at least 0")
    if args.key_threshold is not None and args.key_threshold < 0:
        raise WebtextError(f"--key-threshold {args.key_threshold} must be at least 0 "
                           "(0: no counting pass, every task n-gram is filtered)")
    if args.output is None and args.save_dictionary is None:
        raise WebtextError("nothing to write: give --output and/or --save-dictionary")
    if args.load_dictionary is None:
        if not args.tasks:
            raise WebtextError("--tasks is required unless --load-dictionary is given")
        for task in args.tasks:
            ngrams.check_task(task)
        return
    # Megatron-LM's command lines name the tasks even when they load a dictionary: accepted, not read.
    given = [ngrams.TASK_FLAGS[t] for t in ngrams.TASKS if getattr(args, f"{t}_path")]
    if args.tasks or given:
        print(f"note: {' '.join(['--tasks'] * bool(args.tasks) + given)} not read: the n-grams come from "
              f"--load-dictionary {args.load_dictionary}", file=sys.stderr)
    if args.key_threshold is not None:
        print("note: --key-threshold has no effect with --load-dictionary (the dictionary was counted when "
              "it was made)", file=sys.stderr)


def load_tasks(args):
    tasks = {}
    for task in dict.fromkeys(args.tasks):
        paths = getattr(args, f"{task}_path")
        if not paths:
            hint = " (Megatron-LM downloads RACE from the Hugging Face hub; here it is read from local files)" \
                if task == "race" else ""
            raise WebtextError(f"--tasks {task} needs {ngrams.TASK_FLAGS[task]}{hint}")
        tasks[task] = ngrams.task_texts(task, paths)
    for task in ngrams.TASKS:
        if getattr(args, f"{task}_path") and task not in tasks:
            print(f"note: a path was given for {task}, which is not in --tasks; it has no effect", file=sys.stderr)
    return tasks


def drop_common(args, index, config, data):
    """The counting pass: the index without the n-grams in at least --key-threshold documents."""
    threshold = DEFAULT_KEY_THRESHOLD if args.key_threshold is None else args.key_threshold
    if threshold == 0:
        print("--key-threshold 0: no counting pass; every task n-gram is filtered")
        return index
    documents = collections.Counter()
    with byte_progress([data], "count ngrams") as progress:
        for batch_documents in ordered_map(ngrams.count_batch, read_batches([data], 256, progress), args.workers,
                                           initializer=ngrams.init_worker, initargs=(index, config)):
            documents.update(batch_documents)
    index, common = ngrams.drop_common(index, documents, threshold)
    print_counts(f"task n-grams in >= {threshold} documents of {data} are common text, not filtered "
                 f"(--key-threshold {threshold})", {f"{t} (common)": common[t] for t in index.task_names})
    return index


def main(argv=None):
    args = parse_args(argv)
    check_args(args)
    data, text_key = args.dedup_dataset
    config = ngrams.FilterConfig(text_key=text_key, mode=args.mode, remove_char_each_side=args.remove_char_each_side,
                                 filter_text_char_len=args.filter_text_char_len, splits_count=args.splits_count)
    if args.load_dictionary is not None:
        index = ngrams.load_dictionary(args.load_dictionary)
        source = f"--load-dictionary {args.load_dictionary}"
    else:
        check_inputs([data])
        index = ngrams.build_index(load_tasks(args), args.max_ngram_size, args.min_ngram_size)
        print(f"{len(index):,} task n-grams from {', '.join(index.task_names)}")
        index = drop_common(args, index, config, data)
        source = ", ".join(index.task_names)
    print(f"{len(index):,} n-grams to filter from {source} "
          f"(lengths {min(index.lengths, default=0)}..{max(index.lengths, default=0)} words)")
    if args.save_dictionary is not None:
        ngrams.save_dictionary(args.save_dictionary, index)
        print(f"wrote the {len(index):,} n-grams to {args.save_dictionary}")
    if args.output is None:
        return

    check_inputs([data])
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
