#!/usr/bin/env python
"""MLPerf BERT pretraining TFRecords from sentence-per-line text, as the reference script makes them.

    python tools/create_pretraining_data.py --input_file=part-00000-of-00500 \\
        --output_file=tfrecord/part-00000-of-00500 --vocab_file=vocab.txt --do_lower_case=True \\
        --max_seq_length=512 --max_predictions_per_seq=76 --masked_lm_prob=0.15 \\
        --random_seed=12345 --dupe_factor=10

The records equal the MLPerf (Google) script's for the same input and seed, record for record:
same documents, shuffles and random draws of ``random.Random(random_seed)``, same features,
writers filled round robin. ``--input_file`` takes comma-separated files and globs (all read
into one run, as the reference); ``--output_file`` comma-separated files.

Many parts at once (MLPerf's 500): ``--output_dir DIR --workers N`` runs the reference's
command once per input file F, writing ``DIR/basename(F)``, N files at a time, each with the
same seed (exactly what a shell loop over the parts produces).
"""
import argparse
import glob
import logging
import multiprocessing
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.preprocessing.mlperf_bert.create import (  # noqa: E402
    CreateConfig, CreateDataError, build_instances, read_corpus, write_instances)

log = logging.getLogger("create_pretraining_data")


def _bool(value):
    lowered = str(value).strip().lower()
    if lowered in ("true", "t", "1", "yes", "y"):
        return True
    if lowered in ("false", "f", "0", "no", "n"):
        return False
    raise argparse.ArgumentTypeError(f"expected true or false, got {value!r}")


def get_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--input_file", required=True, help="input text files: comma-separated, globs allowed")
    p.add_argument("--output_file", help="output TFRecord files, comma-separated (filled round robin)")
    p.add_argument("--output_dir", help="one run per input file, each written to DIR/<input basename>")
    p.add_argument("--vocab_file", required=True, help="BERT vocab.txt")
    # absl spellings: --flag, --flag=true/false, --noflag
    for name, default, text in (("do_lower_case", True, "lower-case and strip accents"),
                                ("do_whole_word_mask", False, "mask whole words rather than WordPieces")):
        p.add_argument(f"--{name}", nargs="?", const=True, default=default, type=_bool, help=text)
        p.add_argument(f"--no{name}", dest=name, action="store_false", help=argparse.SUPPRESS)
    p.add_argument("--max_seq_length", type=int, default=128)
    p.add_argument("--max_predictions_per_seq", type=int, default=20)
    p.add_argument("--random_seed", type=int, default=12345)
    p.add_argument("--dupe_factor", type=int, default=10, help="passes over the documents, each with fresh masks")
    p.add_argument("--masked_lm_prob", type=float, default=0.15)
    p.add_argument("--short_seq_prob", type=float, default=0.1)
    p.add_argument("--workers", type=int, default=1, help="input files processed at once (with --output_dir)")
    p.add_argument("--engine", choices=("auto", "cpp", "python"), default="auto",
                   help="cpp: the C++ core; python: the plain reference algorithm (same output, slower)")
    args = p.parse_args(argv)
    if (args.output_file is None) == (args.output_dir is None):
        p.error("give exactly one of --output_file and --output_dir")
    if args.workers < 1:
        p.error(f"--workers={args.workers}: must be >= 1")
    if args.workers > 1 and args.output_dir is None:
        p.error("--workers > 1 needs --output_dir (one run per input file); one --output_file run is one process")
    return args


def expand_inputs(spec):
    files = []
    for pattern in spec.split(","):
        if not pattern:
            continue
        matched = sorted(glob.glob(pattern))
        if not matched and not glob.has_magic(pattern):
            raise CreateDataError(f"--input_file {pattern}: no such file")
        files.extend(matched)
    if not files:
        raise CreateDataError(f"--input_file {spec}: matches no files")
    return files


def load_tokenizer(vocab_file, do_lower_case):
    from megatron.tokenizer.bert import BertWordPieceTokenizer

    try:
        return BertWordPieceTokenizer(vocab_file, lower_case=do_lower_case)
    except ValueError as exc:
        raise CreateDataError(str(exc).replace("--vocab-file", "--vocab_file")) from None


def config_from_args(args):
    config = CreateConfig(max_seq_length=args.max_seq_length, max_predictions_per_seq=args.max_predictions_per_seq,
                          random_seed=args.random_seed, dupe_factor=args.dupe_factor,
                          masked_lm_prob=args.masked_lm_prob, short_seq_prob=args.short_seq_prob,
                          do_whole_word_mask=args.do_whole_word_mask)
    config.validate()
    return config


def run_once(input_files, output_files, tokenizer, config, engine):
    start = time.time()
    corpus = read_corpus(input_files, tokenizer)
    if corpus.num_documents == 0:
        raise CreateDataError(f"--input_file {','.join(input_files)}: holds no documents (no line with a token)")
    read_s = time.time() - start
    instances, _ = build_instances(corpus, tokenizer, config, engine)
    build_s = time.time() - start - read_s
    write_instances(instances, output_files)
    log.info("%s: %d documents -> %d instances in %s (read %.1f s, build %.1f s, write %.1f s)",
             ",".join(input_files), corpus.num_documents, len(instances), ",".join(output_files),
             read_s, build_s, time.time() - start - read_s - build_s)
    return len(instances)


_WORKER = {}


def _init_worker(vocab_file, do_lower_case, config, engine):
    _WORKER.update(tokenizer=load_tokenizer(vocab_file, do_lower_case), config=config, engine=engine)


def _run_in_worker(job):
    input_file, output_file = job
    try:
        return input_file, run_once([input_file], [output_file], _WORKER["tokenizer"], _WORKER["config"],
                                    _WORKER["engine"]), None
    except CreateDataError as exc:
        return input_file, 0, str(exc)


def main(argv=None):
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    args = get_args(argv)
    try:
        config = config_from_args(args)
        input_files = expand_inputs(args.input_file)
        if args.output_dir is None:
            output_files = [f for f in args.output_file.split(",") if f]
            if not output_files:
                raise CreateDataError("--output_file: no file named")
            tokenizer = load_tokenizer(args.vocab_file, args.do_lower_case)
            total = run_once(input_files, output_files, tokenizer, config, args.engine)
            log.info("Wrote %d total instances", total)
            return 0
        jobs = [(f, os.path.join(args.output_dir, os.path.basename(f))) for f in input_files]
        names = [out for _, out in jobs]
        if len(set(names)) != len(names):
            raise CreateDataError("--output_dir: two input files share a basename; their outputs would collide")
        os.makedirs(args.output_dir, exist_ok=True)
        load_tokenizer(args.vocab_file, args.do_lower_case)  # fail once, here, on a bad vocabulary
        init = (args.vocab_file, args.do_lower_case, config, args.engine)
        failures, total = [], 0
        if args.workers == 1:
            _init_worker(*init)
            results = map(_run_in_worker, jobs)
        else:
            pool = multiprocessing.get_context("fork").Pool(min(args.workers, len(jobs)), _init_worker, init,
                                                            maxtasksperchild=1)
            results = pool.imap_unordered(_run_in_worker, jobs)
        for input_file, count, error in results:
            total += count
            if error:
                failures.append(error)
                log.error("%s", error)
        if args.workers > 1:
            pool.close()
            pool.join()
        log.info("Wrote %d total instances from %d input files", total, len(jobs) - len(failures))
        if failures:
            print(f"error: {len(failures)} of {len(jobs)} input files failed; first: {failures[0]}", file=sys.stderr)
            return 1
        return 0
    except CreateDataError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
