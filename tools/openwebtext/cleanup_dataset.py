#!/usr/bin/env python
"""Clean a loose-JSON corpus: repair broken Unicode (ftfy), keep the wanted languages
(py3langid, offline), drop documents with fewer than --min-tokens GPT-2 tokens; print the
count per reason.

    python tools/openwebtext/cleanup_dataset.py <input> <output> [--min-tokens 128] [--workers N]

Without --vocab-file/--merge-file, tokens are counted as the pieces of GPT-2's pre-tokenizer
(a lower bound on GPT-2 BPE tokens: every piece is one token or more).
"""
import argparse
import collections
import os
import sys

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

from megatron.preprocessing.webtext import cleanup  # noqa: E402
from megatron.preprocessing.webtext.jsonl import (WebtextError, byte_progress, check_inputs, ordered_map,  # noqa: E402
                                                  positive_workers, print_counts, read_batches, run_cli,
                                                  write_lines)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("input", help="Loose-JSON corpus.")
    parser.add_argument("output", help="Cleaned loose-JSON corpus.")
    parser.add_argument("--text-key", default="text", help="JSON key of the document text.")
    parser.add_argument("--min-tokens", type=int, default=128, help="Drop documents with fewer GPT-2 tokens.")
    parser.add_argument("--languages", nargs="+", default=["en"],
                        help="ISO 639-1 codes to keep (py3langid's labels).")
    parser.add_argument("--min-lang-prob", type=float, default=0.0,
                        help="Also require this normalised probability for the detected language (0: off).")
    parser.add_argument("--langid-chars", type=int, default=0,
                        help="Classify only the first N characters of each document (0: all of it).")
    parser.add_argument("--no-fix-text", action="store_true", help="Do not run ftfy.fix_text.")
    parser.add_argument("--language-key", default=None,
                        help="Store the detected language in this JSON key of each kept document.")
    parser.add_argument("--vocab-file", default=None, help="GPT-2 vocab.json to count exact BPE tokens.")
    parser.add_argument("--merge-file", default=None, help="GPT-2 merges.txt (with --vocab-file).")
    parser.add_argument("--workers", type=int, default=1, help="Worker processes.")
    return parser.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    positive_workers(args.workers)
    if args.min_tokens < 0:
        raise WebtextError(f"--min-tokens {args.min_tokens} must be at least 0")
    if not 0.0 <= args.min_lang_prob <= 1.0:
        raise WebtextError(f"--min-lang-prob {args.min_lang_prob} must be in [0, 1]")
    if bool(args.vocab_file) != bool(args.merge_file):
        raise WebtextError("--vocab-file and --merge-file go together")
    for flag, path in (("--vocab-file", args.vocab_file), ("--merge-file", args.merge_file)):
        if path and not os.path.isfile(path):
            raise WebtextError(f"{flag} {path}: no such file")
    check_inputs([args.input])
    config = cleanup.CleanupConfig(text_key=args.text_key, languages=tuple(args.languages),
                                   min_lang_prob=args.min_lang_prob, langid_chars=args.langid_chars,
                                   min_tokens=args.min_tokens, fix_text=not args.no_fix_text,
                                   vocab_file=args.vocab_file, merge_file=args.merge_file,
                                   keep_language_field=args.language_key)
    reasons, languages = collections.Counter({r: 0 for r in cleanup.REASONS}), collections.Counter()

    def lines():
        with byte_progress([args.input], "cleanup") as progress:
            for out, batch_reasons, batch_languages in ordered_map(
                    cleanup.clean_batch, read_batches([args.input], 256, progress), args.workers,
                    initializer=cleanup.init_worker, initargs=(config,)):
                reasons.update(batch_reasons)
                languages.update(batch_languages)
                yield from out

    write_lines(args.output, lines())
    total = sum(reasons[r] for r in cleanup.REASONS)
    print_counts(f"{total:,} documents -> {reasons['kept']:,} kept in {args.output}", dict(reasons))
    if languages:
        print_counts("dropped by language (top 10)", dict(languages.most_common(10)))


if __name__ == "__main__":
    run_cli(main)
