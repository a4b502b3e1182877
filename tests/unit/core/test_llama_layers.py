"""Llama-style pieces of the one GPT model: RMSNorm, SwiGLU, grouped-query attention with rotary
embeddings, bias-free linears, the untied output layer, no position embedding; their flags, the
KV cache, the FLOPs formula and the dry-run parameter count, each against an independent reference."""
import argparse

import pytest
import torch
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode

from megatron.arguments import parse_args
from megatron.config_from_args import core_transformer_config_from_args
from megatron.core.models import GPTModel
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import ParallelAttention, ParallelMLP, TransformerConfig
from megatron.core.transformer.enums import AttnMaskType, AttnType
from megatron.core.transformer.layer import RMSNorm
from megatron.dry_run import plan
from megatron.text_generation import SamplingParams, generate_tokens, kv_cache
from megatron.utils import num_floating_point_operations

VOCAB, HIDDEN, HEADS = 64, 32, 4


def llama_config(**overrides):
    values = dict(num_layers=2, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=2,
                  ffn_hidden_size=48, swiglu=True, normalization="RMSNorm", add_bias_linear=False,
                  untie_embeddings_and_output_weights=True, position_embedding_type="rope",
                  hidden_dropout=0.0, attention_dropout=0.0)
    values.update(overrides)
    return TransformerConfig(**values)


@pytest.fixture(autouse=True)
def _clean_env(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)


def test_rms_norm_matches_transformers_llama_rms_norm():
    pytest.importorskip("transformers")
    from transformers.models.llama.modeling_llama import LlamaRMSNorm

    x = torch.randn(5, 3, HIDDEN, generator=torch.Generator().manual_seed(0)) * 3 + 1
    ours, theirs = RMSNorm(HIDDEN, eps=1e-6), LlamaRMSNorm(HIDDEN, eps=1e-6)
    with torch.no_grad():
        ours.weight.copy_(torch.linspace(0.5, 1.5, HIDDEN))
        theirs.weight.copy_(ours.weight)
    torch.testing.assert_close(ours(x), theirs(x), rtol=1e-6, atol=1e-6)
    assert [name for name, _ in ours.named_parameters()] == ["weight"]
    half = ours(x.to(torch.bfloat16))  # fp32 statistics, output in the input's dtype
    assert half.dtype == torch.bfloat16
    torch.testing.assert_close(half.float(), ours(x), rtol=2e-2, atol=2e-2)


def test_swiglu_mlp_is_silu_gate_times_up_then_down():
    torch.manual_seed(1)
    mlp = ParallelMLP(llama_config(), ProcessGroups())
    assert mlp.dense_h_to_4h.weight.shape == (2 * 48, HIDDEN) and mlp.dense_h_to_4h.bias is None
    x = torch.randn(6, 2, HIDDEN)
    out, bias = mlp(x)
    gate, up = mlp.dense_h_to_4h.weight[:48], mlp.dense_h_to_4h.weight[48:]
    want = (F.silu(x @ gate.t()) * (x @ up.t())) @ mlp.dense_4h_to_h.weight.t()
    assert bias is None
    torch.testing.assert_close(out, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("backend", ["sdpa", "unfused"])
def test_grouped_query_attention_equals_heads_sharing_their_groups_keys(backend):
    """GQA with g groups computes what multi-head attention computes when each head's key and value
    rows are copies of its group's: query head j reads group j // (heads / groups)."""
    torch.manual_seed(2)
    gqa_config = llama_config(attention_backend=backend, add_bias_linear=True)
    gqa = ParallelAttention(gqa_config, 1, AttnType.self_attn, AttnMaskType.causal, ProcessGroups())
    with torch.no_grad():
        gqa.query_key_value.bias.normal_()
    mha = ParallelAttention(llama_config(attention_backend=backend, add_bias_linear=True, num_query_groups=HEADS), 1,
                            AttnType.self_attn, AttnMaskType.causal, ProcessGroups())
    hn, per_group = HIDDEN // HEADS, HEADS // 2
    assert gqa.query_key_value.weight.shape == ((HEADS + 2 * 2) * hn, HIDDEN)

    def rows(tensor):  # [groups, per_group + 2, hn, ...] -> per head (q, k, v)
        grouped = tensor.reshape(2, per_group + 2, hn, *tensor.shape[1:])
        return [(grouped[h // per_group, h % per_group], grouped[h // per_group, per_group],
                 grouped[h // per_group, per_group + 1]) for h in range(HEADS)]

    with torch.no_grad():
        for name in ("weight", "bias"):
            source = getattr(gqa.query_key_value, name)
            getattr(mha.query_key_value, name).copy_(torch.cat([torch.stack(t) for t in rows(source)]).reshape_as(
                getattr(mha.query_key_value, name)))
        mha.dense.weight.copy_(gqa.dense.weight)
        mha.dense.bias.copy_(gqa.dense.bias)
    x = torch.randn(7, 2, HIDDEN)
    rotary = torch.randn(7, 1, 1, hn)
    got, _ = gqa(x, None, rotary_pos_emb=rotary)
    want, _ = mha(x, None, rotary_pos_emb=rotary)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)


def test_layout_and_config_errors_name_the_numbers():
    with pytest.raises(ValueError, match="num_attention_heads 4 is not divisible by num_query_groups 3"):
        llama_config(num_query_groups=3)
    with pytest.raises(ValueError, match="num_query_groups 2 is not divisible by tensor_model_parallel_size 4"):
        llama_config().validate_layout(4)
    with pytest.raises(ValueError, match="cross-attention has no grouped-query form"):
        ParallelAttention(llama_config(), 1, AttnType.cross_attn, pg=ProcessGroups())
    with pytest.raises(ValueError, match="normalization 'rms'"):
        llama_config(normalization="rms")


def test_untied_output_layer_and_no_learned_positions():
    torch.manual_seed(3)
    model = GPTModel(llama_config(), VOCAB, 16, parallel_output=False).eval()
    names = [name for name, _ in model.named_parameters()]
    assert "language_model.output_layer.weight" in names
    assert not any(name.endswith(".bias") or "position_embeddings" in name for name in names)
    assert model.word_embeddings_weight() is None and not model.has_output_layer()
    tokens = torch.randint(0, VOCAB, (2, 8))
    hidden = model.language_model(tokens, None, None)
    want = hidden.transpose(0, 1) @ model.language_model.output_layer.weight.t()
    torch.testing.assert_close(model(tokens), want, rtol=1e-5, atol=1e-6)

    none = GPTModel(llama_config(position_embedding_type="none"), VOCAB, 16, parallel_output=False)
    assert none.language_model.rotary_pos_emb is None and not none.language_model.embedding.add_position_embedding


@pytest.mark.parametrize("backend", ["sdpa", "unfused"])
def test_kv_cache_with_gqa_and_rope_equals_recompute(backend):
    torch.manual_seed(4)
    model = GPTModel(llama_config(attention_backend=backend, rotary_base=500.0), VOCAB, 32,
                     parallel_output=False).eval()
    prompts = [[1, 2, 3, 4, 5], [7, 8], [9, 10, 11]]
    greedy = SamplingParams(greedy=True)
    cached = generate_tokens(model, prompts, 8, greedy, eod=VOCAB - 1, max_sequence_length=32)
    assert cached == generate_tokens(model, prompts, 8, greedy, eod=VOCAB - 1, max_sequence_length=32,
                                     use_cache=False)
    with kv_cache(model):  # the cache keeps one key/value head per group, not per query head
        model(torch.tensor([[1, 2, 3]]), None, None)
        layer = model.language_model.encoder.layers[0].self_attention
        assert layer.inference_cache.key.shape == (3, 1, 2, HIDDEN // HEADS)
        step = model(torch.tensor([[4]]), None, None)[:, -1]
    full = model(torch.tensor([[1, 2, 3, 4]]), None, None)[:, -1]
    torch.testing.assert_close(step, full, rtol=1e-5, atol=1e-5)


LLAMA_FLAGS = ("--num-layers 2 --hidden-size 64 --num-attention-heads 8 --seq-length 16 --micro-batch-size 2 "
               "--vocab-size 100 --position-embedding-type rope --rotary-base 500000 --swiglu "
               "--normalization RMSNorm --norm-epsilon 1e-6 --group-query-attention --num-query-groups 2 "
               "--disable-bias-linear --untie-embeddings-and-output-weights --no-position-embedding")


def test_llama_flags_map_onto_the_config():
    args = parse_args(argv=LLAMA_FLAGS.split())
    config = core_transformer_config_from_args(args)
    assert (config.num_query_groups, config.swiglu, config.normalization, config.add_bias_linear,
            config.untie_embeddings_and_output_weights, config.rotary_base, config.layernorm_epsilon) == (
        2, True, "RMSNorm", False, True, 500000.0, 1e-6)
    assert args.ffn_hidden_size == 128  # Megatron's SwiGLU default: int(8h/3 / 64) * 64
    assert args.max_position_embeddings == 16 and config.position_embedding_type == "rope"
    plain = parse_args(argv=LLAMA_FLAGS.replace("--position-embedding-type rope --rotary-base 500000", "").split())
    assert plain.position_embedding_type == "none"
    assert parse_args(argv=LLAMA_FLAGS.replace("--norm-epsilon", "--layernorm-epsilon").split()).layernorm_epsilon == 1e-6


@pytest.mark.parametrize("extra,message", [
    ("--tensor-model-parallel-size 4", "--num-query-groups 2 is not divisible by --tensor-model-parallel-size 4"),
    ("--num-query-groups 3", "--num-attention-heads 8 is not divisible by --num-query-groups 3"),
    ("--position-embedding-type learned_absolute --max-position-embeddings 16",
     "--no-position-embedding contradicts --position-embedding-type learned_absolute"),
    ("--layernorm-epsilon 1e-5", "--norm-epsilon 1e-06 contradicts --layernorm-epsilon 1e-05"),
])
def test_llama_flag_errors_are_one_line(extra, message, monkeypatch):
    if "tensor-model" in extra:
        monkeypatch.setenv("WORLD_SIZE", "4")
    text = LLAMA_FLAGS
    if "--position-embedding-type" in extra:
        text = text.replace("--position-embedding-type rope --rotary-base 500000", "")
    if "--num-query-groups" in extra:
        text = text.replace("--num-query-groups 2", "")
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        parse_args(argv=(text + " " + extra).split())
    with pytest.raises(ValueError, match="--num-query-groups 2 needs --group-query-attention"):
        parse_args(argv=LLAMA_FLAGS.replace("--group-query-attention", "").split())
    with pytest.raises(ValueError, match="--rotary-base needs --position-embedding-type rope"):
        parse_args(argv=LLAMA_FLAGS.replace("--position-embedding-type rope", "").split())


@pytest.mark.parametrize("overrides", [{}, {"swiglu": False, "num_query_groups": HEADS, "ffn_hidden_size": 128}])
def test_flops_formula_counts_what_the_forward_multiplies(overrides):
    """The formula's forward share equals the matrix-multiply FLOPs torch counts in a real forward pass."""
    config = llama_config(attention_backend="unfused", apply_query_key_layer_scaling=False, **overrides)
    model = GPTModel(config, VOCAB, 16).eval()
    batch, seq = 2, 16
    tokens = torch.randint(0, VOCAB, (batch, seq))
    with FlopCounterMode(display=False) as counter, torch.no_grad():
        model(tokens)
    counted = counter.get_total_flops()
    formula = num_floating_point_operations(
        batch, seq, config.num_layers, HIDDEN, VOCAB, recompute=False, num_attention_heads=HEADS,
        num_query_groups=config.num_query_groups, kv_channels=config.kv_channels,
        ffn_hidden_size=config.ffn_hidden_size, swiglu=config.swiglu)
    assert formula == pytest.approx(3 * counted, rel=1e-9)


@pytest.mark.parametrize("pp", [1, 2])
def test_dry_run_counts_the_llama_parameters(pp):
    flags = (LLAMA_FLAGS.replace("--vocab-size 100", "--vocab-size 128") + " --dry-run --world-size "
             f"{2 * pp} --tensor-model-parallel-size 2 --pipeline-model-parallel-size {pp} --ffn-hidden-size 96")
    args = parse_args(argv=flags.split())
    result = plan(args, "gpt")
    model = GPTModel(core_transformer_config_from_args(args), args.padded_vocab_size, args.max_position_embeddings,
                     pg=ProcessGroups())
    assert result["total_parameters"] == sum(p.numel() for p in model.parameters())
    assert sum(stage.tied_copy for stage in result["stages"]) == 0
    assert result["sum_of_stages"] == result["total_parameters"]


def test_checkpoint_args_name_a_changed_architecture():
    from megatron.checkpointing import CheckpointError, check_checkpoint_args

    saved = parse_args(argv=LLAMA_FLAGS.split())
    check_checkpoint_args(saved, parse_args(argv=LLAMA_FLAGS.split()), "ckpt/model_optim_rng.pt", 3.0)
    run = parse_args(argv=LLAMA_FLAGS.replace("--position-embedding-type rope --rotary-base 500000", "").split())
    with pytest.raises(CheckpointError, match="saved with position_embedding_type rope but this run has none"):
        check_checkpoint_args(saved, run, "ckpt/model_optim_rng.pt", 3.0)
    older = argparse.Namespace(**{k: v for k, v in vars(saved).items() if k not in ("swiglu", "num_query_groups")})
    check_checkpoint_args(older, parse_args(argv=LLAMA_FLAGS.split()), "ckpt/model_optim_rng.pt", 3.0)
