#!/usr/bin/env python
"""Throughput of each tools/openwebtext stage on a generated noisy corpus (default >= 200 MB).

Each stage runs as its own process (the real CLI, through ``runpy``) so its peak memory is its
own: the larger of the tool's and any worker's maximum resident set. Reported per stage:
documents in, MiB in, wall seconds, CPU seconds (tool + workers), documents/s, MiB per
CPU-second (= MiB/s per core, robust on a shared machine) and peak RSS. Then the near-duplicate
pass at two corpus sizes (how it scales), and numpy banding against ``datasketch.MinHashLSH``
on the same fingerprints (the candidate sets must be equal).

    nice -n 10 python benchmarks/bench_webtext.py --work-dir /tmp/webtext_bench --target-mib 200 --workers 2
"""
import argparse
import json
import os
import subprocess
import sys
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)
TOOLS = os.path.join(REPO, "tools", "openwebtext")
DATA = os.path.join(REPO, "tests", "data")

# Runs one tool in this process and prints its resource use as the last line (JSON).
_WRAPPER = """
import json, resource, runpy, sys, time
tool, argv = sys.argv[1], sys.argv[2:]
sys.argv = [tool] + argv
start = time.perf_counter()
try:
    runpy.run_path(tool, run_name="__main__")
except SystemExit as exit_:
    if exit_.code not in (None, 0):
        raise
me, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
print(json.dumps({"wall": time.perf_counter() - start, "cpu": me.ru_utime + me.ru_stime + kids.ru_utime + kids.ru_stime,
                  "peak_mib": max(me.ru_maxrss, kids.ru_maxrss) / 1024}))
"""


def run_stage(tool, *args):
    result = subprocess.run([sys.executable, "-c", _WRAPPER, os.path.join(TOOLS, tool), *map(str, args)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"{tool} failed:\n{result.stderr[-3000:]}")
    lines = result.stdout.strip().splitlines()
    return json.loads(lines[-1]), "\n".join(lines[:-1])


def count_lines(path):
    with open(path, "rb") as handle:
        return sum(1 for line in handle if line.strip())


def row(name, path, usage, docs=None):
    mib = os.path.getsize(path) / 2 ** 20
    docs = docs if docs is not None else count_lines(path)
    return {"stage": name, "docs": docs, "mib": mib, "wall_s": usage["wall"], "cpu_s": usage["cpu"],
            "docs_per_s": docs / usage["wall"], "mib_per_cpu_s": mib / usage["cpu"], "peak_mib": usage["peak_mib"]}


def head(src, dst, mib):
    """The first lines of ``src`` up to ``mib`` MiB."""
    limit, written = mib * 2 ** 20, 0
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        for line in fin:
            if written >= limit:
                break
            fout.write(line)
            written += len(line)
    return dst


def compare_lsh(fingerprints_path, docs):
    """numpy banding (what find_duplicates does) against datasketch.MinHashLSH, same bands."""
    from datasketch import LeanMinHash, MinHash, MinHashLSH

    from megatron.preprocessing.webtext.minhash import Fingerprints, MinHashConfig, candidate_pairs

    config = MinHashConfig()
    fp = Fingerprints.load(fingerprints_path, config)
    hv = fp.hashvalues[:docs]
    start = time.perf_counter()
    ours = candidate_pairs(hv, config.num_bands, max_bucket=10 ** 9)
    ours_s = time.perf_counter() - start
    start = time.perf_counter()
    lsh = MinHashLSH(num_perm=config.num_seeds, params=(config.num_bands, config.rows))
    template = MinHash(config.num_seeds, seed=config.seed, scheme="affine32")
    sketches = []
    for i in range(len(hv)):
        sketch = LeanMinHash(seed=config.seed, hashvalues=hv[i], scheme=template.scheme)
        lsh.insert(i, sketch)
        sketches.append(sketch)
    theirs = set()
    for i, sketch in enumerate(sketches):
        theirs.update((min(i, j), max(i, j)) for j in lsh.query(sketch) if j != i)
    theirs_s = time.perf_counter() - start
    same = set(map(tuple, ours.tolist())) == theirs
    return {"docs": len(hv), "numpy_s": ours_s, "minhashlsh_s": theirs_s, "pairs": len(ours), "same": same,
            "num_pairs_datasketch": len(theirs)}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--work-dir", default="/tmp/webtext_bench")
    parser.add_argument("--target-mib", type=float, default=200.0, help="Size of the generated corpus.")
    parser.add_argument("--small-mib", type=float, default=50.0, help="Smaller size for the near-dup scaling run.")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--lsh-docs", type=int, default=20000, help="Documents for the banding comparison.")
    parser.add_argument("--output-json", default=None)
    args = parser.parse_args()
    w = args.work_dir
    os.makedirs(w, exist_ok=True)
    corpus = os.path.join(w, "raw", "corpus.json")
    docs = int(args.target_mib * 2 ** 20 / 2570) + 1  # about 2.5 KiB per generated document
    if not os.path.exists(corpus) or os.path.getsize(corpus) < args.target_mib * 2 ** 20:
        subprocess.run([sys.executable, os.path.join(TOOLS, "make_noisy_corpus.py"), "--output-dir",
                        os.path.join(w, "raw"), "--num-docs", str(docs), "--no-urls", "--task-file",
                        os.path.join(DATA, "lambada_sample.jsonl")], check=True)
    print(f"corpus: {os.path.getsize(corpus) / 2 ** 20:.1f} MiB, {count_lines(corpus):,} documents", flush=True)
    j = lambda name: os.path.join(w, name)  # noqa: E731
    n = str(args.workers)
    rows = []
    usage, _ = run_stage("exact_dedup.py", corpus, j("exact.json"), "--workers", n)
    rows.append(row("exact_dedup", corpus, usage))
    print(rows[-1], flush=True)
    usage, _ = run_stage("cleanup_dataset.py", j("exact.json"), j("clean.json"), "--workers", n)
    rows.append(row("cleanup_dataset (ftfy + py3langid + tokens)", j("exact.json"), usage))
    print(rows[-1], flush=True)
    scaling = []
    for label, path in (("small", head(j("clean.json"), j("clean_small.json"), args.small_mib)),
                        ("full", j("clean.json"))):
        usage, out = run_stage("find_duplicates.py", "--inputs", path, "url", "--output", j(f"pairs_{label}.json"),
                               "--num-workers", n, "--save-fingerprints", j(f"fp_{label}.npz"))
        r = row(f"find_duplicates ({label})", path, usage)
        r["log"] = out
        scaling.append(r)
        print(r, flush=True)
    rows.append(scaling[-1])
    usage, _ = run_stage("group_duplicate_url.py", j("pairs_full.json"), j("groups.json"), "0.5")
    usage2, _ = run_stage("remove_group_duplicates.py", j("groups.json"), j("clean.json"), j("dedup.json"))
    usage = {"wall": usage["wall"] + usage2["wall"], "cpu": usage["cpu"] + usage2["cpu"],
             "peak_mib": max(usage["peak_mib"], usage2["peak_mib"])}
    rows.append(row("group + remove_group_duplicates", j("clean.json"), usage))
    print(rows[-1], flush=True)
    usage, out = run_stage("filter_ngrams.py", "--tasks", "lambada", "race", "mnli", "wikitext103",
                           "--lambada-path", os.path.join(DATA, "lambada_sample.jsonl"),
                           "--race-path", os.path.join(DATA, "race"),
                           "--mnli-path", os.path.join(DATA, "glue", "MNLI", "dev_matched.tsv"),
                           "--wikitext-path", os.path.join(DATA, "wikitext_sample.txt"),
                           "--dedup-dataset", j("dedup.json"), "text", "--output", j("final.json"), "--num-threads", n)
    rows.append(row("filter_ngrams (4 tasks)", j("dedup.json"), usage))
    print(rows[-1], flush=True)
    lsh = compare_lsh(j("fp_full.npz"), args.lsh_docs)
    print(lsh, flush=True)

    print("\n| stage | docs in | MiB in | wall s | CPU s | docs/s | MiB/s per core | peak RSS MiB |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['stage']} | {r['docs']:,} | {r['mib']:.1f} | {r['wall_s']:.1f} | {r['cpu_s']:.1f} | "
              f"{r['docs_per_s']:,.0f} | {r['mib_per_cpu_s']:.2f} | {r['peak_mib']:.0f} |")
    print("\nnear-duplicate scaling:")
    for r in scaling:
        print(f"--- {r['stage']}: {r['docs']:,} docs, {r['mib']:.1f} MiB, wall {r['wall_s']:.1f} s, "
              f"CPU {r['cpu_s']:.1f} s, peak {r['peak_mib']:.0f} MiB\n{r['log']}")
    if args.output_json:
        with open(args.output_json, "w") as handle:
            json.dump({"rows": rows, "scaling": scaling, "lsh": lsh}, handle, indent=1)


if __name__ == "__main__":
    main()
