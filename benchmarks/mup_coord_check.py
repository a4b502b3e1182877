"""μP coordinate check: mean absolute activation of every layer after a few Adam steps, across widths.

Under μP (``--use-mup``, base width = the narrowest) every curve stays flat as the width grows;
under the standard parametrisation (same init std and learning rate at every width) the
activations that Adam's updates feed grow with the width. This is the check of Yang et al.
("Tensor Programs V", §D) and of the ``mup`` package's ``get_coord_data``, run on this project's
``GPTModel``.

    python benchmarks/mup_coord_check.py --widths 64 128 256 512 1024 --plot docs/images/mup_coord_check.png

prints a table (layer x width, for both parametrisations) and, with ``--plot``, writes a PNG
(matplotlib, the ``plots`` extra).
"""
import argparse
import os
import sys
from typing import Dict, List, Sequence

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from megatron.core.models import GPTModel  # noqa: E402
from megatron.core.optimizer import get_param_groups  # noqa: E402
from megatron.core.parallel_state import ProcessGroups  # noqa: E402
from megatron.core.transformer import TransformerConfig, TransformerLayer  # noqa: E402

VOCAB, SEQ, BATCH, HEADS, LAYERS = 256, 32, 8, 4, 2


def build_model(width: int, use_mup: bool, base_width: int, seed: int) -> GPTModel:
    config = TransformerConfig(num_layers=LAYERS, hidden_size=width, num_attention_heads=HEADS, hidden_dropout=0.0,
                               attention_dropout=0.0, init_seed=seed, use_mup=use_mup,
                               mup_base_hidden_size=base_width if use_mup else None)
    return GPTModel(config, VOCAB, SEQ, pg=ProcessGroups())


def recorded_modules(model: GPTModel) -> Dict[str, torch.nn.Module]:
    """The layers whose output is measured, by a short name."""
    lm = model.language_model
    modules = {"embedding": lm.embedding}
    for module in lm.encoder.modules():
        if isinstance(module, TransformerLayer):
            i = module.layer_number
            modules[f"layer{i}.attention"] = module.self_attention
            modules[f"layer{i}.mlp"] = module.mlp
            modules[f"layer{i}"] = module
    return modules


def batches(seed: int, count: int) -> List[torch.Tensor]:
    """Token sequences with structure to learn (each sequence repeats a short random motif)."""
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(count):
        motif = torch.randint(0, VOCAB, (BATCH, 8), generator=gen)
        out.append(motif.repeat(1, (SEQ + 1 + 7) // 8)[:, :SEQ + 1])
    return out


def coord_data(width: int, use_mup: bool, base_width: int, lr: float, steps: int, seed: int = 1234) -> Dict[str, float]:
    """Mean |activation| of each recorded layer and of the logits, on a fixed batch, after ``steps`` Adam steps."""
    torch.manual_seed(seed)
    model = build_model(width, use_mup, base_width, seed)
    groups = get_param_groups([model])
    for group in groups:
        group["lr"] = lr * group["lr_mult"]
        group["weight_decay"] = 0.0
    optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.999), eps=1e-8, foreach=True)
    data = batches(seed, steps + 1)
    for batch in data[:steps]:
        logits = model(batch[:, :-1])  # [b, s, v]
        loss = F.cross_entropy(logits.reshape(-1, VOCAB).float(), batch[:, 1:].reshape(-1))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    stats = {}
    hooks = []
    for name, module in recorded_modules(model).items():
        def hook(_module, _inputs, output, name=name):
            tensor = output[0] if isinstance(output, tuple) else output
            stats[name] = tensor.detach().abs().mean().item()
        hooks.append(module.register_forward_hook(hook))
    with torch.no_grad():
        stats["logits"] = model(data[steps][:, :-1]).abs().mean().item()
    for handle in hooks:
        handle.remove()
    return stats


def coord_check(widths: Sequence[int], use_mup: bool, lr: float, steps: int, seed: int = 1234) -> Dict[str, List[float]]:
    """{layer: [mean |activation| at each width]}; the μP base width is the narrowest."""
    base = min(widths)
    per_width = [coord_data(w, use_mup, base, lr, steps, seed) for w in widths]
    return {name: [stats[name] for stats in per_width] for name in per_width[0]}


def spread(values: Sequence[float]) -> float:
    """Largest over smallest value: 1 is perfectly flat."""
    return max(values) / min(values)


def plot(widths, results: Dict[str, Dict[str, List[float]]], path: str, steps: int, lr: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(5 * len(results), 3.6), sharey=True)
    for ax, (label, curves) in zip(axes, results.items()):
        for name, values in curves.items():
            ax.plot(widths, values, marker="o", markersize=3, label=name)
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("width (hidden size)")
        ax.set_title(f"{label}: after {steps} Adam steps, lr {lr:g}")
    axes[0].set_ylabel("mean |activation|")
    axes[-1].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    tmp = path + ".tmp.png"
    fig.savefig(tmp, dpi=80)
    plt.close(fig)
    with open(tmp, "rb") as handle:
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--widths", type=int, nargs="+", default=[64, 128, 256, 512, 1024])
    parser.add_argument("--steps", type=int, default=4, help="Adam steps before measuring.")
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--plot", default=None, help="Write the PNG here.")
    args = parser.parse_args(argv)
    widths = sorted(args.widths)
    torch.set_num_threads(max(1, min(2, torch.get_num_threads())))
    results = {}
    for label, use_mup in (("standard", False), ("muP", True)):
        results[label] = coord_check(widths, use_mup, args.lr, args.steps, args.seed)
        print(f"\n{label} parametrisation, mean |activation| after {args.steps} Adam steps (lr {args.lr:g})")
        print("| layer | " + " | ".join(f"w={w}" for w in widths) + " | max/min |")
        print("|---|" + "---|" * (len(widths) + 1))
        for name, values in results[label].items():
            print(f"| {name} | " + " | ".join(f"{v:.4g}" for v in values) + f" | {spread(values):.2f} |")
    if args.plot:
        plot(widths, results, args.plot, args.steps, args.lr)
        print(f"\nwrote {args.plot}")


if __name__ == "__main__":
    main()
