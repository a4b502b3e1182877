#!/usr/bin/env python
"""Benchmark ``tools/preprocess_data.py`` end to end and print a table.

Each configuration runs the real tool as a subprocess (start-up included) ``--repeats``
times; the table shows the median wall time, MiB/s, MiB/s per worker, and the peak RSS of
the largest process. Configurations: GPT-2 BPE with ``--append-eod`` and BERT WordPiece
(uncased, the real vocabulary) with ``--split-sentences``, at 1 and 2 workers.

The default corpus is fixed: the ``pydoc_data.topics`` documents repeated 10 times (about
4.7 MiB of loose JSON, fields ``text`` and ``title``). No GPT-2 vocabulary can be
downloaded here, so a GPT-2-style byte-level BPE is trained first on that corpus and the
demo corpus, towards GPT-2's vocabulary size (or pass ``--gpt2-vocab``/``--gpt2-merges``).
Each configuration runs once more before the timed runs, reported as "first run": it trains
the Punkt model (BERT, cached afterwards next to the output) and checks the BPE files for
tiktoken (GPT-2, remembered afterwards).

    python benchmarks/bench_preprocess.py [--corpus FILE] [--repeats 3]
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

# Megatron-LM v2.5's own tool on a 2-core machine, same corpus (quoted from the issue).
MEGATRON_V25_SECONDS = {("gpt2", 1): 4.2, ("gpt2", 2): 3.4, ("bert", 1): 8.0, ("bert", 2): 5.3}
GOAL_SPEEDUP = {"gpt2": 4.0, "bert": 3.0}

_RUNNER = ("import resource, subprocess, sys, time\n"
           "t = time.perf_counter()\n"
           "r = subprocess.run(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)\n"
           "dt = time.perf_counter() - t\n"
           "sys.stderr.write(r.stderr.decode()[-2000:] if r.returncode else '')\n"
           "print(dt, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, r.returncode)\n")


def timed_run(cmd, env=None):
    """Wall seconds and peak RSS (MiB) of the largest process of ``cmd``."""
    out = subprocess.run([sys.executable, "-c", _RUNNER, *cmd], capture_output=True, text=True, check=True,
                         env=env)
    seconds, rss_kib, code = out.stdout.split()
    if int(code):
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    return float(seconds), int(rss_kib) / 1024


def startup_seconds():
    """Time of the tool printing its help: interpreter start plus its imports."""
    cmd = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), "--help"]
    times = []
    for _ in range(5):
        t = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, check=True)
        times.append(time.perf_counter() - t)
    return statistics.median(times)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", help="loose-JSON corpus with 'text' (default: topics x 10)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--gpt2-vocab")
    parser.add_argument("--gpt2-merges")
    parser.add_argument("--only", choices=["gpt2", "bert"], help="run one tokenizer only")
    args = parser.parse_args()

    from megatron.tokenizer import bert_uncased_vocab_path
    from tools.make_demo_corpus import write_corpus

    work = tempfile.mkdtemp(prefix="bench_preprocess_")
    corpus = args.corpus
    if corpus is None:
        corpus = os.path.join(work, "topics_x10.json")
        write_corpus(corpus, topics_only=True, repeat=10)
    size_mib = os.path.getsize(corpus) / 2**20

    vocab, merges = args.gpt2_vocab, args.gpt2_merges
    if vocab is None:
        from tools.train_tokenizer import train_tokenizer

        # As many merges as this text yields toward GPT-2's 50,257 tokens (about 21k): the
        # demo corpus adds variety to the repeated topics.
        demo = os.path.join(work, "demo.json")
        write_corpus(demo)
        gpt2_dir = os.path.join(work, "gpt2")
        train_tokenizer("GPT2BPETokenizer", [demo, corpus], gpt2_dir, vocab_size=50257, min_frequency=1)
        vocab, merges = os.path.join(gpt2_dir, "vocab.json"), os.path.join(gpt2_dir, "merges.txt")
    with open(vocab, encoding="utf-8") as f:
        gpt2_vocab_size = len(json.load(f))

    tool = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py")]
    configs = {
        "gpt2": ["--tokenizer-type", "GPT2BPETokenizer", "--vocab-file", vocab, "--merge-file", merges,
                 "--append-eod"],
        "bert": ["--tokenizer-type", "BertWordPieceLowerCase", "--vocab-file", bert_uncased_vocab_path(),
                 "--split-sentences"],
    }
    names = [args.only] if args.only else list(configs)
    print(f"corpus: {corpus} ({size_mib:.2f} MiB); GPT-2-style BPE vocabulary: {gpt2_vocab_size} tokens; "
          f"{os.cpu_count()} CPUs; median of {args.repeats}")
    print(f"start-up (tool --help): {startup_seconds():.3f} s")
    # A cache directory of its own, so the first run really is a first run.
    env = dict(os.environ, XDG_CACHE_HOME=os.path.join(work, "cache"))
    header = (f"| {'tokenizer':<33} | workers | first run s | wall s (median) | MiB/s | MiB/s/worker "
              f"| peak RSS MiB | Megatron v2.5 s | speed-up |")
    print(header)
    print("|" + "|".join("-" * (len(c)) for c in header.split("|")[1:-1]) + "|")
    for name in names:
        for workers in args.workers:
            prefix = os.path.join(work, f"{name}_{workers}")
            cmd = tool + ["--input", corpus, "--output-prefix", prefix, "--workers", str(workers)] + configs[name]
            first = timed_run(cmd, env)[0]
            runs = [timed_run(cmd, env) for _ in range(args.repeats)]
            wall = statistics.median(r[0] for r in runs)
            rss = max(r[1] for r in runs)
            reference = MEGATRON_V25_SECONDS.get((name, workers)) if args.corpus is None else None
            speedup = f"{reference / wall:.1f}x (goal {GOAL_SPEEDUP[name]:.0f}x)" if reference else "-"
            label = "GPT-2 BPE, --append-eod" if name == "gpt2" else "BERT WordPiece, --split-sentences"
            print(f"| {label:<33} | {workers:>7} | {first:>11.2f} | {wall:>15.2f} | {size_mib / wall:>5.2f} | "
                  f"{size_mib / wall / workers:>12.2f} | {rss:>12.0f} | "
                  f"{reference if reference else '-':>15} | {speedup} |")


if __name__ == "__main__":
    main()
