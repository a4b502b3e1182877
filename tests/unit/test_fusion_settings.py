"""Settings that must not do nothing: each fusion field of TransformerConfig reaches the kernel selection of
the op it names, and the Megatron flags without an effect here say so in one line."""
import pytest
import torch

from megatron.arguments import parse_args
from megatron.core.fusions import fused
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.layer import TransformerLayer

ARGS = ("--num-layers 2 --hidden-size 16 --num-attention-heads 2 --seq-length 8 --max-position-embeddings 8 "
        "--micro-batch-size 1 --vocab-size 64 --dry-run --world-size 1")


def _selections(monkeypatch, **config):
    """{op: enabled} as the layer's ops ask the kernel selection (the reference runs on the CPU)."""
    asked = {}
    real = fused.reference_or_compiled

    def recording(reference, enabled):
        asked.setdefault(reference.__name__, set()).add(enabled)
        return real(reference, enabled)

    monkeypatch.setattr(fused, "reference_or_compiled", recording)
    layer = TransformerLayer(TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2,
                                              attention_backend="unfused", hidden_dropout=0.0,
                                              attention_dropout=0.0, **config), 1, pg=ProcessGroups())
    layer(torch.randn(4, 2, 16), None)
    return asked


@pytest.mark.parametrize("enabled", [True, False])
def test_masked_softmax_fusion_selects_the_softmax_kernel(monkeypatch, enabled):
    asked = _selections(monkeypatch, masked_softmax_fusion=enabled, bias_dropout_fusion=not enabled)
    assert asked["masked_softmax"] == {enabled}


@pytest.mark.parametrize("enabled", [True, False])
def test_bias_dropout_fusion_selects_the_bias_dropout_add_kernel(monkeypatch, enabled):
    asked = _selections(monkeypatch, bias_dropout_fusion=enabled, masked_softmax_fusion=not enabled)
    assert asked["bias_dropout_add"] == {enabled}


def _notes(capsys, extra):
    args = parse_args(argv=f"{ARGS} {extra}".split())
    return args, [line for line in capsys.readouterr().out.splitlines() if line.startswith("note: --")]


def test_onnx_safe_says_once_it_has_no_effect(capsys):
    assert _notes(capsys, "")[1] == []
    args, notes = _notes(capsys, "--onnx-safe")
    assert notes == ["note: --onnx-safe has no effect: the unfused GeLU already is the exportable erf form"]


def test_no_gradient_accumulation_fusion_says_once_it_has_no_effect(capsys):
    args, notes = _notes(capsys, "--no-gradient-accumulation-fusion")
    assert len(notes) == 1 and notes[0].startswith("note: --no-gradient-accumulation-fusion has no effect")
    assert args.gradient_accumulation_fusion is False
    assert _notes(capsys, "")[0].gradient_accumulation_fusion is False  # nothing fused to turn on


def test_no_masked_softmax_fusion_notes_when_attention_computes_no_separate_softmax(capsys):
    args, notes = _notes(capsys, "--no-masked-softmax-fusion")
    assert args.masked_softmax_fusion is False
    assert len(notes) == 1 and notes[0].startswith("note: --no-masked-softmax-fusion has no effect in this run")
    # Under --torch-compile with attention dropout the explicit softmax runs, and the flag chooses its kernel.
    assert _notes(capsys, "--no-masked-softmax-fusion --torch-compile --attention-dropout 0.1")[1] == []
