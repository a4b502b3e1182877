"""Rank layout, validation and stage predicates of parallel_state (no processes needed)."""
import pytest

from megatron.core import parallel_state
from megatron.core.parallel_state import ProcessGroups, _embedding_ranks, _rank_layout, validate_layout


def test_rank_order_is_tensor_then_data_then_pipeline():
    tensor, data, pipeline, model = _rank_layout(8, 2, 2)
    assert tensor == [[0, 1], [2, 3], [4, 5], [6, 7]]
    assert data == [[0, 2], [1, 3], [4, 6], [5, 7]]
    assert pipeline == [[0, 4], [1, 5], [2, 6], [3, 7]]
    assert model == [[0, 1, 4, 5], [2, 3, 6, 7]]


def test_rank_layout_covers_every_rank_once_per_kind():
    for world, tp, pp in [(16, 2, 4), (12, 3, 2), (8, 8, 1), (8, 1, 8)]:
        for groups in _rank_layout(world, tp, pp):
            flat = sorted(r for g in groups for r in g)
            assert flat == list(range(world))


def test_embedding_groups():
    assert _embedding_ranks([0, 4, 8, 12], None) == ([0, 12], [0])
    assert _embedding_ranks([1, 5, 9, 13], 2) == ([1, 9, 13], [1, 9])
    # Split at the last stage: the decoder's first stage is also its last.
    assert _embedding_ranks([0, 1], 1) == ([0, 1], [0, 1])
    assert _embedding_ranks([3], None) == ([3], [3])


@pytest.mark.parametrize("args, message", [
    ((6, 4, 1), "world size 6 is not divisible by tensor_model_parallel_size 4 x pipeline_model_parallel_size 1"),
    ((8, 2, 3), "world size 8 is not divisible"),
    ((4, 1, 1, 2), "virtual_pipeline_model_parallel_size (the interleaved schedule) needs "
                   "pipeline_model_parallel_size >= 2, got 1"),
    ((4, 1, 2, None, 2), "pipeline_model_parallel_split_rank 2 must lie in [1, pipeline_model_parallel_size 2 - 1]"),
    ((4, 0, 1), "must be >= 1"),
])
def test_bad_layouts_are_rejected_with_one_line_messages(args, message):
    with pytest.raises(ValueError) as err:
        validate_layout(*args)
    assert message in str(err.value)
    assert "\n" not in str(err.value)


def test_validate_layout_returns_data_parallel_size():
    assert validate_layout(16, 2, 2) == 4
    assert validate_layout(8, 2, 4, 2) == 1


def test_trivial_groups_without_torch_distributed():
    pg = parallel_state.get_process_groups()
    assert pg.tensor_model_parallel_size == pg.pipeline_model_parallel_size == pg.data_parallel_size == 1
    assert pg.tp is None and pg.is_pipeline_first_stage() and pg.is_pipeline_last_stage()


def test_initialize_needs_torch_distributed():
    with pytest.raises(RuntimeError, match="init_process_group"):
        parallel_state.initialize_model_parallel(1, 1)


def test_stage_predicates_with_virtual_stages():
    pg = ProcessGroups(rank=4, world_size=8, pipeline_model_parallel_size=2, tensor_model_parallel_size=2,
                       data_parallel_size=2, virtual_pipeline_model_parallel_size=2,
                       pp_ranks=[0, 4], tp_ranks=[4, 5], dp_ranks=[4, 6], embd_ranks=[0, 4])
    pg.virtual_pipeline_model_parallel_rank = 0
    assert not pg.is_pipeline_last_stage() and pg.is_pipeline_last_stage(ignore_virtual=True)
    assert not pg.is_rank_in_embedding_group()
    pg.virtual_pipeline_model_parallel_rank = 1
    assert pg.is_pipeline_last_stage() and pg.is_rank_in_embedding_group()
    assert pg.next_pipeline_rank == 0 and pg.prev_pipeline_rank == 0
    assert pg.tp_rank == 0 and pg.pp_rank == 1 and pg.dp_rank == 0


def test_split_predicates():
    pg = ProcessGroups(rank=2, world_size=4, pipeline_model_parallel_size=4, pipeline_model_parallel_split_rank=2,
                       pp_ranks=[0, 1, 2, 3], tp_ranks=[2], dp_ranks=[2])
    assert pg.is_pipeline_stage_after_split() and not pg.is_pipeline_stage_before_split()
    assert pg.is_pipeline_stage_before_split(1) and not pg.is_pipeline_stage_at_split()
    pg.rank, pg.tp_ranks, pg.dp_ranks = 1, [1], [1]
    assert pg.is_pipeline_stage_at_split()
