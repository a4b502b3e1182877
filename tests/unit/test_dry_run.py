"""--dry-run: exact parameter counts per stage against the core models, the GPT-3 175B plan, memory arithmetic."""
import pytest

from megatron.arguments import parse_args
from megatron.core.parallel_state import ProcessGroups
from megatron.dry_run import plan, run_dry_run, stage_parameters

GPT3_175B = ("--dry-run --world-size 1024 --vocab-size 50257 --num-layers 96 --hidden-size 12288 "
             "--num-attention-heads 96 --seq-length 2048 --max-position-embeddings 2048 --micro-batch-size 1 "
             "--global-batch-size 1536 --tensor-model-parallel-size 8 --pipeline-model-parallel-size 16 --fp16 "
             "--train-samples 146484375 --lr 6e-5 --lr-decay-samples 126953125 --lr-warmup-samples 183105")


def _args(text, capsys=None):
    args = parse_args(argv=text.split())
    if capsys is not None:
        capsys.readouterr()
    return args


def _fake_groups(tp, pp, tp_rank, pp_rank, split=None):
    """This rank's view of a TP x PP layout without torch.distributed (collectives are skipped)."""
    rank = pp_rank * tp + tp_rank
    return ProcessGroups(
        rank=rank, world_size=tp * pp, tensor_model_parallel_size=tp, pipeline_model_parallel_size=pp,
        pipeline_model_parallel_split_rank=split,
        tp_ranks=[pp_rank * tp + i for i in range(tp)], pp_ranks=[tp_rank + j * tp for j in range(pp)],
        embd_ranks=sorted({tp_rank, tp_rank + (pp - 1) * tp} | ({tp_rank + split * tp} if split else set())))


def _numel(module):
    return sum(p.numel() for p in module.parameters())


TINY = ("--dry-run --vocab-size 100 --num-layers 4 --hidden-size 32 --num-attention-heads 4 --seq-length 16 "
        "--max-position-embeddings 20 --micro-batch-size 2 --ffn-hidden-size 48")


@pytest.mark.parametrize("tp,pp", [(1, 1), (2, 2), (2, 4)])
def test_gpt_counts_match_core_model(tp, pp):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models import GPTModel

    args = _args(f"{TINY} --world-size {tp * pp} --tensor-model-parallel-size {tp} --pipeline-model-parallel-size {pp}")
    config = core_transformer_config_from_args(args)
    stages = stage_parameters(args, "gpt")
    for stage in range(pp):
        pg = _fake_groups(tp, pp, 0, stage)
        model = GPTModel(config, args.padded_vocab_size, args.max_position_embeddings,
                         pre_process=stage == 0, post_process=stage == pp - 1, pg=pg)
        assert _numel(model) == stages[stage].params.per_rank(tp)
    assert plan(args, "gpt")["total_parameters"] == _numel(
        GPTModel(config, args.padded_vocab_size, args.max_position_embeddings, pg=ProcessGroups()))


@pytest.mark.parametrize("binary_head", [True, False])
def test_bert_counts_match_core_model(binary_head):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models import BertModel

    extra = "" if binary_head else " --bert-no-binary-head"
    args = _args(f"{TINY} --world-size 4 --tensor-model-parallel-size 2 --pipeline-model-parallel-size 2{extra}")
    config = core_transformer_config_from_args(args)
    stages = stage_parameters(args, "bert")
    for stage in range(2):
        model = BertModel(config, args.padded_vocab_size, args.max_position_embeddings,
                          num_tokentypes=2 if binary_head else 0, add_binary_head=binary_head,
                          pre_process=stage == 0, post_process=stage == 1, pg=_fake_groups(2, 2, 1, stage))
        assert _numel(model) == stages[stage].params.per_rank(2)


def test_t5_counts_match_core_model_with_split():
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.core.models import T5Model

    args = _args(f"{TINY} --world-size 8 --tensor-model-parallel-size 2 --pipeline-model-parallel-size 4 "
                 "--pipeline-model-parallel-split-rank 2 --decoder-seq-length 8")
    config = core_transformer_config_from_args(args)
    stages = stage_parameters(args, "t5")
    split, pp = 2, 4
    for stage in range(pp):
        encoder = stage < split
        model = T5Model(config, args.padded_vocab_size, args.max_position_embeddings,
                        pre_process=stage in (0, split), post_process=stage in (split - 1, pp - 1),
                        add_encoder=encoder, add_decoder=not encoder, pg=_fake_groups(2, pp, 0, stage, split))
        assert _numel(model) == stages[stage].params.per_rank(2), stage
    whole = T5Model(config, args.padded_vocab_size, args.max_position_embeddings, pg=ProcessGroups())
    assert plan(args, "t5")["total_parameters"] == _numel(whole)


def _gpt3_parameters():
    """GPT-3 175B from its architecture, written out independently of megatron.dry_run."""
    h, layers, vocab, positions = 12288, 96, 51200, 2048
    attention = h * 3 * h + 3 * h + h * h + h
    mlp = h * 4 * h + 4 * h + 4 * h * h + h
    layernorms = 2 * 2 * h
    return vocab * h + positions * h + layers * (attention + mlp + layernorms) + 2 * h


def test_gpt3_175b_on_1024_ranks(capsys):
    args = _args(GPT3_175B, capsys)
    assert args.padded_vocab_size == 51200 and args.data_parallel_size == 8 and args.num_micro_batches == 192
    result = run_dry_run(args, "gpt")
    out = capsys.readouterr().out
    assert "GPT on 1024 ranks" in out and "tensor-parallel 8 x pipeline-parallel 16 x data-parallel 8" in out
    assert "174,615,846,912" in out and out.count("stage ") >= 32
    expected = _gpt3_parameters()
    assert expected == 174_615_846_912
    stages = result["stages"]
    assert len(stages) == 16 and all(stage.layers == {"layers": 6} for stage in stages)
    # The last stage's copy of the word embedding is the only parameter counted twice.
    assert sum(stage.params.total() for stage in stages) - stages[-1].tied_copy == expected
    assert result["total_parameters"] == expected


def test_memory_arithmetic_gpt3(capsys):
    args = _args(GPT3_175B + " --sequence-parallel --recompute-activations", capsys)
    first = plan(args, "gpt")["stages"][0]
    per_rank = first.params.per_rank(8)
    assert first.memory["weights"] == 2 * per_rank
    assert first.memory["gradients"] == 2 * per_rank  # fp16 gradients without fp32 accumulation
    assert first.memory["optimizer"] == 12 * per_rank
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    layers_in_flight = 16 * 6  # stage 0 of 1F1B holds PP micro-batches of its 6 layers
    assert first.memory["activations"] == pytest.approx(s * b * h * (34 + 5 * a * s / h) / t * layers_in_flight)
    assert first.memory["activations_recompute"] == pytest.approx(34 * s * b * h / t * layers_in_flight)

    sharded = plan(_args(GPT3_175B + " --use-distributed-optimizer", capsys), "gpt")["stages"][0]
    assert sharded.memory["optimizer"] == pytest.approx(12 * per_rank / 8)
    full = plan(_args(GPT3_175B + " --recompute-granularity full --recompute-method uniform", capsys), "gpt")
    assert full["stages"][0].memory["activations_recompute"] < first.memory["activations_recompute"]


def test_dry_run_rejects_bad_layout_and_missing_vocab():
    with pytest.raises(ValueError, match="world size 1000 is not divisible by --tensor-model-parallel-size 8 x "
                                         "--pipeline-model-parallel-size 16"):
        parse_args(argv=GPT3_175B.replace("--world-size 1024", "--world-size 1000").split())
    with pytest.raises(ValueError, match="--dry-run needs --world-size N"):
        parse_args(argv=GPT3_175B.replace("--world-size 1024", "").split())
    args = _args(TINY.replace("--vocab-size 100", "") + " --world-size 1")
    with pytest.raises(ValueError, match="--dry-run needs --vocab-size V or the tokenizer flags"):
        plan(args, "gpt")


def test_t5_dry_run_needs_split_and_decoder_length(capsys):
    args = _args(f"{TINY} --world-size 2 --pipeline-model-parallel-size 2 --decoder-seq-length 8", capsys)
    with pytest.raises(ValueError, match="T5 with --pipeline-model-parallel-size 2 needs "
                                         "--pipeline-model-parallel-split-rank"):
        plan(args, "t5")
    with pytest.raises(ValueError, match="T5 needs --decoder-seq-length"):
        plan(_args(f"{TINY} --world-size 1", capsys), "t5")
    args = _args(f"{TINY} --world-size 2 --pipeline-model-parallel-size 2 --pipeline-model-parallel-split-rank 1",
                 capsys)
    with pytest.raises(ValueError, match="--pipeline-model-parallel-split-rank 1 is for encoder-decoder models "
                                         r"\(T5\), not GPT"):
        plan(args, "gpt")


def test_model_name_from_model_type():
    from megatron.core.transformer import ModelType
    from megatron.dry_run import model_name_from

    assert model_name_from(ModelType.encoder_and_decoder) == "t5"
    assert model_name_from(ModelType.encoder_or_decoder, "bert") == "bert"
    with pytest.raises(ValueError, match="knows the models gpt, bert, t5"):
        model_name_from("vit")


def test_memory_without_recompute_compares_with_full_recompute(capsys):
    args = _args(GPT3_175B, capsys)
    first = plan(args, "gpt")["stages"][0]
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    per_layer = s * b * h * (10 + 24 / t + 5 * a * s / (h * t))  # tensor parallel without sequence parallel
    assert first.memory["activations"] == pytest.approx(per_layer * 96)
    assert first.memory["activations_recompute"] == pytest.approx(2 * s * b * h * 96 + per_layer)
    assert first.memory["total"] == pytest.approx(first.memory["weights"] + first.memory["gradients"]
                                                  + first.memory["optimizer"] + first.memory["activations"])
    run_dry_run(args, "gpt")
    assert "recompute full uniform 1, for comparison, not configured" in capsys.readouterr().out


def test_interleaved_and_bf16_plan(capsys):
    args = _args(f"{TINY} --world-size 8 --pipeline-model-parallel-size 4 --num-layers 8 "
                 "--num-layers-per-virtual-pipeline-stage 1 --global-batch-size 8 --micro-batch-size 1 --bf16", capsys)
    result = run_dry_run(args, "gpt")
    out = capsys.readouterr().out
    assert "virtual stages 2" in out and "data-parallel 2" in out
    stage = result["stages"][0]
    per_rank = stage.params.per_rank(1)
    assert stage.memory["gradients"] == 4 * per_rank  # bf16 accumulates gradients in fp32
    assert sum(s.params.total() for s in result["stages"]) - result["stages"][-1].tied_copy == result["total_parameters"]
