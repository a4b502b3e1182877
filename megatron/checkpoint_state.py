"""What goes inside a checkpoint file: Megatron-LM's nested model state dict, the repairs older
checkpoints need (key names, QKV row order), and the random-number state of every generator.

Megatron-LM (2021) saved each model through ``state_dict_for_save_checkpoint``, which nests one
dict per sub-module boundary::

    model['language_model']['embedding']['word_embeddings']['weight']
    model['language_model']['encoder']['layers.0.self_attention.query_key_value.weight']
    model['lm_head']['dense.weight'], model['binary_head']['weight'], model['word_embeddings_for_head']['weight']
    model['query_model']['language_model'][...], model['query_model']['projection_enc']['weight']

Our models' flat ``state_dict()`` names are exactly those paths joined with dots, so nesting is
a walk over a small grammar of which names open a sub-dict, and flattening is joining keys.
Released checkpoints and the ``transformers`` Megatron converters index the nested form.
"""
import random
from typing import Dict, List, Optional

import numpy as np
import torch
from torch import nn

from megatron.core.tensor_parallel import get_rng_tracker

# Which names open a nested dict, per level. A name absent from its level's table ends the
# nesting: the rest of the key stays dotted, as Megatron-LM's leaf modules saved it.
_ROOT = "root"
_LANGUAGE_MODEL = "language_model"
_EMBEDDING = "embedding"
_LEAF = None
_NESTING = {
    _ROOT: {
        "language_model": _LANGUAGE_MODEL,
        "lm_head": _LEAF,
        "binary_head": _LEAF,
        "word_embeddings_for_head": _LEAF,
        # Fine-tuning heads (tasks/): sentence-pair classification, multiple choice.
        "classification_head": _LEAF,
        "multichoice_head": _LEAF,
        # Biencoder towers: each holds its own language_model (+ projection_enc).
        "query_model": _ROOT,
        "context_model": _ROOT,
        "shared_model": _ROOT,
        "projection_enc": _LEAF,
    },
    _LANGUAGE_MODEL: {
        "embedding": _EMBEDDING,
        "encoder": _LEAF,
        "transformer": _LEAF,  # the pre-2021 name of the encoder
        "decoder": _LEAF,
        "pooler": _LEAF,
    },
    _EMBEDDING: {
        "word_embeddings": _LEAF,
        "position_embeddings": _LEAF,
        "tokentype_embeddings": _LEAF,
    },
}


def nest_state_dict(flat: Dict[str, torch.Tensor]) -> dict:
    """A flat ``state_dict()`` in Megatron-LM's nested checkpoint form."""
    nested: dict = {}
    for key, value in flat.items():
        parts = key.split(".")
        node, level = nested, _ROOT
        while level is not _LEAF and len(parts) > 1 and parts[0] in _NESTING[level]:
            name = parts.pop(0)
            level = _NESTING[level][name]
            node = node.setdefault(name, {})
        node[".".join(parts)] = value
    return nested


def flatten_state_dict(state: dict, prefix: str = "") -> Dict[str, torch.Tensor]:
    """Nested (Megatron-LM) or already flat model state to flat dotted names."""
    flat = {}
    for key, value in state.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten_state_dict(value, name + "."))
        else:
            flat[name] = value
    return flat


def rename_legacy_keys(flat: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Pre-2021 names: ``transformer`` for the encoder stack, ``.attention.`` for self-attention."""
    renamed = {}
    for key, value in flat.items():
        new = key.replace("language_model.transformer.", "language_model.encoder.")
        new = new.replace(".attention.", ".self_attention.")
        renamed[new] = value
    return renamed


def _to_per_head_layout(tensor: torch.Tensor, num_splits: int, head_dim: int, splits_first: bool) -> torch.Tensor:
    """Rows ``[splits, np, hn]`` (splits_first) or ``[np, hn, splits]`` to ``[np, splits, hn]``."""
    rows, rest = tensor.shape[0], tuple(tensor.shape[1:])
    if rows % (num_splits * head_dim) != 0:
        raise ValueError(f"a fused projection with {rows} rows cannot hold {num_splits} x heads x {head_dim}")
    heads = rows // (num_splits * head_dim)
    if splits_first:
        reordered = tensor.view(num_splits, heads, head_dim, *rest).transpose(0, 1)
    else:
        reordered = tensor.view(heads, head_dim, num_splits, *rest).transpose(1, 2)
    return reordered.contiguous().view(rows, *rest)


def fix_query_key_value_ordering(flat: Dict[str, torch.Tensor], checkpoint_version: float,
                                 head_dim: int) -> Dict[str, torch.Tensor]:
    """Permute fused QKV (and cross-attention KV) rows of version < 2.0 checkpoints to ``[np, splits, hn]``.

    Version 0 (no version saved) stored ``[splits, np, hn]``, version 1.0 ``[np, hn, splits]``;
    both are per tensor-parallel shard, so the head count is this shard's.
    """
    if checkpoint_version >= 2.0:
        return flat
    fixed = {}
    for key, value in flat.items():
        if key.endswith((".query_key_value.weight", ".query_key_value.bias")):
            value = _to_per_head_layout(value, 3, head_dim, splits_first=checkpoint_version == 0)
        elif key.endswith((".key_value.weight", ".key_value.bias")):
            value = _to_per_head_layout(value, 2, head_dim, splits_first=checkpoint_version == 0)
        fixed[key] = value
    return fixed


def model_head_dim(model: nn.Module) -> Optional[int]:
    """``kv_channels`` of the first transformer config found in ``model`` (the QKV head size)."""
    for module in model.modules():
        config = getattr(module, "config", None)
        if config is not None and hasattr(config, "kv_channels"):
            return config.kv_channels
    return None


# -- random-number state ----------------------------------------------------------------------
RNG_KEYS = ("random_rng_state", "np_rng_state", "torch_rng_state", "cuda_rng_state", "rng_tracker_states")


def _cuda_in_use() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_initialized()


def capture_rng_state() -> dict:
    """Every generator this rank draws from, under Megatron-LM's key names."""
    return {
        "random_rng_state": random.getstate(),
        "np_rng_state": np.random.get_state(),
        "torch_rng_state": torch.get_rng_state(),
        "cuda_rng_state": torch.cuda.get_rng_state() if _cuda_in_use() else None,
        "rng_tracker_states": get_rng_tracker().get_states(),
    }


def restore_rng_state(state: dict, source: str) -> None:
    """Put back what ``capture_rng_state`` saved; ``source`` names the file in errors."""
    missing = [key for key in RNG_KEYS if key not in state and key != "cuda_rng_state"]
    if missing:
        raise ValueError(f"{source}: the RNG state lacks {missing}")
    tracker = get_rng_tracker()
    current = tracker.get_states()
    for name, saved in state["rng_tracker_states"].items():
        # A CUDA stream's state (16 bytes) cannot drive a CPU generator (5056 bytes) and vice versa.
        if name in current and current[name].numel() != saved.numel():
            raise ValueError(
                f"{source}: RNG tracker state {name!r} has {saved.numel()} bytes but this run's "
                f"{tracker.device_type} generator needs {current[name].numel()} (saved on another device type)")
    random.setstate(state["random_rng_state"])
    np.random.set_state(state["np_rng_state"])
    torch.set_rng_state(state["torch_rng_state"])
    cuda_state = state.get("cuda_rng_state")
    if cuda_state is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(cuda_state)
    tracker.set_states(state["rng_tracker_states"])


def select_rng_state(saved: dict, data_parallel_rank: int, data_parallel_size: int) -> Optional[dict]:
    """This rank's entry of a checkpoint's RNG state, in the current or the 2021 layout."""
    if "rng_state" in saved:
        states: List[dict] = saved["rng_state"]
        if not states:
            return None
        # One entry per data-parallel rank; under another DP size every rank takes rank 0's.
        return states[data_parallel_rank] if len(states) == data_parallel_size else states[0]
    if "random_rng_state" in saved:
        return {key: saved.get(key) for key in RNG_KEYS}
    return None
