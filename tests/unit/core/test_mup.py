"""μP (megatron/core/mup.py): the rules against a plain reference (and the ``mup`` package when
installed), equality with the standard model at the base width, the forward multipliers, the flags,
and the coordinate check."""
import math
import os
import sys

import pytest
import torch
import torch.nn.functional as F

from megatron.core.models import BertModel, GPTModel
from megatron.core.optimizer import get_param_groups
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.attention import CoreAttention
from megatron.core.transformer.enums import AttnMaskType

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
VOCAB, SEQ = 64, 16


def config(width, base=None, **overrides):
    kwargs = dict(num_layers=2, hidden_size=width, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
                  init_seed=7)
    if base is not None:
        kwargs.update(use_mup=True, mup_base_hidden_size=base)
    kwargs.update(overrides)
    return TransformerConfig(**kwargs)


def gpt(cfg, **kwargs):
    return GPTModel(cfg, VOCAB, SEQ, pg=ProcessGroups(), **kwargs)


def lr_mults(model):
    return {p: g["lr_mult"] for g in get_param_groups([model]) for p in g["params"]}


def reference_rules(model, base_model):
    """The rule, written from the paper's definition: a dimension is 'infinite' when it differs
    between the model and its base; a tensor with two infinite dimensions is a hidden matrix whose
    Adam LR is divided, and its init std divided by the root of, fan_in / base_fan_in."""
    base_shapes = dict((n, p.shape) for n, p in base_model.named_parameters())
    rules = {}
    for name, param in model.named_parameters():
        infinite = [a != b for a, b in zip(param.shape, base_shapes[name])]
        if sum(infinite) == 2:
            ratio = param.shape[1] / base_shapes[name][1]
            rules[name] = (1.0 / ratio, 1.0 / math.sqrt(ratio))
        else:
            rules[name] = (1.0, 1.0)
    return rules


@pytest.mark.parametrize("model_type", ["gpt", "bert"])
def test_lr_and_init_follow_the_reference_rules(model_type):
    build = gpt if model_type == "gpt" else (lambda cfg: BertModel(cfg, VOCAB, SEQ, pg=ProcessGroups()))
    wide, base = build(config(128, base=32)), build(config(32))
    standard = build(config(128))  # same init_seed: the same normal draws, unscaled
    rules = reference_rules(wide, base)
    mults = lr_mults(wide)
    standard_params = dict(standard.named_parameters())
    hidden_matrices = 0
    for name, param in wide.named_parameters():
        want_lr, want_scale = rules[name]
        assert mults[param] == pytest.approx(want_lr), name
        torch.testing.assert_close(param.detach(), standard_params[name].detach() * want_scale, msg=name)
        hidden_matrices += want_lr != 1.0
    assert hidden_matrices == (8 if model_type == "gpt" else 10)  # 4 per layer (+ pooler, LM-head dense)


def test_rules_equal_the_mup_package():
    mup = pytest.importorskip("mup")
    wide, base = gpt(config(128, base=32)), gpt(config(32))
    mup.set_base_shapes(wide, base, rescale_params=False, do_assert=False)
    theirs = {p: g["lr"] for g in mup.MuAdamW(wide.parameters(), lr=1.0).param_groups for p in g["params"]}
    ours = lr_mults(wide)
    for name, param in wide.named_parameters():
        assert ours[param] == pytest.approx(theirs[param]), name
        if param.infshape.ninf() == 2:
            assert param.infshape.width_mult() == pytest.approx(4.0)


def test_base_width_is_the_standard_model_exactly():
    cfg = config(32, base=32)
    mup_model, standard = gpt(cfg), gpt(config(32))
    for (name, a), (_, b) in zip(mup_model.named_parameters(), standard.named_parameters()):
        assert torch.equal(a, b), name
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    assert torch.equal(mup_model(tokens), standard(tokens))
    assert {g["lr_mult"] for g in get_param_groups([mup_model])} == {1.0}


def test_readout_multiplier_and_attention_scale():
    cfg = config(128, base=32)
    model = gpt(cfg)
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    hidden = model.language_model(tokens, None, None)  # [s, b, h]
    want = F.linear(hidden * (32 / 128), model.output_weight()).transpose(0, 1)
    torch.testing.assert_close(model(tokens), want)
    # Scores scaled by sqrt(base head size) / head size: head size 32 at width 128, 8 at the base.
    attention = CoreAttention(cfg, 1, AttnMaskType.causal, ProcessGroups())
    q, k, v = (torch.randn(5, 2, 4, 32) for _ in range(3))
    scores = torch.einsum("sbnd,tbnd->bnst", q, k) * (math.sqrt(8) / 32)
    scores = scores.masked_fill(torch.ones(5, 5, dtype=torch.bool).triu(1), float("-inf"))
    want = torch.einsum("bnst,tbnd->sbnd", scores.softmax(-1), v).reshape(5, 2, 128)
    torch.testing.assert_close(attention(q, k, v, None), want)
    cfg_unfused = config(128, base=32, attention_backend="unfused")
    unfused = CoreAttention(cfg_unfused, 2, AttnMaskType.causal, ProcessGroups())
    torch.testing.assert_close(unfused(q, k, v, None), want)


def test_bert_binary_head_is_a_readout():
    model = BertModel(config(128, base=32), VOCAB, SEQ, pg=ProcessGroups())
    assert lr_mults(model)[model.binary_head.weight] == 1.0
    assert lr_mults(model)[model.language_model.pooler.dense.weight] == pytest.approx(0.25)
    tokens = torch.randint(0, VOCAB, (2, SEQ))
    mask = torch.ones(2, SEQ, dtype=torch.long)
    _, binary = model(tokens, mask)
    _, pooled = model.language_model(tokens, None, ~mask.bool()[:, None, None, :].expand(2, 1, SEQ, SEQ))
    torch.testing.assert_close(binary, model.binary_head(pooled * 0.25))


def test_base_sizes_are_derived_and_checked():
    cfg = config(128, base=32, ffn_hidden_size=512, num_query_groups=2)
    assert (cfg.mup_base_ffn_hidden_size, cfg.mup_base_kv_channels, cfg.mup_base_num_query_groups) == (128, 8, 2)
    cfg = config(128, base=32, mup_base_num_attention_heads=1)  # base head size 32, as at width 128
    assert cfg.mup_base_kv_channels == 32
    with pytest.raises(ValueError, match="mup_base_hidden_size"):
        config(128, base=None, use_mup=True)
    with pytest.raises(ValueError, match="needs use_mup"):
        config(128, mup_base_hidden_size=32)
    with pytest.raises(ValueError, match="ffn_hidden_size 500"):
        config(128, base=48, ffn_hidden_size=500)


def test_flags(tmp_path):
    from megatron.arguments import parse_args, validate_args
    from megatron.config_from_args import core_transformer_config_from_args

    common = ["--num-layers", "2", "--hidden-size", "128", "--num-attention-heads", "4", "--seq-length", "16",
              "--max-position-embeddings", "16", "--micro-batch-size", "2", "--train-iters", "1", "--lr", "1e-3"]
    args = validate_args(parse_args(argv=common + ["--use-mup", "--mup-base-hidden-size", "32"]))
    cfg = core_transformer_config_from_args(args)
    assert cfg.use_mup and cfg.mup_width_mult == 4.0 and cfg.mup_base_ffn_hidden_size == 128
    for extra, message in ((["--use-mup"], "--mup-base-hidden-size"),
                           (["--mup-base-hidden-size", "32"], "needs --use-mup"),
                           (["--use-mup", "--mup-base-hidden-size", "32", "--optimizer", "sgd"], "--optimizer adam"),
                           (["--use-mup", "--mup-base-hidden-size", "48", "--ffn-hidden-size", "500"],
                            "--mup-base-hidden-size")):
        with pytest.raises(ValueError, match=message):
            validate_args(parse_args(argv=common + extra))


def test_coordinate_check_flat_under_mup_and_growing_under_standard():
    sys.path.insert(0, os.path.join(ROOT, "benchmarks"))
    from mup_coord_check import coord_check, spread

    widths = [64, 128, 256, 512]
    mup_curves = coord_check(widths, use_mup=True, lr=3e-3, steps=3)
    standard_curves = coord_check(widths, use_mup=False, lr=3e-3, steps=3)
    for name, values in mup_curves.items():
        assert spread(values) < 2.0, (name, values)
    # Adam's updates make every hidden layer's output grow with width in the standard model.
    grown = [name for name, values in standard_curves.items() if values[-1] > 4 * values[0]]
    assert len(grown) >= 4, standard_curves


def test_hugging_face_export_refuses_a_mup_checkpoint():
    from argparse import Namespace

    from megatron.checkpoint_tools import hf

    for check in (hf._check_plain_transformer, hf._check_llama_args):
        with pytest.raises(hf.ConversionError, match="muP model"):
            check(Namespace(use_mup=True, num_attention_heads=4))


def test_biencoder_refuses_mup():
    from megatron.core.models.biencoder import BiEncoderModel

    with pytest.raises(ValueError, match="biencoder"):
        BiEncoderModel(config(32, base=16), VOCAB, SEQ, pg=ProcessGroups())


def test_retro_inherits_mup():
    from megatron.core.models.retro import RetroConfig, RetroModel

    retro = RetroConfig(chunk_size=4, num_neighbors=2, encoder_num_layers=1, encoder_cca_layers=(0,),
                        decoder_cca_layers=(1,), pad_id=0)
    model = RetroModel(config(128, base=32), retro, VOCAB, SEQ, pg=ProcessGroups())
    mults = lr_mults(model)
    # Every hidden matrix of the decoder, the chunked cross-attention and the neighbour encoder.
    scaled = [name for name, param in model.named_parameters() if mults[param] != 1.0]
    assert scaled and all(name.endswith(".weight") and "norm" not in name and "embedding" not in name
                          for name in scaled)
    assert any("inter_attention" in name for name in scaled)
    assert sum(param.dim() == 2 for param in model.parameters()) - len(scaled) == 2  # word + position embeddings
    tokens = torch.randint(1, VOCAB, (2, SEQ))
    hidden = model.language_model(tokens, None, None, model.blank_neighbours(tokens).long())
    torch.testing.assert_close(model(tokens), F.linear(hidden * 0.25, model.word_embeddings_weight()).transpose(0, 1))


def test_t5_logits_take_the_readout_multiplier():
    from megatron.core.models import T5Model

    model = T5Model(config(64, base=32), VOCAB, SEQ, pg=ProcessGroups())
    assert any(g["lr_mult"] == 0.5 for g in get_param_groups([model]))
    enc, dec = torch.randint(0, VOCAB, (2, SEQ)), torch.randint(0, VOCAB, (2, SEQ))
    keep = torch.ones(2, SEQ, SEQ, dtype=torch.long)
    logits = model(enc, dec, keep, keep, keep)
    # The multiplier is read at forward time from the config: at 1 the same weights give twice the logits.
    model.config.mup_base_hidden_size = 64
    torch.testing.assert_close(model(enc, dec, keep, keep, keep) * 0.5, logits)
