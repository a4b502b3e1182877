"""fp32 vs --bf16 vs --fp16 training on the CPU: why a run with --fp16 on a CPU says it is slow.

First the matrix products of the demo's GPT (hidden 64, 16 x 64 tokens; the 4h MLP and the
output layer over an 8,192-token vocabulary) in each dtype, one thread, fastest of 30: the kernels
alone, little disturbed by other jobs. Then ``pretrain_gpt.py`` on the demo data with the demo's
model (2 layers, hidden 64, 4 heads, 64-token sequences, batch 16) once per precision, reading
the elapsed time of each iteration from its log: the fastest and the median iteration after the
first two, and their ratios to fp32.

    bash examples/run_demo.sh   # with DEMO_ITERS=0: the data only, in ./demo
    python benchmarks/bench_cpu_precision.py --demo-dir demo [--iters 8] [--kernels-only]
"""
import argparse
import os
import re
import statistics
import subprocess
import sys
import time

DTYPES = (("fp32", "float32"), ("bf16", "bfloat16"), ("fp16", "float16"))


def matmul_ms(m: int, k: int, n: int, dtype_name: str, repeats: int = 30) -> float:
    import torch

    a = torch.randn(m, k).to(getattr(torch, dtype_name))
    b = torch.randn(k, n).to(getattr(torch, dtype_name))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 1000.0 * best


def kernel_table() -> None:
    import torch

    torch.set_num_threads(1)
    print(f"matrix products, torch {torch.__version__}, 1 thread, fastest of 30 (ms)")
    print("| [m, k] x [k, n] | fp32 | bf16 | fp16 | fp16 vs fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for m, k, n in ((1024, 64, 256), (1024, 256, 64), (1024, 64, 8192)):
        times = [matmul_ms(m, k, n, dtype) for _, dtype in DTYPES]
        print(f"| [{m}, {k}] x [{k}, {n}] | " + " | ".join(f"{t:.2f}" for t in times)
              + f" | {times[2] / times[0]:.0f}x |")

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ELAPSED = re.compile(r"^ iteration\s+(\d+)/.*?elapsed time per iteration \(ms\): ([\d.]+)", re.M)


def iteration_ms(demo_dir: str, precision: list, iters: int) -> list:
    command = [sys.executable, os.path.join(REPO, "pretrain_gpt.py"),
               "--num-layers", "2", "--hidden-size", "64", "--num-attention-heads", "4", "--seq-length", "64",
               "--max-position-embeddings", "64", "--micro-batch-size", "16", "--global-batch-size", "16",
               "--train-iters", str(iters), "--lr", "2e-3", "--data-path", f"{demo_dir}/gpt_text_document",
               "--vocab-file", f"{demo_dir}/gpt2/vocab.json", "--merge-file", f"{demo_dir}/gpt2/merges.txt",
               "--split", "95,4,1", "--num-workers", "0", "--log-interval", "1", "--eval-interval", "1000",
               "--eval-iters", "0", *precision]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True)
    if result.returncode != 0:
        raise SystemExit(f"pretrain_gpt.py {' '.join(precision)} exited {result.returncode}:\n{result.stderr[-2000:]}")
    times = {int(i): float(ms) for i, ms in ELAPSED.findall(result.stdout)}
    return [times[i] for i in sorted(times) if i > 2]  # the first two build caches and warm up


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--demo-dir", default="demo", help="examples/run_demo.sh's output directory")
    parser.add_argument("--iters", type=int, default=8)
    parser.add_argument("--kernels-only", action="store_true", help="only the matrix-product table")
    args = parser.parse_args(argv)
    kernel_table()
    if args.kernels_only:
        return
    rows = [(name, iteration_ms(args.demo_dir, flags, args.iters))
            for name, flags in (("fp32", []), ("bf16", ["--bf16"]), ("fp16", ["--fp16"]))]
    fastest32, median32 = min(rows[0][1]), statistics.median(rows[0][1])
    print(f"\npretrain_gpt.py, demo model, {args.iters - 2} timed iterations per precision")
    print("| precision | fastest iteration (ms) | median (ms) | fastest vs fp32 | median vs fp32 |")
    print("| --- | --- | --- | --- | --- |")
    for name, times in rows:
        fastest, median = min(times), statistics.median(times)
        print(f"| {name} | {fastest:.0f} | {median:.0f} | {fastest / fastest32:.1f}x | {median / median32:.1f}x |")


if __name__ == "__main__":
    main()
