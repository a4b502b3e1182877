"""Process groups for tensor, pipeline (and virtual pipeline), data and embedding parallelism.

``initialize_model_parallel`` validates the layout once and builds every group into one
``ProcessGroups`` object. Modules that communicate take that object explicitly (defaulting to
the initialised one through ``get_process_groups``); only the training layer should use the
module-level getters at the bottom of this file.

Rank order follows Megatron-LM: tensor-parallel ranks are adjacent (fastest varying), then
data-parallel, then pipeline. With 8 ranks, TP=2 and PP=2 (so DP=2):

    tensor groups   [0,1] [2,3] [4,5] [6,7]
    data groups     [0,2] [1,3] [4,6] [5,7]
    pipeline groups [0,4] [1,5] [2,6] [3,7]

so rank-numbered files (``mp_rank_{tp:02d}_{pp:03d}``) and checkpoints line up with Megatron's.
"""
import datetime
from dataclasses import dataclass, field
from typing import List, Optional

import torch.distributed as dist

from megatron.core.layer_layout import check_pipeline_layout


@dataclass
class ProcessGroups:
    """Every group this rank belongs to, with the global ranks in each.

    A group is ``None`` only in the trivial single-process layout (torch.distributed not
    initialised), where every size is 1 and every collective is skipped; ``embd``/``pos_embd``
    are also ``None`` on ranks that are not members of an embedding group.
    """

    rank: int = 0
    world_size: int = 1
    tensor_model_parallel_size: int = 1
    pipeline_model_parallel_size: int = 1
    data_parallel_size: int = 1
    virtual_pipeline_model_parallel_size: Optional[int] = None
    pipeline_model_parallel_split_rank: Optional[int] = None
    tp: Optional[dist.ProcessGroup] = None
    pp: Optional[dist.ProcessGroup] = None
    dp: Optional[dist.ProcessGroup] = None
    mp: Optional[dist.ProcessGroup] = None
    embd: Optional[dist.ProcessGroup] = None
    pos_embd: Optional[dist.ProcessGroup] = None
    tp_ranks: List[int] = field(default_factory=lambda: [0])
    pp_ranks: List[int] = field(default_factory=lambda: [0])
    dp_ranks: List[int] = field(default_factory=lambda: [0])
    mp_ranks: List[int] = field(default_factory=lambda: [0])
    embd_ranks: List[int] = field(default_factory=list)
    pos_embd_ranks: List[int] = field(default_factory=list)
    # Which model chunk the interleaved schedule is running; changes during a step.
    virtual_pipeline_model_parallel_rank: Optional[int] = None

    # -- ranks within groups -------------------------------------------------------------
    @property
    def tp_rank(self) -> int:
        return self.tp_ranks.index(self.rank)

    @property
    def pp_rank(self) -> int:
        return self.pp_ranks.index(self.rank)

    @property
    def dp_rank(self) -> int:
        return self.dp_ranks.index(self.rank)

    @property
    def tp_src_rank(self) -> int:
        """Global rank of tensor-parallel rank 0 in this rank's group (the broadcast source)."""
        return self.tp_ranks[0]

    @property
    def dp_src_rank(self) -> int:
        return self.dp_ranks[0]

    # -- pipeline position ---------------------------------------------------------------
    def is_pipeline_first_stage(self, ignore_virtual: bool = False) -> bool:
        if not ignore_virtual and self.virtual_pipeline_model_parallel_size is not None:
            if self.virtual_pipeline_model_parallel_rank != 0:
                return False
        return self.pp_rank == 0

    def is_pipeline_last_stage(self, ignore_virtual: bool = False) -> bool:
        if not ignore_virtual and self.virtual_pipeline_model_parallel_size is not None:
            if self.virtual_pipeline_model_parallel_rank != self.virtual_pipeline_model_parallel_size - 1:
                return False
        return self.pp_rank == self.pipeline_model_parallel_size - 1

    def is_pipeline_stage_before_split(self, pp_rank: Optional[int] = None) -> bool:
        """True for encoder stages of an encoder-decoder split (and always without a split)."""
        if self.pipeline_model_parallel_size == 1 or self.pipeline_model_parallel_split_rank is None:
            return True
        rank = self.pp_rank if pp_rank is None else pp_rank
        return rank < self.pipeline_model_parallel_split_rank

    def is_pipeline_stage_after_split(self, pp_rank: Optional[int] = None) -> bool:
        """True for decoder stages of an encoder-decoder split (and always without a split)."""
        if self.pipeline_model_parallel_size == 1 or self.pipeline_model_parallel_split_rank is None:
            return True
        rank = self.pp_rank if pp_rank is None else pp_rank
        return rank >= self.pipeline_model_parallel_split_rank

    def is_pipeline_stage_at_split(self) -> bool:
        """The last encoder stage, whose successor is the first decoder stage."""
        rank = self.pp_rank
        return self.is_pipeline_stage_before_split(rank) and self.is_pipeline_stage_after_split(rank + 1)

    def is_rank_in_embedding_group(self, ignore_virtual: bool = False) -> bool:
        if self.rank not in self.embd_ranks:
            return False
        if ignore_virtual:
            return True
        if self.rank == self.embd_ranks[0]:
            return self.is_pipeline_first_stage()
        if self.rank == self.embd_ranks[-1]:
            return self.is_pipeline_last_stage()
        return True

    def is_rank_in_position_embedding_group(self) -> bool:
        return self.rank in self.pos_embd_ranks

    @property
    def next_pipeline_rank(self) -> int:
        """Global rank of the next stage; the last stage wraps to the first (interleaved schedule)."""
        return self.pp_ranks[(self.pp_rank + 1) % self.pipeline_model_parallel_size]

    @property
    def prev_pipeline_rank(self) -> int:
        return self.pp_ranks[(self.pp_rank - 1) % self.pipeline_model_parallel_size]

    @property
    def pipeline_first_rank(self) -> int:
        return self.pp_ranks[0]

    @property
    def pipeline_last_rank(self) -> int:
        return self.pp_ranks[-1]


_PROCESS_GROUPS: Optional[ProcessGroups] = None
_CREATED_GROUPS: list = []


def _rank_layout(world_size: int, tp: int, pp: int):
    """Global ranks of every tensor, data, pipeline and model group, in Megatron's order."""
    dp = world_size // (tp * pp)
    per_stage = world_size // pp
    tensor = [list(range(i * tp, (i + 1) * tp)) for i in range(world_size // tp)]
    data = []
    for stage in range(pp):
        start, end = stage * per_stage, (stage + 1) * per_stage
        for t in range(tp):
            data.append(list(range(start + t, end, tp)))
    pipeline = [list(range(i, world_size, per_stage)) for i in range(per_stage)]
    model = [[group[d] for group in data] for d in range(dp)]
    return tensor, data, pipeline, model


def _embedding_ranks(pipeline_ranks: List[int], split_rank: Optional[int]):
    """First and last stage share the word embedding (T5 adds the first decoder stage)."""
    if len(pipeline_ranks) == 1:
        return list(pipeline_ranks), list(pipeline_ranks)
    embd = [pipeline_ranks[0], pipeline_ranks[-1]]
    pos = [pipeline_ranks[0]]
    if split_rank is not None:
        split = pipeline_ranks[split_rank]
        if split not in embd:
            embd = [pipeline_ranks[0], split, pipeline_ranks[-1]]
        if split not in pos:
            pos = [pipeline_ranks[0], split]
    return embd, pos


def validate_layout(world_size: int, tensor_model_parallel_size: int, pipeline_model_parallel_size: int,
                    virtual_pipeline_model_parallel_size: Optional[int] = None,
                    pipeline_model_parallel_split_rank: Optional[int] = None) -> int:
    """Check a parallel layout and return the data-parallel size it implies."""
    tp, pp = tensor_model_parallel_size, pipeline_model_parallel_size
    if tp < 1 or pp < 1:
        raise ValueError(f"tensor_model_parallel_size {tp} and pipeline_model_parallel_size {pp} must be >= 1")
    if world_size % (tp * pp) != 0:
        raise ValueError(
            f"world size {world_size} is not divisible by tensor_model_parallel_size {tp} "
            f"x pipeline_model_parallel_size {pp}"
        )
    check_pipeline_layout(pp, virtual_pipeline_model_parallel_size, pipeline_model_parallel_split_rank)
    return world_size // (tp * pp)


def initialize_model_parallel(tensor_model_parallel_size: int = 1, pipeline_model_parallel_size: int = 1,
                              virtual_pipeline_model_parallel_size: Optional[int] = None,
                              pipeline_model_parallel_split_rank: Optional[int] = None,
                              timeout: Optional[datetime.timedelta] = None) -> ProcessGroups:
    """Build every process group for this layout; torch.distributed must already be initialised.

    Every rank must call this with the same arguments, because creating a group is collective.
    ``timeout`` bounds every collective on these groups; pass the job's (``--distributed-timeout-minutes``),
    since a group created without one gets torch's default (30 minutes), not the world group's.
    """
    global _PROCESS_GROUPS
    if not dist.is_initialized():
        raise RuntimeError("initialize_model_parallel needs torch.distributed.init_process_group to run first")
    if _PROCESS_GROUPS is not None:
        raise RuntimeError("model parallel groups are already initialised; call destroy_model_parallel first")
    world_size, rank = dist.get_world_size(), dist.get_rank()
    dp = validate_layout(world_size, tensor_model_parallel_size, pipeline_model_parallel_size,
                         virtual_pipeline_model_parallel_size, pipeline_model_parallel_split_rank)
    tensor, data, pipeline, model = _rank_layout(world_size, tensor_model_parallel_size, pipeline_model_parallel_size)

    def new_group(ranks):
        group = dist.new_group(ranks, timeout=timeout)
        _CREATED_GROUPS.append(group)
        return group

    pg = ProcessGroups(
        rank=rank, world_size=world_size,
        tensor_model_parallel_size=tensor_model_parallel_size,
        pipeline_model_parallel_size=pipeline_model_parallel_size,
        data_parallel_size=dp,
        virtual_pipeline_model_parallel_size=virtual_pipeline_model_parallel_size,
        pipeline_model_parallel_split_rank=pipeline_model_parallel_split_rank,
        virtual_pipeline_model_parallel_rank=0 if virtual_pipeline_model_parallel_size is not None else None,
    )
    # new_group is collective over the whole world: every rank creates every group, in the same order.
    for ranks in data:
        group = new_group(ranks)
        if rank in ranks:
            pg.dp, pg.dp_ranks = group, ranks
    for ranks in model:
        group = new_group(ranks)
        if rank in ranks:
            pg.mp, pg.mp_ranks = group, ranks
    for ranks in tensor:
        group = new_group(ranks)
        if rank in ranks:
            pg.tp, pg.tp_ranks = group, ranks
    for ranks in pipeline:
        group = new_group(ranks)
        if rank in ranks:
            pg.pp, pg.pp_ranks = group, ranks
        embd_ranks, pos_ranks = _embedding_ranks(ranks, pipeline_model_parallel_split_rank)
        embd_group = new_group(embd_ranks)
        pos_group = new_group(pos_ranks)
        if rank in embd_ranks:
            pg.embd, pg.embd_ranks = embd_group, embd_ranks
        if rank in pos_ranks:
            pg.pos_embd, pg.pos_embd_ranks = pos_group, pos_ranks
    _PROCESS_GROUPS = pg
    return pg


def model_parallel_is_initialized() -> bool:
    return _PROCESS_GROUPS is not None


def get_process_groups() -> ProcessGroups:
    """The initialised groups; without torch.distributed, the trivial one-process layout."""
    if _PROCESS_GROUPS is not None:
        return _PROCESS_GROUPS
    if dist.is_initialized() and dist.get_world_size() > 1:
        raise RuntimeError("model parallel groups are not initialised; call initialize_model_parallel first")
    return ProcessGroups()


def destroy_model_parallel() -> None:
    """Destroy this layout's groups so another layout can be initialised in the same processes."""
    global _PROCESS_GROUPS
    _PROCESS_GROUPS = None
    while _CREATED_GROUPS:
        group = _CREATED_GROUPS.pop()
        # new_group hands non-members a placeholder that is not a real group.
        if isinstance(group, dist.ProcessGroup) and dist.is_initialized():
            dist.destroy_process_group(group)


# -- module-level getters, for the training layer only ----------------------------------
def get_tensor_model_parallel_world_size() -> int:
    return get_process_groups().tensor_model_parallel_size


def get_tensor_model_parallel_rank() -> int:
    return get_process_groups().tp_rank


def get_pipeline_model_parallel_world_size() -> int:
    return get_process_groups().pipeline_model_parallel_size


def get_pipeline_model_parallel_rank() -> int:
    return get_process_groups().pp_rank


def get_data_parallel_world_size() -> int:
    return get_process_groups().data_parallel_size


def get_data_parallel_rank() -> int:
    return get_process_groups().dp_rank


def get_virtual_pipeline_model_parallel_world_size() -> Optional[int]:
    return get_process_groups().virtual_pipeline_model_parallel_size


def get_virtual_pipeline_model_parallel_rank() -> Optional[int]:
    return get_process_groups().virtual_pipeline_model_parallel_rank


def set_virtual_pipeline_model_parallel_rank(rank: int) -> None:
    get_process_groups().virtual_pipeline_model_parallel_rank = rank


def is_pipeline_first_stage(ignore_virtual: bool = False) -> bool:
    return get_process_groups().is_pipeline_first_stage(ignore_virtual)


def is_pipeline_last_stage(ignore_virtual: bool = False) -> bool:
    return get_process_groups().is_pipeline_last_stage(ignore_virtual)


def get_tensor_model_parallel_group():
    return get_process_groups().tp


def get_pipeline_model_parallel_group():
    return get_process_groups().pp


def get_data_parallel_group():
    return get_process_groups().dp


def get_model_parallel_group():
    return get_process_groups().mp


def get_embedding_group():
    return get_process_groups().embd


def get_position_embedding_group():
    return get_process_groups().pos_embd
