"""Checkpoints in Megatron-LM's layout: names, nested keys, round trips, load options, old formats, RNG."""
import argparse
import os
import random

import numpy as np
import pytest
import torch

from megatron import checkpointing
from megatron.checkpoint_state import flatten_state_dict, nest_state_dict
from megatron.checkpointing import (
    CheckpointError,
    get_checkpoint_name,
    load_checkpoint,
    read_tracker,
    save_checkpoint,
)
from megatron.core.models import BertModel, BiEncoderModel, GPTModel, T5Model
from megatron.core.tensor_parallel import get_rng_tracker, model_parallel_manual_seed
from megatron.core.transformer import TransformerConfig

VOCAB, SEQ, HIDDEN, HEADS = 64, 16, 16, 2


class StepScheduler:
    """A stand-in learning-rate scheduler: the checkpoint only needs state_dict/load_state_dict."""

    def __init__(self):
        self.num_steps = 0

    def step(self, increment):
        self.num_steps += increment

    def state_dict(self):
        return {"num_steps": self.num_steps}

    def load_state_dict(self, state):
        self.num_steps = state["num_steps"]


def tiny_config(**overrides):
    base = dict(num_layers=2, hidden_size=HIDDEN, num_attention_heads=HEADS, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def make_args(tmp_path, **overrides):
    args = argparse.Namespace(
        save=str(tmp_path / "ckpt"), load=str(tmp_path / "ckpt"), no_save_optim=False, no_save_rng=False,
        no_load_optim=False, no_load_rng=False, finetune=False, consumed_train_samples=0, consumed_valid_samples=0,
        num_layers=2, hidden_size=HIDDEN, num_attention_heads=HEADS, max_position_embeddings=SEQ,
        make_vocab_size_divisible_by=128, padded_vocab_size=VOCAB, tokenizer_type="GPT2BPETokenizer",
        tensor_model_parallel_size=1, pipeline_model_parallel_size=1, use_distributed_optimizer=False,
        ffn_hidden_size=4 * HIDDEN, bias_gelu_fusion=True, openai_gelu=False)
    for name, value in overrides.items():
        setattr(args, name, value)
    return args


def gpt(seed=0):
    torch.manual_seed(seed)
    return GPTModel(tiny_config(), VOCAB, SEQ)


def trained_state(model):
    """One Adam step so the optimizer has moments worth checking."""
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    scheduler = StepScheduler()
    tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=torch.Generator().manual_seed(3))
    model(tokens[:, :-1], labels=tokens[:, 1:]).mean().backward()
    optimizer.step()
    scheduler.step(8)
    return optimizer, scheduler


def assert_same_weights(a, b):
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        assert torch.equal(sa[key], sb[key]), key


# -- names and nested keys ---------------------------------------------------------------------
def test_checkpoint_names():
    assert get_checkpoint_name("/c", 100) == "/c/iter_0000100/mp_rank_00/model_optim_rng.pt"
    assert get_checkpoint_name("/c", 7, tp_rank=1, pp_rank=3, pipeline_parallel=True) == \
        "/c/iter_0000007/mp_rank_01_003/model_optim_rng.pt"
    assert get_checkpoint_name("/c", 0, release=True) == "/c/release/mp_rank_00/model_optim_rng.pt"


def test_gpt_nested_keys_are_megatrons():
    flat = gpt().state_dict()
    nested = nest_state_dict(flat)
    assert set(nested) == {"language_model"}
    lm = nested["language_model"]
    assert set(lm) == {"embedding", "encoder"}
    assert lm["embedding"]["word_embeddings"]["weight"].shape == (VOCAB, HIDDEN)
    assert lm["embedding"]["position_embeddings"]["weight"].shape == (SEQ, HIDDEN)
    assert lm["encoder"]["layers.0.self_attention.query_key_value.weight"].shape == (3 * HIDDEN, HIDDEN)
    assert {"layers.1.mlp.dense_4h_to_h.bias", "final_layernorm.weight"} <= set(lm["encoder"])
    assert flatten_state_dict(nested).keys() == flat.keys()
    assert nest_state_dict({"word_embeddings_for_head.weight": 1}) == {"word_embeddings_for_head": {"weight": 1}}


def test_bert_and_t5_nested_keys_are_megatrons():
    torch.manual_seed(0)
    nested = nest_state_dict(BertModel(tiny_config(), VOCAB, SEQ).state_dict())
    assert set(nested) == {"language_model", "lm_head", "binary_head"}
    assert set(nested["lm_head"]) == {"bias", "dense.weight", "dense.bias", "layernorm.weight", "layernorm.bias"}
    assert set(nested["binary_head"]) == {"weight", "bias"}
    assert set(nested["language_model"]["pooler"]) == {"dense.weight", "dense.bias"}
    assert nested["language_model"]["embedding"]["tokentype_embeddings"]["weight"].shape == (2, HIDDEN)
    t5 = nest_state_dict(T5Model(tiny_config(), VOCAB, SEQ).state_dict())
    assert set(t5["language_model"]) == {"embedding", "encoder", "decoder"}
    assert "layers.0.inter_attention.key_value.weight" in t5["language_model"]["decoder"]
    assert set(t5["lm_head"]) == {"bias"}


def test_biencoder_nested_keys_are_megatrons():
    torch.manual_seed(0)
    nested = nest_state_dict(BiEncoderModel(tiny_config(), VOCAB, SEQ, projection_dim=8).state_dict())
    assert set(nested) == {"query_model", "context_model"}
    assert set(nested["query_model"]) == {"language_model", "projection_enc"}
    assert set(nested["query_model"]["projection_enc"]) == {"weight", "bias"}
    assert "word_embeddings" in nested["context_model"]["language_model"]["embedding"]
    shared = nest_state_dict(BiEncoderModel(tiny_config(), VOCAB, SEQ, shared_query_context_model=True).state_dict())
    assert set(shared) == {"shared_model"}


# -- round trip ---------------------------------------------------------------------------------
def assert_same_state(want, got, where="state"):
    """Nested dicts / lists of tensors and plain values are equal."""
    if isinstance(want, dict):
        assert want.keys() == got.keys(), where
        for key in want:
            assert_same_state(want[key], got[key], f"{where}[{key!r}]")
    elif isinstance(want, (list, tuple)):
        assert len(want) == len(got), where
        for index, (a, b) in enumerate(zip(want, got)):
            assert_same_state(a, b, f"{where}[{index}]")
    elif torch.is_tensor(want):
        assert torch.equal(want, got), where
    else:
        assert want == got, where


def megatron_optimizer(model):
    from megatron.core.optimizer import OptimizerConfig, OptimizerParamScheduler, get_megatron_optimizer

    optimizer = get_megatron_optimizer(OptimizerConfig(lr=1e-3, weight_decay=0.01), [model])
    scheduler = OptimizerParamScheduler(optimizer, init_lr=0.0, max_lr=1e-3, min_lr=1e-5, lr_warmup_steps=4,
                                        lr_decay_steps=100, lr_decay_style="cosine", start_wd=0.01, end_wd=0.01,
                                        wd_incr_steps=100, wd_incr_style="constant")
    return optimizer, scheduler


def test_round_trip_restores_everything(tmp_path):
    args = make_args(tmp_path, consumed_train_samples=40, consumed_valid_samples=8)
    model = gpt(0)
    optimizer, scheduler = megatron_optimizer(model)
    tokens = torch.randint(0, VOCAB, (2, SEQ + 1), generator=torch.Generator().manual_seed(3))
    model(tokens[:, :-1], labels=tokens[:, 1:]).mean().backward()
    assert optimizer.step()[0]
    scheduler.step(8)
    save_checkpoint(5, [model], optimizer, scheduler, args)

    save = tmp_path / "ckpt"
    assert (save / "latest_checkpointed_iteration.txt").read_text() == "5\n"
    assert sorted(os.listdir(save)) == ["iter_0000005", "latest_checkpointed_iteration.txt"]
    assert os.listdir(save / "iter_0000005") == ["mp_rank_00"]
    assert os.listdir(save / "iter_0000005" / "mp_rank_00") == ["model_optim_rng.pt"]
    saved = torch.load(save / "iter_0000005" / "mp_rank_00" / "model_optim_rng.pt", weights_only=False)
    assert {"args", "checkpoint_version", "iteration", "model", "optimizer", "opt_param_scheduler",
            "rng_state"} <= set(saved)
    assert saved["checkpoint_version"] == 3.0 and saved["iteration"] == 5
    assert saved["args"].consumed_train_samples == 40
    assert set(saved["rng_state"][0]) == {"random_rng_state", "np_rng_state", "torch_rng_state",
                                          "cuda_rng_state", "rng_tracker_states"}

    fresh = gpt(1)
    fresh_optimizer, fresh_scheduler = megatron_optimizer(fresh)
    load_args = make_args(tmp_path)
    assert load_checkpoint([fresh], fresh_optimizer, fresh_scheduler, load_args) == 5
    assert_same_weights(model, fresh)
    assert_same_state(optimizer.state_dict(), fresh_optimizer.state_dict())
    assert fresh_scheduler.num_steps == 8 and fresh_scheduler.get_lr() == scheduler.get_lr()
    assert (load_args.consumed_train_samples, load_args.consumed_valid_samples) == (40, 8)
    # The next step is the same on both.
    for m, o in ((model, optimizer), (fresh, fresh_optimizer)):
        o.zero_grad()
        m(tokens[:, :-1], labels=tokens[:, 1:]).mean().backward()
        o.step()
    assert_same_weights(model, fresh)


def test_model_written_through_wrappers_and_flat_dicts_load(tmp_path):
    class Float16Module(torch.nn.Module):  # the wrapper's name is what unwrapping keys on
        def __init__(self, module):
            super().__init__()
            self.module = module

    model = gpt(0)
    args = make_args(tmp_path)
    save_checkpoint(1, Float16Module(model), None, None, args)
    saved = torch.load(get_checkpoint_name(args.save, 1), weights_only=False)
    assert "language_model" in saved["model"]
    # A flat dict (as other tools write) loads as well.
    saved["model"] = model.state_dict()
    torch.save(saved, get_checkpoint_name(args.save, 1))
    fresh = gpt(1)
    load_checkpoint(Float16Module(fresh), None, None, make_args(tmp_path))
    assert_same_weights(model, fresh)


def test_resave_same_iteration_and_interrupted_swap(tmp_path):
    args = make_args(tmp_path)
    model = gpt(0)
    save_checkpoint(3, [model], None, None, args)
    with torch.no_grad():
        model.language_model.embedding.word_embeddings.weight.add_(1.0)
    save_checkpoint(3, [model], None, None, args)
    assert sorted(os.listdir(args.save)) == ["iter_0000003", "latest_checkpointed_iteration.txt"]
    # A kill between moving the old directory aside and renaming the new one into place.
    os.rename(os.path.join(args.save, "iter_0000003"), os.path.join(args.save, "iter_0000003.replaced"))
    fresh = gpt(1)
    assert load_checkpoint([fresh], None, None, make_args(tmp_path)) == 3
    assert_same_weights(model, fresh)


# -- load options -------------------------------------------------------------------------------
def write_release(tmp_path, model):
    path = tmp_path / "ckpt" / "release" / "mp_rank_00"
    path.mkdir(parents=True)
    torch.save({"model": nest_state_dict(model.state_dict()), "checkpoint_version": 3.0,
                "args": make_args(tmp_path)}, path / "model_optim_rng.pt")
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("release")


def test_release_loads_weights_only_as_iteration_zero(tmp_path):
    model = gpt(0)
    write_release(tmp_path, model)
    assert read_tracker(str(tmp_path / "ckpt")) == (0, True)
    fresh = gpt(1)
    optimizer = torch.optim.Adam(fresh.parameters())
    torch.manual_seed(123)
    before = torch.rand(3)
    torch.manual_seed(123)
    assert load_checkpoint([fresh], optimizer, StepScheduler(), make_args(tmp_path)) == 0
    assert torch.equal(torch.rand(3), before)  # the RNG was left alone
    assert_same_weights(model, fresh)
    assert optimizer.state_dict()["state"] == {}


def test_finetune_loads_weights_and_resets(tmp_path):
    model = gpt(0)
    optimizer, scheduler = trained_state(model)
    save_checkpoint(9, [model], optimizer, scheduler, make_args(tmp_path, consumed_train_samples=72))
    fresh = gpt(1)
    fresh_optimizer, fresh_scheduler = torch.optim.Adam(fresh.parameters()), StepScheduler()
    args = make_args(tmp_path, finetune=True)
    assert load_checkpoint([fresh], fresh_optimizer, fresh_scheduler, args) == 0
    assert_same_weights(model, fresh)
    assert fresh_optimizer.state_dict()["state"] == {} and fresh_scheduler.num_steps == 0
    assert args.consumed_train_samples == 0


def test_missing_optimizer_or_rng_names_the_flag(tmp_path):
    model = gpt(0)
    optimizer, scheduler = trained_state(model)
    save_checkpoint(2, [model], optimizer, scheduler, make_args(tmp_path, no_save_optim=True, no_save_rng=True))
    saved = torch.load(get_checkpoint_name(str(tmp_path / "ckpt"), 2), weights_only=False)
    assert "optimizer" not in saved and "rng_state" not in saved
    with pytest.raises(CheckpointError, match="--no-load-optim"):
        load_checkpoint([gpt(1)], torch.optim.Adam(model.parameters()), StepScheduler(), make_args(tmp_path))
    with pytest.raises(CheckpointError, match="--no-load-rng"):
        load_checkpoint([gpt(1)], torch.optim.Adam(model.parameters()), StepScheduler(),
                        make_args(tmp_path, no_load_optim=True))
    fresh = gpt(1)
    assert load_checkpoint([fresh], torch.optim.Adam(fresh.parameters()), StepScheduler(),
                           make_args(tmp_path, no_load_optim=True, no_load_rng=True)) == 2
    assert_same_weights(model, fresh)


def test_2021_scheduler_key_and_rng_layout_load(tmp_path):
    model = gpt(0)
    optimizer, scheduler = trained_state(model)
    args = make_args(tmp_path)
    save_checkpoint(4, [model], optimizer, scheduler, args)
    path = get_checkpoint_name(args.save, 4)
    saved = torch.load(path, weights_only=False)
    saved["lr_scheduler"] = saved.pop("opt_param_scheduler")
    saved.update(saved.pop("rng_state")[0])  # 2021: the five RNG keys at the top level
    torch.save(saved, path)
    fresh = gpt(1)
    fresh_scheduler = StepScheduler()
    assert load_checkpoint([fresh], torch.optim.Adam(fresh.parameters()), fresh_scheduler, make_args(tmp_path)) == 4
    assert fresh_scheduler.num_steps == 8


@pytest.mark.parametrize("name,value,flag", [
    ("hidden_size", 32, "--hidden-size"),
    ("num_layers", 3, "--num-layers"),
    ("padded_vocab_size", 128, "padded vocabulary size"),
    ("tensor_model_parallel_size", 2, "--tensor-model-parallel-size"),
    ("tokenizer_type", "BertWordPieceLowerCase", "--tokenizer-type"),
])
def test_argument_mismatch_names_the_argument(tmp_path, name, value, flag):
    save_checkpoint(1, [gpt(0)], None, None, make_args(tmp_path))
    with pytest.raises(CheckpointError) as error:
        load_checkpoint([gpt(1)], None, None, make_args(tmp_path, **{name: value}))
    message = str(error.value)
    assert "\n" not in message and name in message and flag in message
    saved_value = getattr(make_args(tmp_path), name)
    assert f"{name} {saved_value} " in message and f"has {value} " in message


def test_missing_tracker_starts_from_zero_and_corrupt_tracker_fails(tmp_path, capsys):
    args = make_args(tmp_path)
    assert load_checkpoint([gpt(0)], None, None, args) == 0
    assert "latest_checkpointed_iteration.txt" in capsys.readouterr().out
    os.makedirs(args.load)
    tracker = os.path.join(args.load, "latest_checkpointed_iteration.txt")
    with open(tracker, "w") as f:
        f.write("12ab")
    with pytest.raises(CheckpointError, match="latest_checkpointed_iteration.txt is corrupt"):
        load_checkpoint([gpt(0)], None, None, args)
    with open(tracker, "w") as f:
        f.write("8")
    with pytest.raises(CheckpointError, match="iter_0000008"):
        load_checkpoint([gpt(0)], None, None, args)


def test_strict_load_reports_missing_keys(tmp_path):
    save_checkpoint(1, [gpt(0)], None, None, make_args(tmp_path))
    torch.manual_seed(0)
    bert = BertModel(tiny_config(), VOCAB, SEQ)
    with pytest.raises(CheckpointError, match="does not match the model: missing"):
        load_checkpoint([bert], None, None, make_args(tmp_path))


# -- older checkpoint versions ------------------------------------------------------------------
def to_old_qkv_order(tensor, version, splits, head_dim):
    """Our [np, splits, hn] rows in the order an older Megatron-LM saved them."""
    rows, rest = tensor.shape[0], tuple(tensor.shape[1:])
    heads = rows // (splits * head_dim)
    per_head = tensor.view(heads, splits, head_dim, *rest)
    if version == 0:
        old = per_head.transpose(0, 1)  # [splits, np, hn]
    else:
        old = per_head.transpose(1, 2)  # [np, hn, splits]
    return old.contiguous().view(rows, *rest)


@pytest.mark.parametrize("version", [0, 1.0])
def test_old_qkv_orderings_and_key_names_load(tmp_path, version):
    torch.manual_seed(0)
    model = T5Model(tiny_config(), VOCAB, SEQ)  # self-attention QKV and cross-attention KV
    head_dim = HIDDEN // HEADS
    old = {}
    for key, value in model.state_dict().items():
        if key.endswith((".query_key_value.weight", ".query_key_value.bias")):
            value = to_old_qkv_order(value, version, 3, head_dim)
        elif key.endswith((".key_value.weight", ".key_value.bias")):
            value = to_old_qkv_order(value, version, 2, head_dim)
        key = key.replace("language_model.encoder.", "language_model.transformer.")
        key = key.replace(".self_attention.", ".attention.")
        old[key] = value
    state = {"model": nest_state_dict(old), "iteration": 11, "args": make_args(tmp_path)}
    if version:
        state["checkpoint_version"] = version
    path = tmp_path / "ckpt" / "iter_0000011" / "mp_rank_00"
    path.mkdir(parents=True)
    torch.save(state, path / "model_optim_rng.pt")
    (tmp_path / "ckpt" / "latest_checkpointed_iteration.txt").write_text("11")
    assert "transformer" in state["model"]["language_model"]
    torch.manual_seed(1)
    fresh = T5Model(tiny_config(), VOCAB, SEQ)
    assert load_checkpoint([fresh], None, None, make_args(tmp_path, no_load_rng=True)) == 11
    assert_same_weights(model, fresh)


# -- random-number state ------------------------------------------------------------------------
def draw_everything():
    with get_rng_tracker().fork():
        tracked = torch.rand(4)
    return random.random(), float(np.random.rand()), torch.rand(4), tracked


def test_rng_restore_reproduces_every_generator(tmp_path):
    model_parallel_manual_seed(1234)
    random.seed(5)
    np.random.seed(6)
    draw_everything()  # advance every stream away from its seed
    save_checkpoint(1, [gpt(0)], None, None, make_args(tmp_path))
    expected = draw_everything()
    draw_everything()
    model_parallel_manual_seed(999)
    random.seed(0)
    load_checkpoint([gpt(0)], None, None, make_args(tmp_path))
    got = draw_everything()
    assert got[0] == expected[0] and got[1] == expected[1]
    assert torch.equal(got[2], expected[2]) and torch.equal(got[3], expected[3])


# -- compatibility with the transformers converter ----------------------------------------------
def test_gpt_checkpoint_converts_to_hf_gpt2_with_equal_logits(tmp_path):
    """The path, key names and QKV order the transformers Megatron-GPT2 converter reads."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.models.megatron_gpt2.checkpoint_reshaping_and_interoperability import (
        get_element_from_dict_by_path,
        megatron_to_transformers_fix_query_key_value_ordering,
    )

    model = gpt(0).eval()
    args = make_args(tmp_path)
    save_checkpoint(1, [model], None, None, args)
    saved = torch.load(get_checkpoint_name(args.save, 1), weights_only=False)
    margs = saved["args"]
    embedding = get_element_from_dict_by_path(saved, "model.language_model.embedding")
    encoder = get_element_from_dict_by_path(saved, "model.language_model.encoder")
    heads, head_dim = margs.num_attention_heads, margs.hidden_size // margs.num_attention_heads
    hf_state = {"transformer.wte.weight": embedding["word_embeddings"]["weight"],
                "transformer.wpe.weight": embedding["position_embeddings"]["weight"],
                "transformer.ln_f.weight": encoder["final_layernorm.weight"],
                "transformer.ln_f.bias": encoder["final_layernorm.bias"],
                "lm_head.weight": embedding["word_embeddings"]["weight"]}
    names = {"input_layernorm": "ln_1", "post_attention_layernorm": "ln_2", "self_attention.dense": "attn.c_proj",
             "mlp.dense_h_to_4h": "mlp.c_fc", "mlp.dense_4h_to_h": "mlp.c_proj"}
    for layer in range(margs.num_layers):
        prefix, out = f"layers.{layer}.", f"transformer.h.{layer}."
        for ours, theirs in names.items():
            weight = encoder[f"{prefix}{ours}.weight"]
            hf_state[f"{out}{theirs}.weight"] = weight if "ln_" in theirs else weight.t()
            hf_state[f"{out}{theirs}.bias"] = encoder[f"{prefix}{ours}.bias"]
        for part in ("weight", "bias"):
            qkv = megatron_to_transformers_fix_query_key_value_ordering(
                encoder[f"{prefix}self_attention.query_key_value.{part}"], saved["checkpoint_version"], 3, heads,
                head_dim)
            hf_state[f"{out}attn.c_attn.{part}"] = qkv.t() if part == "weight" else qkv
    config = GPT2Config(vocab_size=margs.padded_vocab_size, n_positions=margs.max_position_embeddings,
                        n_embd=margs.hidden_size, n_layer=margs.num_layers, n_head=heads,
                        n_inner=margs.ffn_hidden_size, activation_function="gelu_fast" if margs.bias_gelu_fusion
                        else "gelu", resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, layer_norm_epsilon=1e-5)
    hf = GPT2LMHeadModel(config).eval()
    missing, unexpected = hf.load_state_dict(hf_state, strict=False)
    assert not unexpected and all(name.endswith(("attn.bias", "attn.masked_bias")) for name in missing)
    tokens = torch.randint(0, VOCAB, (2, SEQ), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        ours = model(tokens)
        theirs = hf(tokens).logits
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


def test_unpicklable_args_are_left_out(tmp_path, capsys):
    args = make_args(tmp_path, callback=lambda: None)
    save_checkpoint(1, [gpt(0)], None, None, args)
    saved = torch.load(get_checkpoint_name(args.save, 1), weights_only=False)
    assert not hasattr(saved["args"], "callback") and saved["args"].hidden_size == HIDDEN
    assert "callback" in capsys.readouterr().out


def test_stale_partial_directories_are_removed(tmp_path):
    args = make_args(tmp_path)
    os.makedirs(os.path.join(args.save, "iter_0000002.partial", "mp_rank_00"))
    open(os.path.join(args.save, ".latest_checkpointed_iteration.txt.tmp-1-2-3"), "w").close()
    save_checkpoint(3, [gpt(0)], None, None, args)
    assert sorted(os.listdir(args.save)) == ["iter_0000003", "latest_checkpointed_iteration.txt"]
    assert checkpointing.read_tracker(args.save) == (3, False)


def test_pickles_of_removed_megatron_modules_load(tmp_path):
    """2021 optimizer states pickled ``fp16.loss_scaler`` objects; that module no longer exists."""
    import sys
    import types

    module = types.ModuleType("fp16.loss_scaler")

    class DynamicLossScaler:
        pass

    DynamicLossScaler.__module__ = "fp16.loss_scaler"
    DynamicLossScaler.__qualname__ = "DynamicLossScaler"
    module.DynamicLossScaler = DynamicLossScaler
    scaler = DynamicLossScaler()
    scaler.cur_scale = 4096.0
    sys.modules["fp16"], sys.modules["fp16.loss_scaler"] = types.ModuleType("fp16"), module
    try:
        torch.save({"optimizer": {"loss_scaler": scaler}}, tmp_path / "old.pt")
    finally:
        del sys.modules["fp16"], sys.modules["fp16.loss_scaler"]
    loaded = checkpointing._load_file(str(tmp_path / "old.pt"))
    assert loaded["optimizer"]["loss_scaler"].cur_scale == 4096.0
    with pytest.raises(CheckpointError, match="cannot read checkpoint file .*broken.pt"):
        (tmp_path / "broken.pt").write_bytes(b"not a checkpoint")
        checkpointing._load_file(str(tmp_path / "broken.pt"))


def test_starting_a_data_loader_leaves_the_global_rng_alone():
    """A resumed run builds its loaders after the RNG state is restored; drawing from the global
    generator there would shift every later dropout mask and break bit-exact resumes."""
    from megatron.core.datasets.samplers import build_pretraining_data_loader

    loader = build_pretraining_data_loader(list(range(16)), 0, 2, 0, 1, seed=3)
    before = torch.get_rng_state()
    next(iter(loader))
    assert torch.equal(torch.get_rng_state(), before)


# -- failed saves -------------------------------------------------------------------------------
@pytest.mark.parametrize("failure", ["enospc", "zip-writer"])
def test_a_failed_save_names_the_directory_the_cause_and_the_intact_checkpoint(tmp_path, monkeypatch, failure):
    """A full disk shows up as OSError(ENOSPC), or as torch's zip writer's "unexpected pos" RuntimeError;
    both become one message naming the directory, the cause and the checkpoint that is still good."""
    import errno
    import shutil
    from collections import namedtuple

    args = make_args(tmp_path)
    model = gpt(0)
    save_checkpoint(3, [model], None, None, args)

    def full_disk(state, path):
        if failure == "enospc":
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), path)
        raise RuntimeError("[enforce fail at inline_container.cc:778] . unexpected pos 4637760 vs 4637648")

    usage = namedtuple("usage", "total used free")
    monkeypatch.setattr(checkpointing, "_atomic_torch_save", full_disk)
    monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(1 << 30, 1 << 30, 0))
    with pytest.raises(CheckpointError) as err:
        save_checkpoint(4, [model], None, None, args)
    assert str(err.value) == (f"checkpoint save to {args.save} failed: no space left on device; "
                              "the previous checkpoint (iteration 3) is intact")
    assert read_tracker(args.save) == (3, False)
    assert load_checkpoint([gpt(1)], None, None, make_args(tmp_path)) == 3
