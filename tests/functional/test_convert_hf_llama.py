"""tools/convert_hf_checkpoint.py --model-type llama: transformers' LlamaForCausalLM <-> our GPT with
rope, SwiGLU, RMSNorm and grouped-query attention. Logits agree to 1e-5 on random weights, greedy
continuations are the same tokens, and the import lands at any TP x PP layout.

Models are tiny and random (every parameter drawn, norms included); the conversions go through the
tool's ``main`` and real files."""
import argparse
import json

import pytest
import torch

from megatron.checkpoint_tools.reshard import SourceCheckpoint, merge_shards, reshard_checkpoint, write_checkpoint
from megatron.checkpointing import CheckpointError
from megatron.core.models import GPTModel
from megatron.core.transformer import TransformerConfig
from megatron.text_generation import SamplingParams, generate_tokens
from tools.convert_hf_checkpoint import main as convert

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, HIDDEN, HEADS, GROUPS, FFN, LAYERS = 64, 16, 32, 4, 2, 40, 2


def _randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.2)
    return model.eval()


def _ours(bias=False, untied=True, base=10000.0):
    config = TransformerConfig(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=GROUPS,
        ffn_hidden_size=FFN, swiglu=True, normalization="RMSNorm", layernorm_epsilon=1e-6,
        add_bias_linear=bias, untie_embeddings_and_output_weights=untied, position_embedding_type="rope",
        rotary_base=base, hidden_dropout=0.0, attention_dropout=0.0)
    return GPTModel(config, VOCAB, SEQ, parallel_output=False)


def _args(bias=False, untied=True, base=10000.0):
    return argparse.Namespace(
        num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, num_query_groups=GROUPS,
        group_query_attention=True, kv_channels=HIDDEN // HEADS, ffn_hidden_size=FFN, max_position_embeddings=SEQ,
        seq_length=SEQ, padded_vocab_size=VOCAB, make_vocab_size_divisible_by=8, tensor_model_parallel_size=1,
        pipeline_model_parallel_size=1, layernorm_epsilon=1e-6, position_embedding_type="rope", rotary_percent=1.0,
        rotary_base=base, swiglu=True, normalization="RMSNorm", add_bias_linear=bias,
        untie_embeddings_and_output_weights=untied, hidden_dropout=0.0, attention_dropout=0.0, tokenizer_type=None)


def _tokens(seed=0, vocab=VOCAB):
    return torch.randint(0, vocab, (2, SEQ), generator=torch.Generator().manual_seed(seed))


def _hf_greedy(model, prompt, count):
    with torch.no_grad():
        out = model.generate(torch.tensor([prompt]), max_new_tokens=count, min_new_tokens=count, do_sample=False,
                             eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


@pytest.mark.parametrize("bias,untied", [(False, True), (True, False)])
def test_llama_export_matches_transformers_and_round_trips(tmp_path, bias, untied):
    ours = _randomize(_ours(bias, untied, base=500.0), 1)
    ckpt = str(tmp_path / "ours")
    write_checkpoint(ckpt, {(0, 0): dict(ours.state_dict())}, _args(bias, untied, base=500.0), 3, release=False)
    assert convert(["--direction", "to-hf", "--model-type", "llama", "--load", ckpt,
                    "--save", str(tmp_path / "hf")]) == 0
    with open(tmp_path / "hf" / "config.json") as f:
        config = json.load(f)
    assert (config["num_key_value_heads"], config["tie_word_embeddings"], config["rope_theta"]) == (
        GROUPS, not untied, 500.0)
    theirs = transformers.LlamaForCausalLM.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = _tokens()
    with torch.no_grad():
        torch.testing.assert_close(theirs(tokens).logits, ours(tokens), rtol=1e-5, atol=1e-5)
    prompt = [3, 1, 4, 1, 5]
    want = _hf_greedy(theirs, prompt, 8)
    got = generate_tokens(ours, [prompt], 8, SamplingParams(greedy=True), eod=VOCAB + 1, max_sequence_length=SEQ)
    assert got[0]["tokens"] == want

    assert convert(["--direction", "from-hf", "--model-type", "llama", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "back"), "--make-vocab-size-divisible-by", "8"]) == 0
    back = merge_shards(SourceCheckpoint(str(tmp_path / "back")))
    original = ours.state_dict()
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_llama_import_matches_transformers_at_any_layout(tmp_path):
    hf_vocab = 60  # padded to 64 on import: the extra logits are never a real token's
    hf_config = transformers.LlamaConfig(
        vocab_size=hf_vocab, hidden_size=HIDDEN, intermediate_size=FFN, num_hidden_layers=LAYERS,
        num_attention_heads=HEADS, num_key_value_heads=GROUPS, max_position_embeddings=SEQ, rms_norm_eps=1e-6,
        rope_theta=10000.0, tie_word_embeddings=False, bos_token_id=None, eos_token_id=None)
    theirs = _randomize(transformers.LlamaForCausalLM(hf_config), 2)
    theirs.save_pretrained(str(tmp_path / "hf"))
    for tp, pp in ((1, 1), (2, 2)):
        assert convert(["--direction", "from-hf", "--model-type", "LLAMA", "--load", str(tmp_path / "hf"),
                        "--save", str(tmp_path / f"tp{tp}pp{pp}"), "--make-vocab-size-divisible-by", "8",
                        "--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)]) == 0
    # Each TP rank holds its half of the gate rows and its half of the up rows.
    rank1 = torch.load(tmp_path / "tp2pp2" / "release" / "mp_rank_01_000" / "model_optim_rng.pt", weights_only=False)
    fc1 = rank1["model"]["language_model"]["encoder"]["layers.0.mlp.dense_h_to_4h.weight"]
    gate = theirs.model.layers[0].mlp.gate_proj.weight
    torch.testing.assert_close(fc1[: FFN // 2], gate[FFN // 2:], rtol=0, atol=0)
    ours = _ours()
    full = merge_shards(SourceCheckpoint(str(tmp_path / "tp1pp1")))
    ours.load_state_dict(full, strict=True)
    ours.eval()
    sharded = merge_shards(SourceCheckpoint(str(tmp_path / "tp2pp2")))
    assert sorted(sharded) == sorted(full) and all(torch.equal(sharded[k], full[k]) for k in full)
    assert "language_model.output_layer.weight" in full and not any("for_head" in k for k in sharded)
    # The offline resharder (tools/checkpoint_util.py) reads the saved swiglu / query groups the same way.
    reshard_checkpoint(str(tmp_path / "tp1pp1"), str(tmp_path / "tp2pp1"), 2, 1)
    resharded = merge_shards(SourceCheckpoint(str(tmp_path / "tp2pp1")))
    assert all(torch.equal(resharded[k], full[k]) for k in full)
    with pytest.raises(CheckpointError, match="does not divide num_query_groups 2"):
        reshard_checkpoint(str(tmp_path / "tp1pp1"), str(tmp_path / "tp4"), 4, 1)
    tokens = _tokens(1, hf_vocab)
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[..., :hf_vocab], theirs(tokens).logits, rtol=1e-5, atol=1e-5)


def test_llama_conversion_refuses_what_it_cannot_express(tmp_path, capsys):
    plain = GPTModel(TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS), VOCAB, SEQ)
    args = argparse.Namespace(**{**vars(_args()), "swiglu": False, "normalization": "LayerNorm",
                                 "position_embedding_type": "learned_absolute", "num_query_groups": HEADS})
    write_checkpoint(str(tmp_path / "plain"), {(0, 0): dict(plain.state_dict())}, args, 1, release=False)
    assert convert(["--direction", "to-hf", "--model-type", "llama", "--load", str(tmp_path / "plain"),
                    "--save", str(tmp_path / "out")]) == 1
    assert "LlamaForCausalLM needs --position-embedding-type rope" in capsys.readouterr().err

    llama = _randomize(_ours(), 3)
    write_checkpoint(str(tmp_path / "llama"), {(0, 0): dict(llama.state_dict())}, _args(), 1, release=False)
    assert convert(["--direction", "to-hf", "--model-type", "GPT", "--load", str(tmp_path / "llama"),
                    "--save", str(tmp_path / "gpt2")]) == 1
    assert "--model-type llama" in capsys.readouterr().err

    assert convert(["--direction", "to-hf", "--model-type", "llama", "--load", str(tmp_path / "llama"),
                    "--save", str(tmp_path / "hf")]) == 0
    with open(tmp_path / "hf" / "config.json") as f:
        config = json.load(f)
    config["rope_scaling"] = {"rope_type": "linear", "factor": 2.0}
    with open(tmp_path / "hf" / "config.json", "w") as f:
        json.dump(config, f)
    assert convert(["--direction", "from-hf", "--model-type", "llama", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "back"), "--target-tensor-parallel-size", "4"]) == 1
    err = capsys.readouterr().err
    assert "rope_scaling" in err and len(err.strip().splitlines()) == 1
    config["rope_scaling"] = None
    with open(tmp_path / "hf" / "config.json", "w") as f:
        json.dump(config, f)
    assert convert(["--direction", "from-hf", "--model-type", "llama", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "back"), "--target-tensor-parallel-size", "4"]) == 1
    assert "does not divide num_query_groups 2" in capsys.readouterr().err
