"""--torch-compile: the GPT, BERT and T5 layers compile without graph breaks (TP1), collectives are
the only break points under TP2, compiled recompute works, and compiled training equals eager
training (10 losses, 1e-5 relative) at TP1 and TP2.

The default run uses the ``aot_eager`` backend (the same Dynamo capture and AOT autograd split as
Inductor, without code generation, which takes minutes on two CPU cores); the Inductor variants are
marked slow.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel import model_parallel_manual_seed
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.block import TransformerBlock
from megatron.core.transformer.enums import AttnMaskType, LayerType
from megatron.core.transformer.layer import TransformerLayer
from megatron.model_setup import compile_transformer_layers

ROOT = Path(__file__).resolve().parents[3]
DRIVER = Path(__file__).with_name("tiny_gpt_training.py")
sys.path.insert(0, str(ROOT / "tests" / "distributed"))
sys.path.insert(0, str(Path(__file__).parent))


def single_groups():
    return ProcessGroups(rank=0, world_size=1, tensor_model_parallel_size=1, pipeline_model_parallel_size=1,
                         virtual_pipeline_model_parallel_size=None, pipeline_model_parallel_split_rank=None,
                         tp_ranks=[0], pp_ranks=[0], dp_ranks=[0], virtual_pipeline_model_parallel_rank=None)


def tiny_config(**overrides):
    base = dict(num_layers=2, hidden_size=16, num_attention_heads=2, hidden_dropout=0.1, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def layer_inputs(kind, seq=5, batch=2, hidden=16):
    """(layer type, mask type, forward kwargs) of the GPT, BERT and T5 (decoder) layers."""
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(seq, batch, hidden, generator=gen)
    if kind == "gpt":
        causal = torch.ones(seq, seq, dtype=torch.bool).triu(1)[None, None]
        return LayerType.encoder, AttnMaskType.causal, x, {"attention_mask": causal}
    padding = torch.zeros(batch, 1, seq, seq, dtype=torch.bool)
    padding[1, :, :, -2:] = True
    if kind == "bert":
        return LayerType.encoder, AttnMaskType.padding, x, {"attention_mask": padding}
    encoder_output = torch.randn(7, batch, hidden, generator=gen)
    enc_dec = torch.zeros(batch, 1, seq, 7, dtype=torch.bool)
    enc_dec[0, :, :, -3:] = True
    return LayerType.decoder, AttnMaskType.causal, x, {"attention_mask": None, "encoder_output": encoder_output,
                                                        "enc_dec_attn_mask": enc_dec}


def run_layer(layer, x, kwargs, seed=11):
    torch.manual_seed(seed)  # hidden dropout on the default generator
    x = x.detach().clone().requires_grad_()
    out = layer(x, **kwargs)
    out.backward(torch.ones_like(out))
    grads = {name: p.grad.detach().clone() for name, p in layer.named_parameters()}
    layer.zero_grad()
    return out.detach(), x.grad, grads


@pytest.mark.parametrize("kind, backend, attention_dropout", [
    ("gpt", "sdpa", 0.0), ("bert", "sdpa", 0.1), ("t5", "sdpa", 0.0), ("gpt", "unfused", 0.1)])
def test_layer_compiles_without_graph_breaks_and_equals_eager(kind, backend, attention_dropout):
    """Attention dropout draws from the tracked per-TP-rank stream through a custom op when compiled
    (no break). On the CPU its mask equals the eager unfused path's (same stream, same Bernoulli
    draw); the eager SDPA path draws its dropout differently, so it is compared without dropout."""
    torch._dynamo.reset()
    layer_type, mask_type, x, kwargs = layer_inputs(kind)
    config = tiny_config(attention_backend=backend, attention_dropout=attention_dropout)
    layer = TransformerLayer(config, 1, layer_type, mask_type, pg=single_groups())
    model_parallel_manual_seed(5)
    explanation = torch._dynamo.explain(layer)(x, **kwargs)
    assert explanation.graph_break_count == 0, [r.reason for r in explanation.break_reasons]
    assert explanation.graph_count == 1

    if backend == "sdpa" and attention_dropout > 0:
        layer.self_attention.core_attention.dropout_p = 0.0
    model_parallel_manual_seed(5)
    eager = run_layer(layer, x, kwargs)
    torch._dynamo.utils.counters.clear()
    compile_transformer_layers(layer, backend="aot_eager")
    model_parallel_manual_seed(5)
    compiled = run_layer(layer, x, kwargs)
    assert not torch._dynamo.utils.counters["graph_break"], dict(torch._dynamo.utils.counters["graph_break"])
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-5, atol=1e-6)
    for name in eager[2]:
        torch.testing.assert_close(compiled[2][name], eager[2][name], rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("granularity", ["full", pytest.param("selective", marks=pytest.mark.slow)])
def test_compiled_layers_under_recompute_equal_eager(granularity):
    torch._dynamo.reset()
    model_parallel_manual_seed(5)
    extra = {"recompute_method": "uniform", "recompute_num_layers": 1} if granularity == "full" else {}
    config = tiny_config(hidden_dropout=0.0, recompute_granularity=granularity, **extra)
    block = TransformerBlock(config, LayerType.encoder, AttnMaskType.causal, pg=single_groups())
    block.train()
    _, _, x, kwargs = layer_inputs("gpt")
    eager = run_layer(block, x, kwargs)
    compile_transformer_layers(block, backend="aot_eager")
    compiled = run_layer(block, x, kwargs)
    torch.testing.assert_close(compiled[0], eager[0], rtol=1e-5, atol=1e-6)
    for name in eager[2]:
        torch.testing.assert_close(compiled[2][name], eager[2][name], rtol=1e-5, atol=1e-6, msg=name)


# -- tensor parallelism ------------------------------------------------------------------------
def _tp2_worker(rank, world_size):
    from megatron.core import parallel_state
    from megatron.core.models import GPTModel
    from megatron.core.optimizer import OptimizerConfig, get_megatron_optimizer

    pg = parallel_state.initialize_model_parallel(world_size, 1)
    model_parallel_manual_seed(5)
    config = tiny_config(hidden_dropout=0.0, init_seed=9)
    layer_type, mask_type, x, kwargs = layer_inputs("gpt")
    layer = TransformerLayer(config, 1, layer_type, mask_type, pg=pg)
    explanation = torch._dynamo.explain(layer)(x, **kwargs)
    reasons = [r.reason for r in explanation.break_reasons]

    def train(compiled):
        torch._dynamo.reset()
        model = GPTModel(config, vocab_size=64, max_sequence_length=8, pg=pg)
        if compiled:
            compile_transformer_layers(model, backend="aot_eager")
        optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-3, clip_grad=1.0), [model], pg)
        gen = torch.Generator().manual_seed(1)
        losses = []
        for _ in range(10):
            tokens = torch.randint(0, 64, (2, 9), generator=gen)
            optimizer.zero_grad()
            loss = model(tokens[:, :-1], torch.arange(8)[None].expand(2, 8), None, labels=tokens[:, 1:]).mean()
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
        return losses

    return explanation.graph_count, reasons, train(False), train(True)


def test_tp2_breaks_only_at_collectives_and_compiled_training_equals_eager():
    from spawn import run_ranks

    for graphs, reasons, eager, compiled in run_ranks(_tp2_worker, 2, timeout=300):
        # Every break comes from the tensor-parallel autograd functions around the all-reduces of
        # the row-parallel linears (attention output, MLP output): 2 breaks, 3 graphs.
        assert len(reasons) == graphs - 1 <= 2, reasons
        for reason in reasons:
            assert "autograd.Function" in reason or "all_reduce" in reason or "distributed" in reason, reason
        for a, b in zip(eager, compiled):
            assert abs(a - b) <= 1e-5 * abs(a), (eager, compiled)


# -- the real training loop ----------------------------------------------------------------------
def _train(out_dir, name, *flags, nproc=1):
    out = Path(out_dir) / f"{name}.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    if nproc == 1:
        cmd = [sys.executable, str(DRIVER), str(out), *flags]
    else:
        from spawn import find_free_port

        cmd = [sys.executable, "-m", "torch.distributed.run", f"--nproc_per_node={nproc}",
               f"--master_port={find_free_port()}", str(DRIVER), str(out), *flags]
    result = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-4000:]
    return json.loads(out.read_text()), result.stdout


@pytest.fixture(scope="module")
def eager_tp1(tmp_path_factory):
    return _train(tmp_path_factory.mktemp("eager"), "eager")[0]


def _assert_same_losses(eager, compiled):
    assert len(eager) == len(compiled) == 10
    for i, (a, b) in enumerate(zip(eager, compiled)):
        assert abs(a - b) <= 1e-5 * abs(a), f"iteration {i + 1}: eager {a}, compiled {b}"


def test_compiled_training_equals_eager_tp1(eager_tp1, tmp_path):
    compiled, stdout = _train(tmp_path, "compiled", "--torch-compile", "--torch-compile-backend", "aot_eager")
    _assert_same_losses(eager_tp1["losses"], compiled["losses"])
    assert stdout.count("torch.compile: first iteration took") == 1


@pytest.mark.slow
def test_compiled_training_equals_eager_tp2_torchrun(tmp_path):
    eager, _ = _train(tmp_path, "eager2", "--tensor-model-parallel-size", "2", nproc=2)
    compiled, _ = _train(tmp_path, "compiled2", "--tensor-model-parallel-size", "2", "--torch-compile",
                         "--torch-compile-backend", "aot_eager", nproc=2)
    _assert_same_losses(eager["losses"], compiled["losses"])


@pytest.mark.slow
def test_inductor_training_equals_eager_tp1(eager_tp1, tmp_path):
    compiled, _ = _train(tmp_path, "inductor", "--torch-compile")
    _assert_same_losses(eager_tp1["losses"], compiled["losses"])


# -- flags -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags, message", [
    (["--torch-compile", "--torch-compile-backend", "nope"], "--torch-compile-backend 'nope' is not one of"),
    (["--torch-compile-backend", "eager"], "--torch-compile-backend needs --torch-compile"),
])
def test_bad_compile_flags_are_one_line_errors(flags, message):
    from megatron.arguments import parse_args
    from tiny_gpt_training import BASE_ARGS

    with pytest.raises(ValueError) as err:
        parse_args(argv=BASE_ARGS + flags)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_cpu_fusion_flags_choose_between_reference_and_compiled_form():
    from megatron.core.fusions import fused, ops, select

    torch._dynamo.reset()
    x, b = torch.randn(3, 2, 8), torch.randn(8)
    try:
        select.set_cpu_fusion_mode("compiled", backend="aot_eager")
        torch._dynamo.utils.counters.clear()
        fused.bias_gelu(b, x, "none", enabled=False)
        assert not torch._dynamo.utils.counters["stats"]["unique_graphs"], "a disabled fusion must not compile"
        got = fused.bias_gelu(b, x, "none", enabled=True)
        assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
        torch.testing.assert_close(got, ops.bias_gelu_any(b, x, "none"))
    finally:
        select.set_cpu_fusion_mode("reference")
    with pytest.raises(ValueError, match="fusion mode 'fast' is not one of"):
        select.set_cpu_fusion_mode("fast")
