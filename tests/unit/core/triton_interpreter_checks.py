"""Checks of the Triton kernels against their PyTorch references, run under Triton's interpreter.

Run as ``python triton_interpreter_checks.py [NAME...]`` (all checks by default) by ``test_triton_kernels.py``: the
interpreter must be switched on (``TRITON_INTERPRET=1``) before ``triton`` is first imported, which
only a fresh process guarantees without affecting other tests. Shapes are small and odd (not powers
of two, not multiples of the block sizes) so the masking at the edges is exercised.
"""
import os
import sys

os.environ["TRITON_INTERPRET"] = "1"

import torch  # noqa: E402

from megatron.core.fusions import fused, ops  # noqa: E402
from megatron.core.fusions.select import force_triton  # noqa: E402


def _close(name, got, want, atol=1e-5, rtol=1e-5):
    if not torch.allclose(got.float(), want.float(), atol=atol, rtol=rtol):
        diff = (got.float() - want.float()).abs().max().item()
        raise AssertionError(f"{name}: max abs difference {diff:.3e}")


def _fwd_bwd(fn, inputs, grad_out_seed=7):
    leaves = [t.detach().clone().requires_grad_(t.is_floating_point()) if t is not None else None for t in inputs]
    out = fn(*leaves)
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(grad_out_seed)).to(out.dtype)
    out.backward(g)
    return out, [leaf.grad if leaf is not None and leaf.requires_grad else None for leaf in leaves]


def _compare(name, kernel, reference, inputs, atol=1e-5):
    with force_triton():
        out, grads = _fwd_bwd(kernel, inputs)
    ref_out, ref_grads = _fwd_bwd(reference, inputs)
    _close(f"{name} forward", out, ref_out, atol=atol)
    for i, (g, r) in enumerate(zip(grads, ref_grads)):
        if r is not None:
            _close(f"{name} grad of input {i}", g, r, atol=atol)


def check_layer_norm():
    gen = torch.Generator().manual_seed(0)
    for rows, hidden in ((7, 33), (40, 70)):
        x = torch.randn(rows, 1, hidden, generator=gen) * 3 + 1
        w = torch.randn(hidden, generator=gen)
        b = torch.randn(hidden, generator=gen)
        _compare(f"layer_norm {rows}x{hidden}", lambda x, w, b: fused.layer_norm(x, w, b, 1e-5),
                 lambda x, w, b: ops.layer_norm(x, w, b, 1e-5), [x, w, b], atol=1e-4)
    x = torch.randn(5, 3, 40, generator=gen).to(torch.bfloat16)
    w, b = torch.randn(40, generator=gen), torch.randn(40, generator=gen)
    with force_triton():
        y = fused.layer_norm(x, w, b, 1e-5)
    assert y.dtype == torch.bfloat16
    _close("layer_norm bf16 (fp32 statistics)", y, ops.layer_norm(x.float(), w, b, 1e-5), atol=3e-2)


def check_bias_gelu():
    gen = torch.Generator().manual_seed(1)
    for approximate in ("tanh", "none"):
        x = torch.randn(3, 5, 37, generator=gen) * 4
        b = torch.randn(37, generator=gen)
        _compare(f"bias_gelu {approximate}", lambda x, b: fused.bias_gelu(b, x, approximate),
                 lambda x, b: ops.bias_gelu_any(b, x, approximate), [x, b])
        _compare(f"gelu {approximate} without bias", lambda x: fused.bias_gelu(None, x, approximate),
                 lambda x: ops.bias_gelu_any(None, x, approximate), [x])
    x = torch.tensor([-60.0, -12.0, 0.0, 12.0, 60.0]).reshape(1, 5)
    with force_triton():
        y = fused.bias_gelu(None, x, "tanh")
    _close("bias_gelu tanh at large |x|", y, ops.gelu_tanh(x))


def check_bias_dropout_add():
    gen = torch.Generator().manual_seed(2)
    x, r = torch.randn(4, 3, 29, generator=gen), torch.randn(4, 3, 29, generator=gen)
    b = torch.randn(29, generator=gen)
    for training, prob in ((False, 0.3), (True, 0.0)):
        _compare(f"bias_dropout_add training={training} p={prob}",
                 lambda x, b, r: fused.bias_dropout_add(x, b, r, prob, training),
                 lambda x, b, r: ops.bias_dropout_add(x, b, r, prob, training), [x, b, r])
    # With dropout: every element is either residual or residual + (x + b) / (1 - p), about p of
    # them dropped, and the gradient follows the same mask (rebuilt from the seed in backward).
    prob = 0.25
    x = torch.randn(40, 3, 97, generator=gen).requires_grad_()
    r = torch.randn(40, 3, 97, generator=gen).requires_grad_()
    bb = b.detach().clone().repeat(4)[:97].requires_grad_()
    with force_triton():
        y = fused.bias_dropout_add(x, bb, r, prob, True)
    kept_value = r + (x + bb) / (1 - prob)
    kept = torch.isclose(y, kept_value, atol=1e-5)
    dropped = torch.isclose(y, r, atol=1e-7) & ~kept
    assert bool((kept | dropped).all()), "bias_dropout_add: elements that are neither kept nor dropped"
    fraction = dropped.float().mean().item()
    assert abs(fraction - prob) < 0.02, f"bias_dropout_add: dropped fraction {fraction:.3f}, expected {prob}"
    y.backward(torch.ones_like(y))
    _close("bias_dropout_add grad x follows the mask", x.grad, kept.float() / (1 - prob))
    _close("bias_dropout_add grad residual", r.grad, torch.ones_like(r))
    _close("bias_dropout_add grad bias", bb.grad, (kept.float() / (1 - prob)).sum((0, 1)), atol=1e-4)


def check_masked_softmax():
    gen = torch.Generator().manual_seed(3)
    b, n_heads, sq, sk = 2, 3, 5, 11
    scores = torch.randn(b, n_heads, sq, sk, generator=gen) * 3
    mask = torch.rand(b, 1, sq, sk, generator=gen) < 0.3
    mask[0, 0, 1, :] = True  # a fully masked row becomes uniform, not NaN
    _compare("masked_softmax (mask broadcast over heads)",
             lambda s: fused.masked_softmax(s, mask, 0.7, True), lambda s: ops.masked_softmax(s, mask, 0.7, True),
             [scores])
    _compare("softmax without mask", lambda s: fused.masked_softmax(s, None, 1.3, True),
             lambda s: ops.masked_softmax(s, None, 1.3, True), [scores])
    for sq_c, sk_c in ((7, 7), (3, 9)):
        s = torch.randn(b, n_heads, sq_c, sk_c, generator=gen)
        causal = torch.ones(sq_c, sk_c, dtype=torch.bool).triu(diagonal=sk_c - sq_c + 1)[None, None]
        _compare(f"causal softmax sq={sq_c} sk={sk_c}",
                 lambda s: fused.masked_softmax(s, causal, 0.5, True, causal=True),
                 lambda s: ops.masked_softmax(s, causal, 0.5, True), [s])
    half = scores.to(torch.bfloat16)
    with force_triton():
        y = fused.masked_softmax(half, mask, 0.7, True)
    assert y.dtype == torch.bfloat16
    _close("masked_softmax bf16", y, ops.masked_softmax(half, mask, 0.7, True), atol=1e-2)


def check_cross_entropy():
    from megatron.core.fusions import triton_cross_entropy
    from megatron.core.tensor_parallel.cross_entropy import _VocabParallelCrossEntropy

    gen = torch.Generator().manual_seed(4)
    for vocab, smoothing in ((1100, 0.0), (37, 0.1)):  # 1100 > the kernel's block: several column blocks
        logits = torch.randn(5, 3, vocab, generator=gen) * 4
        target = torch.randint(0, vocab, (5, 3), generator=gen)
        _compare(f"cross entropy vocab={vocab} smoothing={smoothing}",
                 lambda x: triton_cross_entropy.vocab_parallel_cross_entropy(x, target, smoothing, None, 0),
                 lambda x: _VocabParallelCrossEntropy.apply(x, target, smoothing, None, 0), [logits], atol=1e-4)
        # As rank 1 of two (targets half inside this slice): the local gradient is softmax minus the
        # one-hot of targets inside the slice only. (The forward needs the other rank's sums.)
        shifted = target + vocab // 2
        with force_triton():
            _, (grad,) = _fwd_bwd(
                lambda x: triton_cross_entropy.vocab_parallel_cross_entropy(x, shifted, 0.0, None, 1), [logits])
        _, (ref_grad,) = _fwd_bwd(lambda x: _VocabParallelCrossEntropy.apply(x, shifted, 0.0, None, 1), [logits])
        _close(f"cross entropy grad on the slice of rank 1, vocab={vocab}", grad, ref_grad, atol=1e-5)
    logits = (torch.randn(4, 2, 300, generator=gen) * 4).to(torch.bfloat16)
    target = torch.randint(0, 300, (4, 2), generator=gen)
    with force_triton():
        out, (grad,) = _fwd_bwd(lambda x: triton_cross_entropy.vocab_parallel_cross_entropy(x, target, 0.0, None, 0),
                                [logits])
    assert grad.dtype == torch.bfloat16, "the gradient stays in the logits' dtype"
    ref, (ref_grad,) = _fwd_bwd(lambda x: _VocabParallelCrossEntropy.apply(x, target, 0.0, None, 0), [logits])
    _close("cross entropy bf16", out, ref, atol=1e-4)
    _close("cross entropy bf16 grad", grad, ref_grad, atol=1e-2)


CHECKS = {name[len("check_"):]: fn for name, fn in dict(globals()).items() if name.startswith("check_")}

if __name__ == "__main__":
    torch.manual_seed(0)
    failed = False
    for name in sys.argv[1:] or list(CHECKS):
        try:
            CHECKS[name]()
            print(f"ok {name}", flush=True)
        except Exception as exc:  # noqa: BLE001 -- reported per check, the others still run
            failed = True
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", flush=True)
    sys.exit(1 if failed else 0)
