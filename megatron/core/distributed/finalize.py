"""The gradient finalisation the schedules call after the last backward of a global batch."""
from typing import List, Optional

import torch

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.pipeline_parallel import finalize as pipeline_finalize


def finalize_model_grads(model_chunks: List[torch.nn.Module], pg: Optional[ProcessGroups] = None) -> None:
    """Finish the data-parallel reduction of every chunk, then the model-parallel reductions.

    The data-parallel reduction comes first so that the embedding and sequence-parallel
    all-reduces act on (this rank's shard of) already-averaged gradients; with the distributed
    optimizer the shared embeddings sit in buckets that every stage shards identically.
    """
    pg = pg if pg is not None else get_process_groups()
    for chunk in model_chunks:
        finish = getattr(chunk, "finish_grad_sync", None)
        if finish is not None:
            finish()
    pipeline_finalize.reduce_model_parallel_grads(model_chunks, pg)
