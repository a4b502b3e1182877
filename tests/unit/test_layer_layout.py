"""One rule for where layers live: the model's block, the resharder, the argument checks, the process-group
checks and the dry run all agree with ``megatron.core.layer_layout``, the PP=2 interleaved layout included."""
import pytest

from megatron.arguments import parse_args
from megatron.config_from_args import core_transformer_config_from_args
from megatron.checkpoint_tools import reshard
from megatron.core import layer_layout
from megatron.core.parallel_state import ProcessGroups, validate_layout
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.block import stage_layer_range
from megatron.core.transformer.enums import LayerType
from megatron.dry_run import stage_parameters

# (num_layers, pp, virtual, split)
LAYOUTS = [(8, 1, None, None), (8, 2, None, None), (8, 4, None, None), (8, 2, 2, None), (8, 2, 4, None),
           (12, 3, 2, None), (8, 4, 2, None), (4, 4, None, 2), (6, 4, None, 1)]


def _groups(pp, pp_rank, virtual=None, chunk=None, split=None):
    return ProcessGroups(rank=pp_rank, world_size=pp, pipeline_model_parallel_size=pp,
                         virtual_pipeline_model_parallel_size=virtual, virtual_pipeline_model_parallel_rank=chunk,
                         pipeline_model_parallel_split_rank=split, tp_ranks=[pp_rank], pp_ranks=list(range(pp)),
                         dp_ranks=[pp_rank])


def _stacks(split):
    return (layer_layout.ENCODER, layer_layout.DECODER) if split is not None else (layer_layout.ENCODER,)


@pytest.mark.parametrize("num_layers, pp, virtual, split", LAYOUTS)
def test_block_and_resharder_place_every_layer_where_the_rule_says(num_layers, pp, virtual, split):
    config = TransformerConfig(num_layers=num_layers, hidden_size=8, num_attention_heads=2)
    for stack in _stacks(split):
        layer_type = LayerType.encoder if stack == layer_layout.ENCODER else LayerType.decoder
        name = f"language_model.{stack}.layers.0.mlp.dense_4h_to_h.weight"
        seen = []
        for pp_rank in range(pp):
            if split is not None and (pp_rank < split) != (stack == layer_layout.ENCODER):
                continue
            for chunk in range(virtual or 1):
                count, first = layer_layout.stage_layer_range(num_layers, pp, pp_rank, virtual, chunk, split, stack)
                pg = _groups(pp, pp_rank, virtual, chunk if virtual else None, split)
                assert stage_layer_range(config, pg, layer_type) == (count, first)
                assert reshard._stage_layer_offset(name, num_layers, pp, pp_rank, virtual or 1, chunk, split) == first
                for local in range(count):
                    assert layer_layout.layer_position(first + local, num_layers, pp, virtual, split, stack) == (
                        pp_rank, chunk, local)
                    if virtual is None:
                        global_name = name.replace("layers.0.", f"layers.{first + local}.")
                        local_name = name.replace("layers.0.", f"layers.{local}.")
                        if split is None:
                            assert reshard._stage_of(global_name, num_layers, pp) == (pp_rank, local_name)
                        else:
                            assert reshard._encoder_decoder_stages(global_name, num_layers, pp, split) == [
                                (pp_rank, local_name)]
                seen.extend(range(first, first + count))
        assert sorted(seen) == list(range(num_layers))


_CLI = ("--dry-run --vocab-size 64 --num-layers {layers} --hidden-size 16 --num-attention-heads 2 "
        "--seq-length 8 --max-position-embeddings 8 --micro-batch-size 1 --world-size {pp} "
        "--pipeline-model-parallel-size {pp} --global-batch-size 8")


def _cli(num_layers, pp, per_virtual=None, capsys=None):
    text = _CLI.format(layers=num_layers, pp=pp)
    if per_virtual is not None:
        text += f" --num-layers-per-virtual-pipeline-stage {per_virtual}"
    args = parse_args(argv=text.split())
    capsys.readouterr()
    return args


def test_pp2_interleaving_is_one_rule_everywhere(capsys):
    # The command line, the process groups and the model accept PP=2 with 2 virtual stages alike ...
    args = _cli(8, 2, per_virtual=2, capsys=capsys)
    assert args.virtual_pipeline_model_parallel_size == 2
    assert validate_layout(2, 1, 2, 2) == 1
    layer_layout.check_layer_layout(8, 2, 2)
    # ... and the dry run counts the layers and parameters of both chunks of each stage, as built.
    stages = stage_parameters(args, "gpt")
    assert [s.layers["layers"] for s in stages] == [4, 4]
    from megatron.core.models import GPTModel

    config = core_transformer_config_from_args(args)
    for pp_rank, stage in enumerate(stages):
        built = 0
        for chunk in range(2):
            pg = _groups(2, pp_rank, 2, chunk)
            model = GPTModel(config, args.padded_vocab_size, args.max_position_embeddings,
                             pre_process=pg.is_pipeline_first_stage(), post_process=pg.is_pipeline_last_stage(),
                             pg=pg)
            built += sum(p.numel() for p in model.parameters())
        assert stage.params.per_rank(1) == built
    # PP=1 "interleaving" is refused by every layer with the same rule.
    with pytest.raises(ValueError, match="the interleaved schedule\\) needs --pipeline-model-parallel-size >= 2"):
        _cli(8, 1, per_virtual=2, capsys=capsys)
    with pytest.raises(ValueError, match="the interleaved schedule\\) needs pipeline_model_parallel_size >= 2"):
        validate_layout(1, 1, 1, 2)


def test_block_recompute_limit_is_the_command_lines(capsys):
    # T5 split at 1 of 4 stages: the encoder stage holds 6 layers, each decoder stage 2. The decoder's
    # blocks refuse 3 recomputed layers, so the command line must refuse them too (not only above 6).
    flags = ("--recompute-granularity full --recompute-method block --recompute-num-layers 3 "
             "--pipeline-model-parallel-split-rank 1 --decoder-seq-length 8")
    config = TransformerConfig(num_layers=6, hidden_size=8, num_attention_heads=2, recompute_granularity="full",
                               recompute_method="block", recompute_num_layers=3)
    with pytest.raises(ValueError, match="recompute_num_layers 3 exceeds the 2 layers of a pipeline stage"):
        from megatron.core.transformer import TransformerBlock

        TransformerBlock(config, LayerType.decoder, pg=_groups(4, 2, split=1))
    with pytest.raises(ValueError, match="--recompute-num-layers 3 exceeds the 2 layers of a pipeline stage "
                                         "\\(--recompute-method block\\)"):
        parse_args(argv=(_CLI.format(layers=6, pp=4) + " " + flags).split())
