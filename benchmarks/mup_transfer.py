"""μTransfer demonstration: a learning-rate sweep at a narrow and a wide width, standard vs μP.

The model is this project's ``GPTModel`` (2 layers, 4 heads, learned positions, tied embeddings)
trained with AdamW (the optimizer's own parameter groups, so μP's per-parameter learning rates are
the ones ``pretrain_gpt.py --use-mup`` uses) on the bundled demo corpus (``tools/make_demo_corpus.py``),
read as bytes (vocabulary 256), so the sweep fits on a CPU. μP's base width is the narrow width,
where μP and the standard model are the same network, so the narrow sweep is run once and serves
both. The score of a run is its mean training loss over the last ``--score-iters`` iterations
(every batch is new text, so it is a held-out loss too).

    nice -n 10 python benchmarks/mup_transfer.py --out /tmp/mup_transfer.json
    python benchmarks/mup_transfer.py --out /tmp/mup_transfer.json --report --plot docs/images/mup_transfer.png

Results are written after every run (atomically), and a rerun skips the runs already in ``--out``.
"""
import argparse
import json
import math
import os
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from megatron.core.fileio import atomic_write_text  # noqa: E402
from megatron.core.models import GPTModel  # noqa: E402
from megatron.core.optimizer import get_param_groups  # noqa: E402
from megatron.core.parallel_state import ProcessGroups  # noqa: E402
from megatron.core.transformer import TransformerConfig  # noqa: E402

VOCAB, HEADS, LAYERS = 256, 4, 2


def corpus_bytes() -> np.ndarray:
    """The demo corpus's document texts as one byte array."""
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "corpus.json")
        subprocess.run([sys.executable, os.path.join(ROOT, "tools", "make_demo_corpus.py"), "--output", path],
                       check=True, stdout=subprocess.DEVNULL)
        with open(path, encoding="utf-8") as handle:
            text = "\n".join(json.loads(line)["text"] for line in handle if line.strip())
    return np.frombuffer(text.encode("utf-8"), dtype=np.uint8)


def train(data: np.ndarray, width: int, use_mup: bool, base_width: int, lr: float, iters: int, warmup: int,
          seq: int, batch: int, score_iters: int, seed: int) -> dict:
    torch.manual_seed(seed)
    config = TransformerConfig(num_layers=LAYERS, hidden_size=width, num_attention_heads=HEADS, hidden_dropout=0.0,
                               attention_dropout=0.0, init_seed=seed, use_mup=use_mup,
                               mup_base_hidden_size=base_width if use_mup else None)
    model = GPTModel(config, VOCAB, seq, pg=ProcessGroups())
    groups = get_param_groups([model])
    for group in groups:
        group["weight_decay"] = 0.0
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.95), eps=1e-8, foreach=True)
    # The same batches for every run: positions drawn from one seeded generator.
    rng = np.random.RandomState(seed)
    losses = []
    start = time.time()
    for it in range(iters):
        scale = min(1.0, (it + 1) / warmup)
        for group in optimizer.param_groups:
            group["lr"] = lr * scale * group["lr_mult"]
        starts = rng.randint(0, len(data) - seq - 1, size=batch)
        tokens = torch.from_numpy(np.stack([data[s:s + seq + 1] for s in starts]).astype(np.int64))
        loss = model(tokens[:, :-1], labels=tokens[:, 1:]).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        value = loss.item()
        losses.append(value if math.isfinite(value) else float("inf"))
    score = float(np.mean(losses[-score_iters:]))
    return {"width": width, "mup": use_mup, "lr": lr, "score": score if math.isfinite(score) else None,
            "final_losses": losses[-score_iters:], "seconds": time.time() - start}


def key(width, use_mup, lr):
    return f"{width}/{'mup' if use_mup else 'sp'}/{lr:g}"


def sweep(args) -> dict:
    results = {}
    if os.path.exists(args.out):
        with open(args.out) as handle:
            results = json.load(handle)
    data = corpus_bytes()
    base = args.widths[0]
    plan = [(base, False, lr) for lr in args.lrs]
    plan += [(w, m, lr) for w in args.widths[1:] for lr in args.lrs for m in (False, True)]
    for width, use_mup, lr in plan:
        k = key(width, use_mup, lr)
        if k in results:
            continue
        result = train(data, width, use_mup, base, lr, args.iters, args.warmup, args.seq, args.batch,
                       args.score_iters, args.seed)
        results[k] = result
        print(f"width {width} {'muP' if use_mup else 'SP '} lr {lr:g}: loss {result['score']} "
              f"({result['seconds']:.0f} s)", flush=True)
        atomic_write_text(args.out, json.dumps(results, indent=1))
    return results


def table(results: dict, widths, lrs) -> str:
    """Markdown: one row per LR, a column per (width, parametrisation); the best of each column in bold."""
    columns = [(widths[0], False, f"w={widths[0]} (SP = muP)")]
    columns += [(w, m, f"w={w} {'muP' if m else 'SP'}") for w in widths[1:] for m in (False, True)]
    best = {}
    for width, use_mup, _ in columns:
        scores = {lr: results.get(key(width, use_mup, lr), {}).get("score") for lr in lrs}
        finite = {lr: s for lr, s in scores.items() if s is not None}
        best[(width, use_mup)] = min(finite, key=finite.get) if finite else None
    lines = ["| learning rate | " + " | ".join(c[2] for c in columns) + " |", "|---|" + "---|" * len(columns)]
    for lr in lrs:
        cells = []
        for width, use_mup, _ in columns:
            score = results.get(key(width, use_mup, lr), {}).get("score")
            text = "diverged" if score is None and key(width, use_mup, lr) in results else (
                "-" if score is None else f"{score:.3f}")
            cells.append(f"**{text}**" if best[(width, use_mup)] == lr else text)
        lines.append(f"| {lr:g} | " + " | ".join(cells) + " |")
    lines.append("| best | " + " | ".join(f"{best[(c[0], c[1])]:g}" if best[(c[0], c[1])] else "-" for c in columns)
                 + " |")
    return "\n".join(lines)


def plot(results: dict, widths, lrs, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4), sharey=True)
    for ax, use_mup, title in ((axes[0], False, "standard parametrisation"), (axes[1], True, "muP")):
        for width in widths:
            mup_here = use_mup and width != widths[0]
            xs, ys = [], []
            for lr in lrs:
                score = results.get(key(width, mup_here, lr), {}).get("score")
                if score is not None:
                    xs.append(lr)
                    ys.append(score)
            ax.plot(xs, ys, marker="o", label=f"width {width}")
        ax.set_xscale("log")
        ax.set_xlabel("Adam learning rate")
        ax.set_title(title)
        ax.legend()
    axes[0].set_ylabel("training loss (last iterations)")
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    os.replace(tmp, path)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="JSON of the runs (read back to skip finished runs).")
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 512])
    parser.add_argument("--lrs", type=float, nargs="+", default=[1e-4, 3e-4, 1e-3, 3e-3, 1e-2])
    parser.add_argument("--iters", type=int, default=120)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--seq", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--score-iters", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--report", action="store_true", help="Only print the table from --out (no training).")
    parser.add_argument("--plot", default=None, help="Write the PNG here.")
    args = parser.parse_args(argv)
    args.widths = sorted(args.widths)
    torch.set_num_threads(args.threads)
    if args.report:
        with open(args.out) as handle:
            results = json.load(handle)
    else:
        results = sweep(args)
    print(table(results, args.widths, args.lrs))
    if args.plot:
        plot(results, args.widths, args.lrs, args.plot)
        print(f"wrote {args.plot}")


if __name__ == "__main__":
    main()
