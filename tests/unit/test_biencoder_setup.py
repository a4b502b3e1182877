"""Biencoder setup: providers, half models, --ict-load / --bert-load loading and their errors, embeddings."""
import pytest
import torch

from megatron import global_vars
from megatron.argument_groups import add_biencoder_args
from megatron.arguments import parse_args
from megatron.checkpointing import CheckpointError, save_checkpoint
from megatron.core import parallel_state
from megatron.core.models import BertModel
from megatron.core.models.biencoder import BiEncoderModel
from megatron.retrieval.biencoder_setup import (
    biencoder_model_provider,
    embed_context,
    embed_query,
    init_towers_from_bert,
    load_biencoder,
)

BASE = ("--num-layers 2 --hidden-size 32 --num-attention-heads 4 --seq-length 16 --max-position-embeddings 16 "
        "--micro-batch-size 2 --vocab-size 100 --hidden-dropout 0 --attention-dropout 0")


@pytest.fixture(autouse=True)
def _reset_globals():
    global_vars.unset_global_variables()
    yield
    global_vars.unset_global_variables()


def make_args(tmp_path, extra=""):
    args = parse_args(add_biencoder_args, argv=(BASE + " " + extra).split())
    args.save = str(tmp_path / "ckpt")
    global_vars.set_global_variables(args)
    return args


def save_weights(model, args):
    args.no_save_optim, args.no_save_rng = True, True
    save_checkpoint(3, [model], None, None, args)


def batch(seed=0):
    gen = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, 100, (3, 16), generator=gen)
    pad_mask = torch.ones(3, 16, dtype=torch.long)
    pad_mask[:, 10:] = 0
    return tokens, pad_mask


def test_provider_and_half_models_load_from_a_full_checkpoint(tmp_path, capsys):
    args = make_args(tmp_path, "--ict-head-size 8")
    pg = parallel_state.get_process_groups()
    full = biencoder_model_provider()()
    assert isinstance(full, BiEncoderModel) and full.query_model is not None and full.context_model is not None
    save_weights(full, args)
    full.eval()
    tokens, pad_mask = batch()
    types = torch.zeros_like(tokens)
    with torch.no_grad():
        want_query, want_context = full(tokens, pad_mask, types, tokens, pad_mask, types)
    assert want_query.shape == (3, 8)

    loaded = load_biencoder(args, pg, args.save)
    assert not loaded.training
    torch.testing.assert_close(embed_query(loaded, tokens, pad_mask), want_query)
    torch.testing.assert_close(embed_context(loaded, tokens, pad_mask), want_context)

    query_only = load_biencoder(args, pg, args.save, only_query_model=True)
    assert query_only.context_model is None
    assert all(k.startswith("query_model.") for k in query_only.state_dict())
    torch.testing.assert_close(embed_query(query_only, tokens, pad_mask), want_query)
    with pytest.raises(ValueError, match="only_query_model: it cannot embed contexts"):
        embed_context(query_only, tokens, pad_mask)
    context_only = load_biencoder(args, pg, args.save, only_context_model=True)
    assert context_only.query_model is None
    out = embed_context(context_only, tokens, pad_mask)
    assert out.dtype == torch.float32 and not out.requires_grad
    torch.testing.assert_close(out, want_context)


def test_shared_tower_embeds_both_sides_alike(tmp_path, capsys):
    args = make_args(tmp_path, "--biencoder-shared-query-context-model")
    model = biencoder_model_provider(only_context_model=True)()
    assert list(model.state_dict()) and all(k.startswith("shared_model.") for k in model.state_dict())
    save_weights(model, args)
    loaded = load_biencoder(args, parallel_state.get_process_groups(), args.save, only_query_model=True)
    tokens, pad_mask = batch(1)
    torch.testing.assert_close(embed_query(loaded, tokens, pad_mask), embed_context(loaded, tokens, pad_mask))


def test_ict_load_errors_name_flag_path_and_keys(tmp_path, capsys):
    args = make_args(tmp_path)
    pg = parallel_state.get_process_groups()
    with pytest.raises(CheckpointError, match=r"--ict-load .*nowhere: no such directory"):
        load_biencoder(args, pg, str(tmp_path / "nowhere"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CheckpointError, match=r"--ict-load .*empty: no checkpoint there"):
        load_biencoder(args, pg, str(tmp_path / "empty"))
    save_weights(biencoder_model_provider()(), args)  # separate towers, no projection
    args.biencoder_shared_query_context_model = True
    with pytest.raises(CheckpointError) as error:
        load_biencoder(args, pg, args.save)
    message = str(error.value)
    assert "\n" not in message
    assert "missing keys: shared_model." in message and "unexpected keys: context_model." in message
    assert "biencoder_shared_query_context_model False" in message
    args.biencoder_shared_query_context_model = False
    args.biencoder_projection_dim = 8
    with pytest.raises(CheckpointError, match=r"missing keys: context_model.projection_enc.bias"):
        load_biencoder(args, pg, args.save, only_context_model=True)


def test_bert_init_copies_encoder_into_both_towers_and_names_mismatches(tmp_path, capsys):
    args = make_args(tmp_path, "--ict-head-size 8")
    from megatron.config_from_args import core_transformer_config_from_args

    bert = BertModel(core_transformer_config_from_args(args), args.padded_vocab_size, 16)
    save_weights(bert, args)
    model = biencoder_model_provider()()
    projection_before = model.query_model.projection_enc.weight.clone()
    init_towers_from_bert(model, args.save, args, parallel_state.get_process_groups())
    name = "language_model.encoder.layers.1.self_attention.query_key_value.weight"
    for tower in ("query_model", "context_model"):
        assert torch.equal(model.state_dict()[f"{tower}.{name}"], bert.state_dict()[name])
    assert torch.equal(model.query_model.projection_enc.weight, projection_before)

    wide = make_args(tmp_path, "--hidden-size 64")
    wide_model = biencoder_model_provider()()
    with pytest.raises(CheckpointError) as error:
        init_towers_from_bert(wide_model, args.save, wide, parallel_state.get_process_groups())
    message = str(error.value)
    assert "\n" not in message and message.startswith(f"--bert-load {args.save}")
    assert "shape mismatch: embedding.position_embeddings.weight (16, 32) vs model (16, 64)" in message
    assert "saved hidden_size 32, this run --hidden-size 64" in message


def test_bert_of_another_vocabulary_is_refused(tmp_path, capsys):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    small, other, large = tmp_path / "small.txt", tmp_path / "other.txt", tmp_path / "large.txt"
    small.write_text("\n".join(words + ["hello", "world"]) + "\n")
    other.write_text("\n".join(words + ["goodbye", "moon"]) + "\n")  # same size, other tokens
    large.write_text("\n".join(words + [f"w{i}" for i in range(200)]) + "\n")
    flags = BASE.replace(" --vocab-size 100", "") + " --tokenizer-type BertWordPieceLowerCase --vocab-file "
    args = parse_args(add_biencoder_args, argv=(flags + str(small)).split())
    args.save = str(tmp_path / "bert")
    global_vars.set_global_variables(args)
    from megatron.config_from_args import core_transformer_config_from_args

    save_weights(BertModel(core_transformer_config_from_args(args), args.padded_vocab_size, 16), args)
    pg = parallel_state.get_process_groups()
    init_towers_from_bert(biencoder_model_provider()(), args.save, args, pg)  # the same vocabulary loads

    for vocab, pattern in ((other, r"--vocab-file .*small.txt, this run has --vocab-file .*other.txt"),
                           (large, r"the BERT vocabulary pads to 128 rows, this run's vocabulary \(\d+ tokens\) "
                                   r"to 256")):
        global_vars.unset_global_variables()
        run = parse_args(add_biencoder_args, argv=(flags + str(vocab)).split())
        global_vars.set_global_variables(run)
        if vocab == large:
            (tmp_path / "small.txt").unlink()  # the saved file is gone: only the padded size can tell
        with pytest.raises(CheckpointError, match=pattern):
            init_towers_from_bert(biencoder_model_provider()(), args.save, run, pg)
