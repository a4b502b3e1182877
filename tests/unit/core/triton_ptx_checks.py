"""Compile every Triton kernel ahead of time for an sm_90 GPU (Triton lowers to PTX and assembles it
with its bundled ptxas; no GPU is needed). The interpreter runs the kernels' arithmetic with NumPy but
not the compiler's type rules (loop-carried types, pointer element types, constexpr branches); this
catches what would only fail at the first launch on a GPU.

    python triton_ptx_checks.py [DTYPE...]     # fp32 and/or bf16 (default bf16); prints "ok NAME"
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))))
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

import triton  # noqa: E402
from triton.backends.compiler import GPUTarget  # noqa: E402
from triton.compiler import ASTSource  # noqa: E402

from megatron.core.fusions import triton_cross_entropy as ce  # noqa: E402
from megatron.core.fusions import triton_elementwise as el  # noqa: E402
from megatron.core.fusions import triton_layer_norm as ln  # noqa: E402
from megatron.core.fusions import triton_softmax as sm  # noqa: E402

TARGET = GPUTarget("cuda", 90, 32)


def variants(dt):
    p = "*" + dt
    mask_args = {"n_heads": "i32", "sq": "i32", "sk": "i32", "m_sb": "i32", "m_sh": "i32", "m_sq": "i32", "m_sk": "i32"}
    yield ce._ce_stats, {"x_ptr": p, "t_ptr": "*i64", "max_ptr": "*fp32", "sumexp_ptr": "*fp32", "target_ptr": "*fp32",
                         "sum_ptr": "*fp32", "n_cols": "i32", "vocab_start": "i32"}, {"BLOCK": 1024}
    yield ce._ce_grad, {"x_ptr": p, "t_ptr": "*i64", "max_ptr": "*fp32", "sumexp_ptr": "*fp32", "g_ptr": "*fp32",
                        "dx_ptr": p, "n_cols": "i32", "vocab_start": "i32", "on_target": "fp32",
                        "off_target": "fp32"}, {"BLOCK": 1024}
    yield ln._ln_fwd, {"x_ptr": p, "w_ptr": "*fp32", "b_ptr": "*fp32", "y_ptr": p, "mean_ptr": "*fp32",
                       "rstd_ptr": "*fp32", "n_cols": "i32", "eps": "fp32"}, {"HAS_WEIGHT": True, "HAS_BIAS": True,
                                                                               "BLOCK": 1024}
    yield ln._ln_bwd_input, {"g_ptr": p, "x_ptr": p, "w_ptr": "*fp32", "mean_ptr": "*fp32", "rstd_ptr": "*fp32",
                             "dx_ptr": p, "n_cols": "i32"}, {"HAS_WEIGHT": True, "BLOCK": 1024}
    yield ln._ln_bwd_params, {"g_ptr": p, "x_ptr": p, "mean_ptr": "*fp32", "rstd_ptr": "*fp32", "dw_ptr": "*fp32",
                              "db_ptr": "*fp32", "n_rows": "i32", "n_cols": "i32"}, {"BLOCK_R": 32, "BLOCK_C": 64}
    for mode in (0, 1, 2):
        yield sm._softmax_fwd, {"x_ptr": p, "mask_ptr": "*u8", "y_ptr": p, "n_heads": "i32", "sq": "i32", "sk": "i32",
                                "scale": "fp32", **{k: v for k, v in mask_args.items() if k.startswith("m_")}}, \
            {"MODE": mode, "BLOCK": 1024}
    yield sm._softmax_bwd, {"g_ptr": p, "y_ptr": p, "dx_ptr": p, "sk": "i32", "scale": "fp32"}, {"BLOCK": 1024}
    for mode in (1, 2):
        yield sm._mask_grad, {"dx_ptr": p, "mask_ptr": "*u8", **mask_args}, {"MODE": mode, "BLOCK": 1024}
    for exact in (False, True):
        yield el._bias_gelu_fwd, {"x_ptr": p, "b_ptr": p, "y_ptr": p, "n": "i32", "n_cols": "i32"}, \
            {"HAS_BIAS": True, "EXACT": exact, "BLOCK": 1024}
        yield el._bias_gelu_bwd, {"g_ptr": p, "x_ptr": p, "b_ptr": p, "dx_ptr": p, "n": "i32", "n_cols": "i32"}, \
            {"HAS_BIAS": True, "EXACT": exact, "BLOCK": 1024}
    yield el._bias_dropout_add_fwd, {"x_ptr": p, "b_ptr": p, "r_ptr": p, "y_ptr": p, "seed_ptr": "*i64", "n": "i32",
                                     "n_cols": "i32", "p": "fp32", "scale": "fp32"}, \
        {"HAS_BIAS": True, "DROP": True, "BLOCK": 1024}
    yield el._dropout_bwd, {"g_ptr": p, "dx_ptr": p, "seed_ptr": "*i64", "n": "i32", "p": "fp32", "scale": "fp32"}, \
        {"BLOCK": 1024}


def main():
    failed = False
    for dt in sys.argv[1:] or ["bf16"]:
        for fn, signature, constexprs in variants(dt):
            signature = dict(signature, **{name: "constexpr" for name in constexprs})
            name = f"{fn.fn.__name__} {dt} {constexprs}"
            try:
                kernel = triton.compile(ASTSource(fn=fn, signature=signature, constexprs=constexprs), target=TARGET)
                assert kernel.asm.get("ptx"), "no PTX produced"
                print(f"ok {name}", flush=True)
            except Exception as exc:  # noqa: BLE001 -- every kernel is reported
                failed = True
                print(f"FAIL {name}: {type(exc).__name__}: {str(exc)[:2000]}", flush=True)
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    main()
