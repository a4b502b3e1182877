"""Which transformer layers each pipeline stage (and virtual stage) holds, and the rules on that layout.

The one home of this arithmetic and of its checks: the model (``TransformerBlock``), the checkpoint
resharder, the argument validation and the dry run all call these functions, so they cannot
disagree about where a layer lives or which layouts are allowed.

* Without a split every stage holds ``num_layers / pp`` consecutive layers.
* With ``v`` virtual stages (the interleaved schedule, any ``pp >= 2``) each model chunk holds
  ``num_layers / (pp * v)`` layers and chunk ``c`` of stage ``p`` starts at
  ``c * num_layers / v + p * num_layers / (pp * v)``.
* An encoder-decoder split at ``split`` spreads the encoder evenly over stages ``[0, split)`` and
  the decoder over ``[split, pp)``; each stack has ``num_layers`` layers.

Errors name the settings by the caller's spelling (``names``: the command line passes its flags,
the library its field names).
"""
from typing import Dict, Optional, Tuple

ENCODER, DECODER = "encoder", "decoder"

FIELD_NAMES = {
    "num_layers": "num_layers",
    "pp": "pipeline_model_parallel_size",
    "virtual": "virtual_pipeline_model_parallel_size",
    "split": "pipeline_model_parallel_split_rank",
    "recompute_num_layers": "recompute_num_layers",
    "recompute_method": "recompute_method",
    "recompute_granularity": "recompute_granularity",
}

RECOMPUTE_GRANULARITIES = ("full", "selective")
RECOMPUTE_METHODS = ("uniform", "block")


def _names(names: Optional[Dict[str, str]]) -> Dict[str, str]:
    return {**FIELD_NAMES, **(names or {})}


def check_pipeline_layout(pp: int, virtual: Optional[int] = None, split: Optional[int] = None,
                          names: Optional[Dict[str, str]] = None) -> None:
    """Raise ValueError unless the pipeline size, virtual stages and split rank fit together."""
    n = _names(names)
    if pp < 1:
        raise ValueError(f"{n['pp']} must be >= 1, got {pp}")
    if split is not None and not 0 < split < pp:
        raise ValueError(f"{n['split']} {split} must lie in [1, {n['pp']} {pp} - 1]")
    if virtual is not None:
        if virtual < 1:
            raise ValueError(f"{n['virtual']} must be >= 1, got {virtual}")
        if pp < 2:
            raise ValueError(f"{n['virtual']} (the interleaved schedule) needs {n['pp']} >= 2, got {pp}")
        if split is not None:
            raise ValueError(f"{n['virtual']} cannot be combined with {n['split']} "
                             "(the interleaved schedule has no encoder-decoder split)")


def check_layer_layout(num_layers: int, pp: int, virtual: Optional[int] = None, split: Optional[int] = None,
                       names: Optional[Dict[str, str]] = None) -> None:
    """Raise ValueError unless ``num_layers`` spreads evenly over this pipeline layout."""
    n = _names(names)
    check_pipeline_layout(pp, virtual, split, names)
    if num_layers < 1:
        raise ValueError(f"{n['num_layers']} must be >= 1, got {num_layers}")
    if virtual is not None:
        if num_layers % (pp * virtual) != 0:
            raise ValueError(f"{n['num_layers']} {num_layers} is not divisible by {n['pp']} {pp} x "
                             f"{n['virtual']} {virtual}")
        return
    if split is not None:
        for stages, what in ((split, f"encoder stages ({n['split']})"),
                             (pp - split, f"decoder stages ({n['pp']} - {n['split']})")):
            if num_layers % stages != 0:
                raise ValueError(f"{n['num_layers']} {num_layers} is not divisible by the {stages} {what}")
        return
    if num_layers % pp != 0:
        raise ValueError(f"{n['num_layers']} {num_layers} is not divisible by {n['pp']} {pp}")


def stage_layer_range(num_layers: int, pp: int, pp_rank: int, virtual: Optional[int] = None,
                      virtual_rank: Optional[int] = None, split: Optional[int] = None,
                      stack: str = ENCODER) -> Tuple[int, int]:
    """(number of layers, global index of the first) of ``stack`` on stage ``pp_rank``, chunk ``virtual_rank``.

    Checks the layout first. With a split, a stage outside ``stack``'s side holds no layers of it."""
    check_layer_layout(num_layers, pp, virtual, split)
    if pp == 1:
        return num_layers, 0
    if split is not None:
        first, stages = (0, split) if stack == ENCODER else (split, pp - split)
        if not first <= pp_rank < first + stages:
            return 0, 0
        per_stage = num_layers // stages
        return per_stage, (pp_rank - first) * per_stage
    if virtual is not None:
        per_chunk = num_layers // (pp * virtual)
        return per_chunk, (virtual_rank or 0) * (num_layers // virtual) + pp_rank * per_chunk
    per_stage = num_layers // pp
    return per_stage, pp_rank * per_stage


def layer_position(index: int, num_layers: int, pp: int, virtual: Optional[int] = None,
                   split: Optional[int] = None, stack: str = ENCODER) -> Tuple[int, int, int]:
    """(pipeline stage, virtual chunk, local index) of global layer ``index``: the inverse of
    ``stage_layer_range``."""
    if not 0 <= index < num_layers:
        raise ValueError(f"layer {index} is outside the {num_layers} layers")
    first = split if split is not None and pp > 1 and stack == DECODER else 0
    count, _ = stage_layer_range(num_layers, pp, first, virtual, 0, split, stack)
    if split is not None and pp > 1:
        return first + index // count, 0, index % count
    chunks = virtual or 1
    chunk, within = divmod(index, num_layers // chunks)
    return within // count, chunk, within % count


def fewest_layers_per_model_chunk(num_layers: int, pp: int, virtual: Optional[int] = None,
                                  split: Optional[int] = None) -> int:
    """The layers of the smallest model chunk (with a split: of the encoder or the decoder side),
    which bounds block recomputation: every block must hold ``recompute_num_layers`` layers."""
    if split is not None and pp > 1:
        return min(stage_layer_range(num_layers, pp, 0, virtual, 0, split, ENCODER)[0],
                   stage_layer_range(num_layers, pp, pp - 1, virtual, 0, split, DECODER)[0])
    return stage_layer_range(num_layers, pp, 0, virtual, 0, split)[0]


def check_recompute(granularity: Optional[str], method: Optional[str], num_layers: Optional[int],
                    names: Optional[Dict[str, str]] = None) -> None:
    """Full recomputation needs a method (uniform or block) and at least one layer per group; a method
    or a layer count without it means nothing."""
    n = _names(names)
    if granularity is not None and granularity not in RECOMPUTE_GRANULARITIES:
        raise ValueError(f"{n['recompute_granularity']} {granularity!r} is not one of {RECOMPUTE_GRANULARITIES}")
    if granularity == "full":
        if method not in RECOMPUTE_METHODS:
            raise ValueError(f"{n['recompute_granularity']} full needs {n['recompute_method']} "
                             f"{'|'.join(RECOMPUTE_METHODS)}, got {method!r}")
        if num_layers is None or num_layers < 1:
            raise ValueError(f"{n['recompute_granularity']} full needs {n['recompute_num_layers']} >= 1, got {num_layers}")
        return
    if method is not None:
        raise ValueError(f"{n['recompute_method']} {method} needs {n['recompute_granularity']} full")
    if num_layers is not None:
        raise ValueError(f"{n['recompute_num_layers']} {num_layers} needs {n['recompute_granularity']} full")


def check_recompute_layers(method: Optional[str], recompute_num_layers: Optional[int], layers_in_chunk: int,
                           names: Optional[Dict[str, str]] = None) -> None:
    """Block recomputation of the first ``recompute_num_layers`` layers needs that many in each chunk."""
    n = _names(names)
    if method == "block" and recompute_num_layers is not None and recompute_num_layers > layers_in_chunk:
        raise ValueError(f"{n['recompute_num_layers']} {recompute_num_layers} exceeds the {layers_in_chunk} layers "
                         f"of a pipeline stage ({n['recompute_method']} block)")
