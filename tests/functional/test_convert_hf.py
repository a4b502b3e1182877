"""tools/convert_hf_checkpoint.py: ours -> transformers and back, with logits parity (fp32, 1e-5).

Models are tiny and random (every parameter drawn, biases and LayerNorms included), built in one
process at TP 1; the conversions themselves go through the tool's ``main`` and real files."""
import argparse
import json
import os

import pytest
import torch

from megatron.checkpoint_tools.reshard import SourceCheckpoint, merge_shards, write_checkpoint
from megatron.core.models import BertModel, GPTModel
from megatron.core.transformer import TransformerConfig
from tools.convert_hf_checkpoint import main as convert

transformers = pytest.importorskip("transformers")

VOCAB, SEQ, HIDDEN, HEADS, LAYERS = 64, 16, 32, 4, 2


def _randomize(model, seed):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for param in model.parameters():
            param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    return model.eval()


def _config(**overrides):
    return TransformerConfig(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS, hidden_dropout=0.0,
                             attention_dropout=0.0, **overrides)


def _args(**extra):
    return argparse.Namespace(num_layers=LAYERS, hidden_size=HIDDEN, num_attention_heads=HEADS,
                              kv_channels=HIDDEN // HEADS,
                              ffn_hidden_size=4 * HIDDEN, max_position_embeddings=SEQ, seq_length=SEQ,
                              padded_vocab_size=VOCAB, make_vocab_size_divisible_by=8, tensor_model_parallel_size=1,
                              pipeline_model_parallel_size=1, layernorm_epsilon=1e-5, hidden_dropout=0.0,
                              attention_dropout=0.0, tokenizer_type=None, **extra)


def _save_ours(model, directory, args):
    write_checkpoint(str(directory), {(0, 0): dict(model.state_dict())}, args, 3, release=False)
    return str(directory)


def _load_ours(directory, model):
    full = merge_shards(SourceCheckpoint(str(directory)))
    model.load_state_dict(full, strict=True)
    return model.eval(), full


def _tokens(seed=0):
    return torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("openai_gelu", [True, False])
def test_gpt_export_matches_transformers_and_round_trips(tmp_path, openai_gelu):
    config = _config(openai_gelu=openai_gelu, bias_gelu_fusion=openai_gelu)
    ours = _randomize(GPTModel(config, VOCAB, SEQ, parallel_output=False), 1)
    ckpt = _save_ours(ours, tmp_path / "ours", _args(openai_gelu=openai_gelu, bias_gelu_fusion=openai_gelu))
    assert convert(["--direction", "to-hf", "--model-type", "GPT", "--load", ckpt, "--save", str(tmp_path / "hf")]) == 0
    assert sorted(os.listdir(tmp_path / "hf")) == ["config.json", "model.safetensors"]
    theirs = transformers.GPT2LMHeadModel.from_pretrained(str(tmp_path / "hf")).eval()
    tokens = _tokens()
    with torch.no_grad():
        want = ours(tokens)
        got = theirs(tokens).logits
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)

    assert convert(["--direction", "from-hf", "--model-type", "GPT", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "back"), "--make-vocab-size-divisible-by", "8"]) == 0
    back = merge_shards(SourceCheckpoint(str(tmp_path / "back")))
    original = ours.state_dict()
    assert sorted(back) == sorted(original)
    for name, tensor in original.items():
        assert torch.equal(back[name], tensor), name


def test_gpt_import_matches_transformers_at_any_layout(tmp_path):
    hf_vocab = 60  # padded to 64 on import: the extra logits are never a real token's
    hf_config = transformers.GPT2Config(vocab_size=hf_vocab, n_positions=SEQ, n_embd=HIDDEN, n_layer=LAYERS,
                                        n_head=HEADS, resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    theirs = _randomize(transformers.GPT2LMHeadModel(hf_config), 2)
    theirs.save_pretrained(str(tmp_path / "hf"))
    for tp, pp in ((1, 1), (2, 2)):
        assert convert(["--direction", "from-hf", "--model-type", "GPT", "--load", str(tmp_path / "hf"),
                        "--save", str(tmp_path / f"tp{tp}pp{pp}"), "--make-vocab-size-divisible-by", "8",
                        "--target-tensor-parallel-size", str(tp), "--target-pipeline-parallel-size", str(pp)]) == 0
    assert sorted(os.listdir(tmp_path / "tp2pp2" / "release")) == [
        "mp_rank_00_000", "mp_rank_00_001", "mp_rank_01_000", "mp_rank_01_001"]
    ours, full = _load_ours(tmp_path / "tp1pp1", GPTModel(_config(openai_gelu=True), VOCAB, SEQ,
                                                          parallel_output=False))
    sharded = merge_shards(SourceCheckpoint(str(tmp_path / "tp2pp2")))
    assert sorted(sharded) == sorted(full) and all(torch.equal(sharded[k], full[k]) for k in full)
    tokens = _tokens(1) % hf_vocab
    with torch.no_grad():
        torch.testing.assert_close(ours(tokens)[..., :hf_vocab], theirs(tokens).logits, rtol=1e-5, atol=1e-5)


def _bert_inputs():
    tokens = _tokens(3)
    mask = torch.ones_like(tokens)
    mask[1, SEQ - 5:] = 0
    types = torch.zeros_like(tokens)
    types[:, SEQ // 2:] = 1
    return tokens, mask, types


def test_bert_export_matches_megatron_bert_and_round_trips(tmp_path):
    config = _config(bias_gelu_fusion=False)
    ours = _randomize(BertModel(config, VOCAB, SEQ, parallel_output=False), 4)
    ckpt = _save_ours(ours, tmp_path / "ours", _args(openai_gelu=False, bias_gelu_fusion=False))
    assert convert(["--direction", "to-hf", "--model-type", "BERT", "--load", ckpt,
                    "--save", str(tmp_path / "hf")]) == 0
    with open(tmp_path / "hf" / "config.json") as f:
        assert json.load(f)["model_type"] == "megatron-bert"
    theirs = transformers.MegatronBertForPreTraining.from_pretrained(str(tmp_path / "hf")).eval()
    tokens, mask, types = _bert_inputs()
    with torch.no_grad():
        lm, binary = ours(tokens, mask, tokentype_ids=types)
        output = theirs(input_ids=tokens, attention_mask=mask, token_type_ids=types)
    # Padded query positions are masked both ways in Megatron's BERT and keys-only in HF: compare real tokens.
    real = mask.bool()
    torch.testing.assert_close(output.prediction_logits[real], lm[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(output.seq_relationship_logits, binary, rtol=1e-5, atol=1e-5)

    assert convert(["--direction", "from-hf", "--model-type", "BERT", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "back"), "--make-vocab-size-divisible-by", "8",
                    "--target-tensor-parallel-size", "2"]) == 0
    back = merge_shards(SourceCheckpoint(str(tmp_path / "back")))
    original = ours.state_dict()
    assert sorted(back) == sorted(original) and all(torch.equal(back[k], original[k]) for k in original)


def test_bert_refusals_name_the_reason(tmp_path, capsys):
    fused = _randomize(BertModel(_config(), VOCAB, SEQ), 5)
    ckpt = _save_ours(fused, tmp_path / "fused", _args(openai_gelu=False, bias_gelu_fusion=True))
    assert convert(["--direction", "to-hf", "--model-type", "BERT", "--load", ckpt, "--save", str(tmp_path / "a")]) == 1
    assert "--openai-gelu or --no-bias-gelu-fusion" in capsys.readouterr().err
    assert convert(["--direction", "to-hf", "--model-type", "BERT", "--load", ckpt, "--save", str(tmp_path / "b"),
                    "--post-layernorm"]) == 1
    assert "BertForPreTraining (post-LayerNorm" in capsys.readouterr().err
    assert convert(["--direction", "to-hf", "--model-type", "GPT", "--load", ckpt, "--save", str(tmp_path / "c")]) == 1
    assert "holds a BERT model, not --model-type GPT" in capsys.readouterr().err
    post_ln = transformers.BertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=1,
                                      num_attention_heads=HEADS, intermediate_size=64, max_position_embeddings=SEQ)
    transformers.BertForPreTraining(post_ln).save_pretrained(str(tmp_path / "bert"))
    assert convert(["--direction", "from-hf", "--model-type", "BERT", "--load", str(tmp_path / "bert"),
                    "--save", str(tmp_path / "d")]) == 1
    assert "model_type 'bert' is the post-LayerNorm BertForPreTraining" in capsys.readouterr().err


def test_megatron_bert_import_matches_transformers(tmp_path):
    hf_config = transformers.MegatronBertConfig(vocab_size=VOCAB, hidden_size=HIDDEN, num_hidden_layers=LAYERS,
                                                num_attention_heads=HEADS, intermediate_size=4 * HIDDEN,
                                                max_position_embeddings=SEQ, hidden_dropout_prob=0.0,
                                                attention_probs_dropout_prob=0.0, layer_norm_eps=1e-5)
    theirs = _randomize(transformers.MegatronBertForPreTraining(hf_config), 6)
    theirs.save_pretrained(str(tmp_path / "hf"))
    assert convert(["--direction", "from-hf", "--model-type", "BERT", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "ours"), "--make-vocab-size-divisible-by", "8",
                    "--target-pipeline-parallel-size", "2"]) == 0
    ours, _ = _load_ours(tmp_path / "ours", BertModel(_config(bias_gelu_fusion=False, layernorm_epsilon=1e-5), VOCAB,
                                                      SEQ, parallel_output=False))
    tokens, mask, types = _bert_inputs()
    with torch.no_grad():
        lm, binary = ours(tokens, mask, tokentype_ids=types)
        output = theirs(input_ids=tokens, attention_mask=mask, token_type_ids=types)
    real = mask.bool()
    torch.testing.assert_close(lm[real], output.prediction_logits[real], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(binary, output.seq_relationship_logits, rtol=1e-5, atol=1e-5)


def _edit_config(directory, **changes):
    path = os.path.join(directory, "config.json")
    with open(path) as f:
        config = json.load(f)
    config.update(changes)
    with open(path, "w") as f:
        json.dump(config, f)
    return path


@pytest.mark.parametrize("changes, named", [
    ({"n_inner": 64}, "tensor transformer.h.0.mlp.c_fc.weight has shape [32, 128] but"),
    ({"n_embd": 48, "n_head": 4}, "tensor transformer.wte.weight has shape [64, 32] but"),
    ({"n_layer": 1}, "tensor transformer.h.1.attn.c_attn.bias belongs to layer 1 but"),
    ({"n_layer": 3}, "has no tensor h.2.ln_1.weight, which"),
    ({"n_positions": 8}, "tensor transformer.wpe.weight has shape [16, 32] but"),
])
def test_gpt_import_refuses_a_config_that_disagrees_with_the_weights(tmp_path, capsys, changes, named):
    hf_config = transformers.GPT2Config(vocab_size=VOCAB, n_positions=SEQ, n_embd=HIDDEN, n_layer=LAYERS,
                                        n_head=HEADS)
    transformers.GPT2LMHeadModel(hf_config).save_pretrained(str(tmp_path / "hf"))
    config_path = _edit_config(str(tmp_path / "hf"), **changes)
    assert convert(["--direction", "from-hf", "--model-type", "GPT", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "ours")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and named in err and config_path in err, err
    assert not os.path.exists(tmp_path / "ours")


def test_llama_import_refuses_wrong_key_value_heads(tmp_path, capsys):
    hf_config = transformers.LlamaConfig(vocab_size=VOCAB, hidden_size=HIDDEN, intermediate_size=48,
                                         num_hidden_layers=1, num_attention_heads=HEADS, num_key_value_heads=2,
                                         max_position_embeddings=SEQ)
    transformers.LlamaForCausalLM(hf_config).save_pretrained(str(tmp_path / "hf"))
    _edit_config(str(tmp_path / "hf"), num_key_value_heads=4)
    assert convert(["--direction", "from-hf", "--model-type", "llama", "--load", str(tmp_path / "hf"),
                    "--save", str(tmp_path / "ours")]) == 1
    err = capsys.readouterr().err
    assert "tensor model.layers.0.self_attn.k_proj.weight has shape [16, 32] but" in err and "implies [32, 32]" in err


def _gpt2_tokenizer_files(directory):
    """A byte-level BPE trained by the tokenizers library (the reference GPT-2 tokenizers are made with)."""
    from tokenizers import ByteLevelBPETokenizer

    trainer = ByteLevelBPETokenizer()
    text = ["The module defines a class.", "Return the number of items in the list.", "import os, sys"] * 20
    trainer.train_from_iterator(text, vocab_size=300, min_frequency=2, special_tokens=["<|endoftext|>"])
    os.makedirs(directory, exist_ok=True)
    trainer.save_model(str(directory))
    return os.path.join(directory, "vocab.json"), os.path.join(directory, "merges.txt")


def test_export_writes_a_tokenizer_that_auto_tokenizer_loads(tmp_path):
    from megatron.tokenizer.gpt2 import GPT2BPETokenizer

    vocab_file, merge_file = _gpt2_tokenizer_files(tmp_path / "tok")
    ours_tokenizer = GPT2BPETokenizer(vocab_file, merge_file)
    vocab = 320  # the tokenizer's ~300 ids padded, as training pads them
    model = _randomize(GPTModel(_config(), vocab, SEQ, parallel_output=False), 7)
    args = _args(openai_gelu=True, bias_gelu_fusion=True)
    args.padded_vocab_size = vocab
    args.tokenizer_type, args.vocab_file, args.merge_file = "GPT2BPETokenizer", vocab_file, merge_file
    ckpt = _save_ours(model, tmp_path / "ours", args)
    export = str(tmp_path / "hf")
    assert convert(["--direction", "to-hf", "--model-type", "GPT", "--load", ckpt, "--save", export]) == 0
    assert sorted(os.listdir(export)) == ["config.json", "merges.txt", "model.safetensors", "tokenizer_config.json",
                                          "vocab.json"]
    theirs_tokenizer = transformers.AutoTokenizer.from_pretrained(export)
    theirs_model = transformers.AutoModelForCausalLM.from_pretrained(export).eval()
    text = "The module returns the number of items."
    ids = theirs_tokenizer(text)["input_ids"]
    assert ids == ours_tokenizer.tokenize(text) and theirs_tokenizer.decode(ids) == text
    assert theirs_tokenizer.eos_token_id == ours_tokenizer.eod
    tokens = torch.tensor([ids[:SEQ]])
    with torch.no_grad():
        torch.testing.assert_close(theirs_model(tokens).logits, model(tokens), rtol=1e-5, atol=1e-5)


def test_bert_export_writes_a_wordpiece_tokenizer(tmp_path):
    from megatron.tokenizer import bert_uncased_vocab_path
    from megatron.tokenizer.bert import BertWordPieceLowerCase

    vocab_file = bert_uncased_vocab_path()
    ours_tokenizer = BertWordPieceLowerCase(vocab_file)
    model = _randomize(BertModel(_config(bias_gelu_fusion=False), ours_tokenizer.vocab_size, SEQ), 8)
    args = _args(openai_gelu=False, bias_gelu_fusion=False)
    args.padded_vocab_size = ours_tokenizer.vocab_size
    args.tokenizer_type, args.vocab_file = "BertWordPieceLowerCase", vocab_file
    export = str(tmp_path / "hf")
    assert convert(["--direction", "to-hf", "--model-type", "BERT", "--load", _save_ours(model, tmp_path / "o", args),
                    "--save", export]) == 0
    theirs = transformers.AutoTokenizer.from_pretrained(export)
    text = "Héllo, World! The module's __init__ returns 42 items."
    assert theirs(text, add_special_tokens=False)["input_ids"] == ours_tokenizer.tokenize(text)
    assert theirs.cls_token_id == ours_tokenizer.cls and theirs.sep_token_id == ours_tokenizer.sep
    assert type(transformers.AutoModelForPreTraining.from_pretrained(export)).__name__ == "MegatronBertForPreTraining"


def test_export_without_tokenizer_files_says_so(tmp_path, capsys):
    args = _args(openai_gelu=True, bias_gelu_fusion=True)
    args.tokenizer_type, args.vocab_file, args.merge_file = "GPT2BPETokenizer", str(tmp_path / "gone.json"), "m"
    ckpt = _save_ours(_randomize(GPTModel(_config(), VOCAB, SEQ), 9), tmp_path / "ours", args)
    assert convert(["--direction", "to-hf", "--model-type", "GPT", "--load", ckpt, "--save", str(tmp_path / "hf")]) == 0
    notice = [line for line in capsys.readouterr().out.splitlines() if "notice" in line]
    assert len(notice) == 1 and f"vocab_file {tmp_path / 'gone.json'} does not exist" in notice[0]
