"""megatron/checkpoint_tools/reshard.py on synthetic state dicts: which dimension each tensor splits
along, split -> write -> read -> merge is the identity for every layout, vocabulary re-padding, old
QKV orderings fixed on read, and the errors for impossible targets."""
import argparse
import os

import pytest
import torch

from megatron.checkpoint_state import nest_state_dict
from megatron.checkpoint_tools.reshard import (
    SourceCheckpoint,
    merge_shards,
    reshard_checkpoint,
    split_dim,
    split_full,
    target_padded_vocab_size,
    write_checkpoint,
)
from megatron.checkpointing import CheckpointError

H, HEADS, LAYERS, VOCAB = 8, 4, 4, 16
L = "language_model.encoder.layers"


def full_gpt(seed=0, vocab=VOCAB):
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    full = {"language_model.embedding.word_embeddings.weight": r(vocab, H),
            "language_model.embedding.position_embeddings.weight": r(8, H),
            "language_model.encoder.final_layernorm.weight": r(H), "language_model.encoder.final_layernorm.bias": r(H)}
    for i in range(LAYERS):
        full.update({f"{L}.{i}.input_layernorm.weight": r(H),
                     f"{L}.{i}.self_attention.query_key_value.weight": r(3 * H, H),
                     f"{L}.{i}.self_attention.query_key_value.bias": r(3 * H),
                     f"{L}.{i}.self_attention.dense.weight": r(H, H), f"{L}.{i}.self_attention.dense.bias": r(H),
                     f"{L}.{i}.mlp.dense_h_to_4h.weight": r(4 * H, H), f"{L}.{i}.mlp.dense_4h_to_h.weight": r(H, 4 * H),
                     f"{L}.{i}.mlp.dense_4h_to_h.bias": r(H)})
    return full


def saved_args(tp=1, pp=1, padded=VOCAB, **extra):
    return argparse.Namespace(num_layers=LAYERS, hidden_size=H, num_attention_heads=HEADS,
                              tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
                              padded_vocab_size=padded, make_vocab_size_divisible_by=4, tokenizer_type=None, **extra)


def test_split_dimensions_follow_megatron_layers():
    assert split_dim("language_model.embedding.word_embeddings.weight") == 0
    assert split_dim("lm_head.bias") == 0 and split_dim("word_embeddings_for_head.weight") == 0
    assert split_dim(f"{L}.0.self_attention.query_key_value.bias") == 0
    assert split_dim("language_model.encoder.layers.3.inter_attention.key_value.weight") == 0
    assert split_dim(f"{L}.0.self_attention.dense.weight") == 1 and split_dim(f"{L}.0.mlp.dense_4h_to_h.weight") == 1
    assert split_dim(f"{L}.0.self_attention.dense.bias") is None and split_dim("lm_head.dense.weight") is None
    assert split_dim("language_model.pooler.dense.weight") is None
    assert split_dim("language_model.embedding.position_embeddings.weight") is None


@pytest.mark.parametrize("model_class", ["GPTModel", "BertModel", "T5Model"])
def test_split_dimensions_equal_the_models_own_partition_dims(model_class):
    """Every parameter's name-derived split dimension is the one its parallel layer declares."""
    from megatron.core import models
    from megatron.core.transformer import TransformerConfig

    model = getattr(models, model_class)(TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2), 64, 16)
    for name, param in model.named_parameters():
        assert split_dim(name) == getattr(param, "partition_dim", None), name


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 1), (1, 2), (2, 2), (4, 4)])
def test_every_layout_round_trips(tmp_path, tp, pp):
    full = full_gpt()
    shards = split_full(full, LAYERS, tp, pp, VOCAB)
    assert len(shards) == tp * pp
    if pp > 1:  # the last stage holds a copy of the word embeddings, first layers renumbered from 0
        assert "word_embeddings_for_head.weight" in shards[(0, pp - 1)]
        assert f"{L}.0.input_layernorm.weight" in shards[(0, pp - 1)]
    assert shards[(0, 0)][f"{L}.0.self_attention.dense.weight"].shape == (H, H // tp)
    write_checkpoint(str(tmp_path), shards, saved_args(tp, pp), 7, release=False)
    names = sorted(os.listdir(tmp_path / "iter_0000007"))
    assert len(names) == tp * pp and (names[0] == "mp_rank_00_000" if pp > 1 else names[0] == "mp_rank_00")
    assert (tmp_path / "latest_checkpointed_iteration.txt").read_text().strip() == "7"
    merged = merge_shards(SourceCheckpoint(str(tmp_path)))
    assert sorted(merged) == sorted(full) and all(torch.equal(merged[k], full[k]) for k in full)


def test_reshard_repads_the_vocabulary(tmp_path):
    # True vocabulary 14: padded 16 at TP 1 (multiple of 4) and 24 at TP 3 (multiple of 12).
    full = full_gpt(vocab=16)
    full["language_model.embedding.word_embeddings.weight"][14:] = 0
    write_checkpoint(str(tmp_path / "a"), split_full(full, LAYERS, 1, 1, 16),
                     saved_args(vocab_size=14), 2, release=False)
    assert target_padded_vocab_size(saved_args(vocab_size=14), 3, None) == 24
    with pytest.raises(CheckpointError, match="does not divide num_attention_heads 4"):
        reshard_checkpoint(str(tmp_path / "a"), str(tmp_path / "b"), 3, 1)
    reshard_checkpoint(str(tmp_path / "a"), str(tmp_path / "b"), 4, 2)
    source = SourceCheckpoint(str(tmp_path / "b"))
    assert source.args.padded_vocab_size == 16 and source.tp == 4 and source.pp == 2
    with pytest.raises(CheckpointError, match="pass --true-vocab-size"):
        target_padded_vocab_size(saved_args(padded=16), 3, None)
    assert target_padded_vocab_size(saved_args(padded=16), 3, 14) == 24


def test_old_qkv_ordering_is_fixed_on_read(tmp_path):
    full = full_gpt()
    qkv = f"{L}.0.self_attention.query_key_value.weight"
    head_dim = H // HEADS
    # Version 0 stored the rows as [3, heads, head_dim]; ours are [heads, 3, head_dim].
    old = dict(full)
    old[qkv] = full[qkv].view(HEADS, 3, head_dim, H).transpose(0, 1).reshape(3 * H, H)
    bias = qkv.replace("weight", "bias")
    old[bias] = full[bias].view(HEADS, 3, head_dim).transpose(0, 1).reshape(3 * H)
    os.makedirs(tmp_path / "iter_0000001" / "mp_rank_00")
    torch.save({"args": saved_args(), "iteration": 1, "model": nest_state_dict(old)},
               tmp_path / "iter_0000001" / "mp_rank_00" / "model_optim_rng.pt")
    (tmp_path / "latest_checkpointed_iteration.txt").write_text("1")
    merged = merge_shards(SourceCheckpoint(str(tmp_path)))
    assert torch.equal(merged[qkv], full[qkv]) and torch.equal(merged[bias], full[bias])


def test_impossible_targets_are_refused(tmp_path):
    with pytest.raises(CheckpointError, match="num_layers 4 is not divisible by --target-pipeline-parallel-size 3"):
        split_full(full_gpt(), LAYERS, 1, 3, VOCAB)
    with pytest.raises(CheckpointError, match="must differ from --load-dir"):
        reshard_checkpoint(str(tmp_path), str(tmp_path), 1, 1)
    with pytest.raises(FileNotFoundError, match="no checkpoint tracker file"):
        SourceCheckpoint(str(tmp_path))


def test_t5_reshards_across_tensor_and_split_pipeline_layouts(tmp_path):
    from megatron.core.models import T5Model
    from megatron.core.transformer import TransformerConfig

    model = T5Model(TransformerConfig(num_layers=2, hidden_size=H, num_attention_heads=HEADS), VOCAB, 8)
    full = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    args = saved_args(tp=2, vocab_size=VOCAB)
    args.num_layers = 2
    write_checkpoint(str(tmp_path / "tp2"), split_full(full, 2, 2, 1, VOCAB), args, 5, release=False)
    reshard_checkpoint(str(tmp_path / "tp2"), str(tmp_path / "tp1"), 1, 1)
    merged = merge_shards(SourceCheckpoint(str(tmp_path / "tp1")))
    assert sorted(merged) == sorted(full) and all(torch.equal(merged[k], full[k]) for k in full)

    # TP1 x PP1 -> TP1 x PP2 split at 1 -> TP1 x PP1 is the identity.
    reshard_checkpoint(str(tmp_path / "tp1"), str(tmp_path / "pp2"), 1, 2, target_split_rank=1)
    source = SourceCheckpoint(str(tmp_path / "pp2"))
    assert source.pp == 2 and source.args.pipeline_model_parallel_split_rank == 1
    encoder_stage, decoder_stage = source.shards[(0, 0)][0], source.shards[(0, 1)][0]
    assert not any(".decoder." in k for k in encoder_stage) and not any(".encoder." in k for k in decoder_stage)
    assert "language_model.encoder.final_layernorm.weight" in encoder_stage and "lm_head.bias" in decoder_stage
    for stage in (encoder_stage, decoder_stage):  # both sides embed their own tokens
        assert torch.equal(stage["language_model.embedding.position_embeddings.weight"],
                           full["language_model.embedding.position_embeddings.weight"])
    assert "word_embeddings_for_head.weight" not in decoder_stage  # the last stage is the first decoder stage
    reshard_checkpoint(str(tmp_path / "pp2"), str(tmp_path / "back"), 1, 1)
    back = merge_shards(SourceCheckpoint(str(tmp_path / "back")))
    assert sorted(back) == sorted(full) and all(torch.equal(back[k], full[k]) for k in full)
    assert SourceCheckpoint(str(tmp_path / "back")).args.pipeline_model_parallel_split_rank is None

    # Without a split rank the stages are halved; an impossible split is refused.
    reshard_checkpoint(str(tmp_path / "tp1"), str(tmp_path / "default"), 1, 2)
    assert SourceCheckpoint(str(tmp_path / "default")).args.pipeline_model_parallel_split_rank == 1
    with pytest.raises(CheckpointError, match="split rank 2 must lie in \\[1, target pipeline size 2 - 1\\]"):
        reshard_checkpoint(str(tmp_path / "tp1"), str(tmp_path / "bad"), 1, 2, target_split_rank=2)
    with pytest.raises(CheckpointError, match="num_layers 2 is not divisible by the 3 decoder stages"):
        reshard_checkpoint(str(tmp_path / "tp1"), str(tmp_path / "bad"), 1, 4, target_split_rank=1)
    with pytest.raises(CheckpointError, match="applies to encoder-decoder \\(T5\\) checkpoints only"):
        split_full(full_gpt(), LAYERS, 1, 2, VOCAB, split_rank=1)
    pp2_without_split = SourceCheckpoint(str(tmp_path / "pp2"))
    pp2_without_split.args.pipeline_model_parallel_split_rank = None
    with pytest.raises(CheckpointError, match="needs a saved pipeline_model_parallel_split_rank"):
        merge_shards(pp2_without_split)
