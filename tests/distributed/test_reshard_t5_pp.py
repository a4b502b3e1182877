"""T5 checkpoints resharded to split-pipeline layouts (reshard.py) load strictly into every stage of
the model built at that layout and give the one-process losses; resharding back is bit-identical."""
import argparse
import os

import torch
import torch.distributed as dist

from megatron.checkpoint_state import flatten_state_dict
from megatron.checkpoint_tools.reshard import (
    SourceCheckpoint,
    merge_shards,
    reshard_checkpoint,
    split_full,
    write_checkpoint,
)
from megatron.core.parallel_state import ProcessGroups
from tests.distributed.equivalence import build_chunks, run_reference, run_schedule
from tests.distributed.spawn import run_ranks
from tests.distributed.test_t5_layouts import (
    DEC_SEQ,
    ENC_SEQ,
    MBS,
    VOCAB,
    build_t5,
    make_batches,
    t5_forward,
    tiny_config,
)

LAYERS = 4
# (label, tp, pp, split rank)
LAYOUTS = [("TP2xPP2-split1", 2, 2, 1), ("PP4-split2", 1, 4, 2), ("PP2-split1-DP2", 1, 2, 1)]


def _saved_args():
    return argparse.Namespace(num_layers=LAYERS, hidden_size=32, num_attention_heads=4, tensor_model_parallel_size=1,
                              pipeline_model_parallel_size=1, padded_vocab_size=VOCAB, vocab_size=VOCAB,
                              make_vocab_size_divisible_by=1, tokenizer_type=None)


def _reference():
    torch.manual_seed(3)
    return build_t5(tiny_config(num_layers=LAYERS), True, True, True, True, ProcessGroups())


def _write_all(root):
    """The one-process checkpoint, each target layout resharded from it, and each resharded back to TP1 x PP1."""
    full = {name: tensor.clone() for name, tensor in _reference().state_dict().items()}
    write_checkpoint(os.path.join(root, "pp1"), split_full(full, LAYERS, 1, 1, VOCAB), _saved_args(), 6, release=False)
    for label, tp, pp, split in LAYOUTS:
        reshard_checkpoint(os.path.join(root, "pp1"), os.path.join(root, label), tp, pp, target_split_rank=split)
        reshard_checkpoint(os.path.join(root, label), os.path.join(root, label + "-back"), 1, 1)


def _worker(rank, world_size, root):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_manual_seed

    if rank == 0:
        _write_all(root)
    dist.barrier()
    batches = make_batches()
    reference = _reference()
    want, _ = run_reference(reference, batches, t5_forward)
    losses = {}
    for label, tp, pp, split in LAYOUTS:
        pg = parallel_state.initialize_model_parallel(tp, pp, None, split)
        try:
            model_parallel_manual_seed(5, pg.tp_rank)
            config = tiny_config(num_layers=LAYERS)

            def provider(pre_process, post_process):
                return build_t5(config, pg.pp_rank in (0, split), pg.pp_rank in (split - 1, pp - 1),
                                pg.is_pipeline_stage_before_split(), pg.is_pipeline_stage_after_split(), pg)

            chunks = build_chunks(provider, pg)
            with torch.no_grad():  # scramble, so that only the loaded weights can give the reference losses
                for param in chunks[0].parameters():
                    param.normal_()
            path = os.path.join(root, label, "iter_0000006", f"mp_rank_{pg.tp_rank:02d}_{pg.pp_rank:03d}",
                                "model_optim_rng.pt")
            state = torch.load(path, map_location="cpu", weights_only=False)
            assert state["args"].pipeline_model_parallel_split_rank == split
            chunks[0].load_state_dict(flatten_state_dict(state["model"]), strict=True)
            losses[label] = run_schedule(chunks, batches, t5_forward, config, pg, ENC_SEQ, MBS, DEC_SEQ)
        finally:
            parallel_state.destroy_model_parallel()
    return want, losses


def test_t5_split_pipeline_checkpoints_load_and_give_the_same_losses(tmp_path):
    results = run_ranks(_worker, 4, str(tmp_path), timeout=300)
    want = results[0][0]
    for label, tp, pp, split in LAYOUTS:
        last_stage_losses = [losses[label] for _, losses in results if losses[label]]
        assert last_stage_losses, label
        for got in last_stage_losses:
            torch.testing.assert_close(torch.tensor(got), torch.tensor(want), rtol=1e-5, atol=1e-6)
        original = merge_shards(SourceCheckpoint(str(tmp_path / "pp1")))
        back = merge_shards(SourceCheckpoint(str(tmp_path / f"{label}-back")))
        assert sorted(back) == sorted(original), label
        assert all(torch.equal(back[name], original[name]) for name in original), label
        source = SourceCheckpoint(str(tmp_path / label))
        assert (source.tp, source.pp) == (tp, pp)
