"""The transformer in one process: config checks, attention paths, QKV layout, recompute, bad layouts."""
import math

import pytest
import torch
import torch.nn.functional as F

from megatron.core.fusions import bias_dropout_add, bias_gelu, gelu_tanh, masked_softmax
from megatron.core.models import GPTModel, T5Model
from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel import checkpoint, get_rng_tracker, model_parallel_manual_seed
from megatron.core.transformer import (
    AttnMaskType,
    AttnType,
    CoreAttention,
    ParallelAttention,
    TransformerBlock,
    TransformerConfig,
)
from megatron.core.transformer.attention import RotaryEmbedding, apply_rotary_pos_emb


def tiny(**overrides):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


# -- config -------------------------------------------------------------------------------
def test_config_defaults():
    config = tiny()
    assert config.kv_channels == 8 and config.ffn_hidden_size == 128
    assert config.pipeline_dtype == torch.float32


@pytest.mark.parametrize("overrides, message", [
    ({"hidden_size": 30}, "hidden_size 30 is not divisible by num_attention_heads 4"),
    ({"recompute_granularity": "full"}, "recompute_granularity full needs recompute_method uniform|block"),
    ({"recompute_granularity": "full", "recompute_method": "uniform"}, "needs recompute_num_layers >= 1"),
    ({"recompute_method": "block"}, "recompute_method block needs recompute_granularity full"),
    ({"recompute_num_layers": 2}, "recompute_num_layers 2 needs recompute_granularity full"),
    ({"attention_backend": "flash"}, "attention_backend 'flash' is not one of"),
    ({"position_embedding_type": "alibi"}, "position_embedding_type 'alibi' is not one of"),
    ({"hidden_dropout": 1.0}, "hidden_dropout must lie in [0, 1)"),
])
def test_config_rejects_bad_values(overrides, message):
    with pytest.raises(ValueError) as err:
        tiny(**overrides)
    assert message in str(err.value) and "\n" not in str(err.value)


# -- bad layouts fail at construction -------------------------------------------------------------
def fake_groups(tp=1, pp=1, vpp=None, split=None, pp_rank=0):
    """Groups that only describe a layout: construction validates before any communication."""
    return ProcessGroups(rank=pp_rank * tp, world_size=tp * pp, tensor_model_parallel_size=tp,
                         pipeline_model_parallel_size=pp, virtual_pipeline_model_parallel_size=vpp,
                         pipeline_model_parallel_split_rank=split,
                         tp_ranks=[pp_rank * tp + i for i in range(tp)],
                         pp_ranks=[i * tp for i in range(pp)], dp_ranks=[pp_rank * tp],
                         virtual_pipeline_model_parallel_rank=0 if vpp else None)


@pytest.mark.parametrize("config_overrides, groups, message", [
    ({"num_attention_heads": 4, "hidden_size": 48}, dict(tp=3), "num_attention_heads 4 is not divisible by tensor_model_parallel_size 3"),
    ({"num_layers": 3}, dict(pp=2), "num_layers 3 is not divisible by pipeline_model_parallel_size 2"),
    ({"num_layers": 4}, dict(pp=2, vpp=4),
     "num_layers 4 is not divisible by pipeline_model_parallel_size 2 x virtual_pipeline_model_parallel_size 4"),
    ({"num_layers": 4, "ffn_hidden_size": 66, "num_attention_heads": 2}, dict(tp=4),
     "num_attention_heads 2 is not divisible by tensor_model_parallel_size 4"),
])
def test_bad_model_layouts_fail_at_construction(config_overrides, groups, message):
    with pytest.raises(ValueError) as err:
        GPTModel(tiny(**config_overrides), 128, 16, pg=fake_groups(**groups))
    assert message in str(err.value) and "\n" not in str(err.value)


def test_bad_vocab_and_split_layouts_fail_at_construction():
    with pytest.raises(ValueError, match="vocabulary size 130 is not divisible by tensor_model_parallel_size 4"):
        GPTModel(tiny(), 130, 16, pg=fake_groups(tp=4))
    with pytest.raises(ValueError, match="num_layers 3 is not divisible by the 2 encoder stages"):
        T5Model(tiny(num_layers=3), 128, 16, pre_process=True, post_process=False, add_encoder=True,
                add_decoder=False, pg=fake_groups(pp=4, split=2))


# -- attention ------------------------------------------------------------------------------------------
def _qkv(sq=6, sk=6, b=2, heads=4, dim=8, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(sq, b, heads, dim, generator=gen), torch.randn(sk, b, heads, dim, generator=gen),
            torch.randn(sk, b, heads, dim, generator=gen))


def _explicit_attention(q, k, v, mask):
    scores = torch.einsum("sbhd,tbhd->bhst", q, k) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores.masked_fill(mask, float("-inf"))
    return torch.einsum("bhst,tbhd->sbhd", scores.softmax(-1), v).reshape(q.shape[0], q.shape[1], -1)


@pytest.mark.parametrize("mask_type", [AttnMaskType.causal, AttnMaskType.padding])
@pytest.mark.parametrize("layer_number", [1, 3])
def test_sdpa_and_unfused_paths_agree(mask_type, layer_number):
    q, k, v = _qkv()
    padding = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    padding[1, :, :, 4:] = True  # sample 1 has two padded keys
    mask = padding if mask_type == AttnMaskType.padding else None
    outputs = {}
    for backend in ("sdpa", "unfused"):
        config = tiny(attention_backend=backend, apply_query_key_layer_scaling=True)
        outputs[backend] = CoreAttention(config, layer_number, mask_type, ProcessGroups())(q, k, v, mask)
    torch.testing.assert_close(outputs["sdpa"], outputs["unfused"], rtol=1e-5, atol=1e-6)
    full_mask = mask if mask is not None else torch.ones(6, 6, dtype=torch.bool).triu(1)
    torch.testing.assert_close(outputs["sdpa"], _explicit_attention(q, k, v, full_mask), rtol=1e-5, atol=1e-6)


def test_attention_paths_agree_with_a_mask_on_a_causal_layer_and_cross_attention():
    q, k, v = _qkv(sq=4, sk=6)
    mask = torch.zeros(2, 1, 4, 6, dtype=torch.bool)
    mask[0, :, :, 5] = True
    outs = [CoreAttention(tiny(attention_backend=b), 1, AttnMaskType.padding, ProcessGroups())(q, k, v, mask)
            for b in ("sdpa", "unfused")]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)
    q, k, v = _qkv()
    doc_mask = torch.zeros(2, 1, 6, 6, dtype=torch.bool)
    doc_mask[:, :, 3:, :3] = True  # two documents in one sequence
    outs = [CoreAttention(tiny(attention_backend=b), 2, AttnMaskType.causal, ProcessGroups())(q, k, v, doc_mask)
            for b in ("sdpa", "unfused")]
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-5, atol=1e-6)


def test_fully_masked_rows_are_uniform_like_megatron():
    scores = torch.randn(1, 1, 2, 3)
    mask = torch.tensor([[[[False, True, False], [True, True, True]]]])
    probs = masked_softmax(scores, mask, 1.0, True)
    torch.testing.assert_close(probs[0, 0, 1], torch.full((3,), 1 / 3))
    assert probs[0, 0, 0, 1] == 0


def test_fused_qkv_rows_are_per_head_query_key_value():
    torch.manual_seed(0)
    config = tiny()
    attention = ParallelAttention(config, 1, AttnType.self_attn, AttnMaskType.causal, ProcessGroups())
    hn, heads = config.kv_channels, config.num_attention_heads
    weight = attention.query_key_value.weight.detach().view(heads, 3, hn, config.hidden_size)
    x = torch.randn(5, 2, config.hidden_size)
    captured = {}

    def spy(q, k, v, mask):
        captured.update(q=q, k=k, v=v)
        return torch.zeros(q.shape[0], q.shape[1], heads * hn)

    attention.core_attention.forward = spy
    attention(x, None)
    bias = attention.query_key_value.bias.detach().view(heads, 3, hn)
    for head in range(heads):
        for index, name in enumerate("qkv"):
            want = x @ weight[head, index].t() + bias[head, index]
            torch.testing.assert_close(captured[name][:, :, head], want)


def test_rotary_embedding_depends_only_on_relative_position():
    rotary = RotaryEmbedding(8)
    freqs = rotary(12)
    gen = torch.Generator().manual_seed(1)
    q = torch.randn(1, 1, 1, 8, generator=gen)
    k = torch.randn(1, 1, 1, 8, generator=gen)

    def score(i, j):
        return (apply_rotary_pos_emb(q, freqs[i:i + 1]) * apply_rotary_pos_emb(k, freqs[j:j + 1])).sum()

    torch.testing.assert_close(score(2, 5), score(6, 9))
    assert not torch.allclose(score(2, 5), score(2, 6))
    partial = RotaryEmbedding(8, rotary_percent=0.5)(4)
    rotated = apply_rotary_pos_emb(q.expand(4, 1, 1, 8), partial)
    torch.testing.assert_close(rotated[..., 4:], q.expand(4, 1, 1, 8)[..., 4:])


def test_query_key_layer_scaling_does_not_change_the_output():
    torch.manual_seed(0)
    tokens = torch.randint(0, 128, (2, 16))
    outputs = []
    for scaling in (True, False):
        torch.manual_seed(0)
        model = GPTModel(tiny(apply_query_key_layer_scaling=scaling, attention_backend="unfused"), 128, 16)
        outputs.append(model(tokens))
    torch.testing.assert_close(outputs[0], outputs[1], rtol=1e-5, atol=1e-5)


# -- recompute -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides", [
    {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 2},
    {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
    {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 2},
    {"recompute_granularity": "selective"},
])
def test_recompute_gives_the_same_gradients_with_dropout(overrides):
    tokens = torch.randint(0, 128, (2, 17), generator=torch.Generator().manual_seed(3))
    grads = []
    for extra in ({}, overrides):
        torch.manual_seed(0)
        model = GPTModel(tiny(num_layers=4, hidden_dropout=0.3, attention_dropout=0.3, **extra), 128, 16)
        model_parallel_manual_seed(9)
        model(tokens[:, :-1], labels=tokens[:, 1:]).mean().backward()
        grads.append({n: p.grad for n, p in model.named_parameters()})
    for name, grad in grads[0].items():
        torch.testing.assert_close(grads[1][name], grad, rtol=1e-6, atol=1e-8)


def test_block_rejects_more_recomputed_layers_than_it_has():
    config = tiny(num_layers=4, recompute_granularity="full", recompute_method="block", recompute_num_layers=3)
    with pytest.raises(ValueError, match="recompute_num_layers 3 exceeds the 2 layers of a pipeline stage"):
        TransformerBlock(config, pg=fake_groups(pp=2))


def test_checkpoint_restores_rng_streams():
    model_parallel_manual_seed(1)
    x = torch.randn(4, 8, requires_grad=True)
    weight = torch.randn(8, 8, requires_grad=True)

    def block(inp):
        with get_rng_tracker().fork():
            inp = F.dropout(inp, 0.5)
        return F.dropout(inp @ weight, 0.5)

    cpu_state, tracker_state = torch.get_rng_state(), get_rng_tracker().get_states()
    block(x).sum().backward()
    want_x, want_w = x.grad.clone(), weight.grad.clone()
    x.grad, weight.grad = None, None
    torch.set_rng_state(cpu_state)
    get_rng_tracker().set_states(tracker_state)
    checkpoint(block, x).sum().backward()
    assert torch.equal(x.grad, want_x) and torch.equal(weight.grad, want_w)


# -- fused-op references ----------------------------------------------------------------------------------
def test_fusion_references():
    x = torch.linspace(-4, 4, 101)
    bias = torch.tensor(0.5)
    torch.testing.assert_close(bias_gelu(bias, x), F.gelu(x + bias, approximate="tanh"))
    torch.testing.assert_close(gelu_tanh(x), F.gelu(x, approximate="tanh"))
    residual = torch.ones(101)
    torch.testing.assert_close(bias_dropout_add(x, bias, residual, 0.5, training=False), x + bias + residual)
    torch.manual_seed(0)
    out = bias_dropout_add(x, None, residual, 0.5, training=True) - residual
    kept = out != 0
    torch.testing.assert_close(out[kept], 2 * x[kept])
