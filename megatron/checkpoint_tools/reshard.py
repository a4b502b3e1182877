"""Move a checkpoint's model weights between tensor- and pipeline-parallel layouts, offline.

Every shard file is read, merged into one full flat state dict with global layer numbers
(``merge_shards``), and split again for the target layout (``split_full``); no process group is
needed. Which dimension a tensor is split along follows from its name, the way Megatron-LM's
layers are built:

* vocabulary-parallel (rows): ``word_embeddings.weight``, ``word_embeddings_for_head.weight``,
  ``lm_head.bias``, the untied ``output_layer.weight`` - padded to a multiple of
  ``make_vocab_size_divisible_by x TP``;
* column-parallel (rows): ``query_key_value``, ``query``, ``key_value``, ``dense_h_to_4h`` (weights
  and biases). Fused QKV rows are ``[groups, heads_per_group + 2, head_dim]`` per shard (``[heads,
  3, head_dim]`` without grouped-query attention), so shards concatenate whole. With ``swiglu`` a
  ``dense_h_to_4h`` shard is ``[gate_r; up_r]`` (partition stride 2): the full tensor is all gate
  rows, then all up rows;
* row-parallel (columns): the attention output ``dense.weight`` and ``dense_4h_to_h.weight``;
* everything else (layer norms, row-parallel biases, position embeddings, heads) is replicated.

Pipeline stages number their layers from 0; the full dict numbers them globally. The embedding
lives on the first stage, the final layer norm, pooler and heads on the last, which also keeps a
copy of the word embeddings (``word_embeddings_for_head``) when there is more than one stage.

An encoder-decoder (T5) split at ``pipeline_model_parallel_split_rank`` puts the encoder layers on
stages ``[0, split)`` and the decoder layers on ``[split, pp)``, each side spread evenly. Both the
first encoder and the first decoder stage embed tokens, so each holds the word and position
embeddings; the encoder's final layer norm sits on stage ``split - 1``; the decoder's final layer
norm and the LM head bias on the last stage, which keeps ``word_embeddings_for_head`` unless it is
itself the first decoder stage.
"""
import argparse
import copy
import os
import re
import shutil
from typing import Dict, List, Optional, Tuple

import torch

from megatron.checkpoint_state import (
    fix_query_key_value_ordering,
    flatten_state_dict,
    nest_state_dict,
    rename_legacy_keys,
)
from megatron.checkpointing import (
    CHECKPOINT_VERSION,
    MODEL_FILENAME,
    CheckpointError,
    fsync_dir,
    get_checkpoint_tracker_filename,
    load_checkpoint_file,
    publish_iteration_dir,
    read_tracker,
    remove_stale_save_dirs,
    resolve_iteration_dir,
    saved_arg,
)
from megatron.core import layer_layout
from megatron.core.fileio import atomic_open, atomic_write_text

Shards = Dict[Tuple[int, int], Dict[str, torch.Tensor]]  # (tp_rank, pp_rank) -> flat state dict

_VOCAB_PARALLEL = ("word_embeddings.weight", "word_embeddings_for_head.weight", "lm_head.bias",
                   "language_model.output_layer.weight")
_OUTPUT_LAYER = "language_model.output_layer.weight"
_COLUMN_PARALLEL = re.compile(r"\.(query_key_value|query|key_value|dense_h_to_4h)\.(weight|bias)$")
_ROW_PARALLEL = re.compile(r"\.(self_attention|inter_attention|mlp)\.(dense|dense_4h_to_h)\.weight$")
_LAYER = re.compile(r"^(.*\.(?:encoder|decoder)\.layers)\.(\d+)\.(.*)$")
_EMBEDDING_HEAD_COPY = "word_embeddings_for_head.weight"
_WORD_EMBEDDINGS = "language_model.embedding.word_embeddings.weight"


def split_dim(name: str) -> Optional[int]:
    """The dimension ``name`` is split along across tensor-parallel ranks, or None when replicated."""
    if name.endswith(_VOCAB_PARALLEL) or _COLUMN_PARALLEL.search(name):
        return 0
    if _ROW_PARALLEL.search(name):
        return 1
    return None


def partition_stride(name: str, swiglu: bool) -> int:
    """How many blocks of ``name``'s full tensor are each split over TP ranks (2 for SwiGLU's gate and up)."""
    return 2 if swiglu and ".dense_h_to_4h." in name else 1


def merge_tp(parts: List[torch.Tensor], dim: int, stride: int = 1) -> torch.Tensor:
    """The full tensor from its TP shards (each shard holds its slice of every one of ``stride`` blocks)."""
    if stride == 1:
        return torch.cat(parts, dim=dim)
    blocks = [part.chunk(stride, dim=dim) for part in parts]
    return torch.cat([blocks[rank][block] for block in range(stride) for rank in range(len(parts))], dim=dim)


def take_tp(full: torch.Tensor, dim: int, tp: int, rank: int, stride: int = 1) -> torch.Tensor:
    """TP rank ``rank``'s shard of ``full`` (the inverse of ``merge_tp``)."""
    return torch.cat([block.chunk(tp, dim=dim)[rank] for block in full.chunk(stride, dim=dim)], dim=dim)


def _rank_dirname(tp_rank: int, pp_rank: int, pp_size: int) -> str:
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}" if pp_size > 1 else f"mp_rank_{tp_rank:02d}"


# -- reading ------------------------------------------------------------------------------------
_ITERATION_DIRNAME = re.compile(r"^iter_(\d+)$")


def select_iteration(path: str, iteration: Optional[int] = None) -> Tuple[str, int, bool]:
    """``(checkpoint directory, iteration, release)`` for a converter's ``--load PATH [--iteration N]``.

    ``PATH`` is a checkpoint directory (the tracker names the iteration unless ``--iteration`` does)
    or one of its ``iter_*``/``release`` directories.
    """
    path = os.path.normpath(path)
    name = os.path.basename(path)
    match = _ITERATION_DIRNAME.match(name)
    if (match or name == "release") and os.path.isdir(path):
        found = int(match.group(1)) if match else 0
        if iteration is not None and (name == "release" or iteration != found):
            raise CheckpointError(f"--iteration {iteration} disagrees with the iteration directory {path}")
        return os.path.dirname(path) or ".", found, name == "release"
    if iteration is None:
        tracker = get_checkpoint_tracker_filename(path)
        if not os.path.isfile(tracker) and os.path.isdir(path):
            held = available_iterations(path)
            if held:
                raise CheckpointError(f"no checkpoint tracker file {tracker}; pick one of the iterations "
                                      f"{held[:8]} with --iteration N (or load an iter_* directory)")
        iteration, release = read_tracker(path)
        return path, iteration, release
    if iteration < 0:
        raise CheckpointError(f"--iteration {iteration} must be >= 0")
    wanted = os.path.join(path, f"iter_{iteration:07d}")
    if not os.path.isdir(wanted):
        held = available_iterations(path) if os.path.isdir(path) else []
        raise CheckpointError(f"--iteration {iteration}: {wanted} does not exist; {path} holds iterations {held[:8]}")
    return path, iteration, False


def available_iterations(load_dir: str) -> List[int]:
    """The iterations saved (complete) under ``load_dir``, in increasing order."""
    found = []
    for name in os.listdir(load_dir):
        match = _ITERATION_DIRNAME.match(name)
        if match and os.path.isdir(os.path.join(load_dir, name)):
            found.append(int(match.group(1)))
    return sorted(found)


def model_family(keys) -> Tuple[str, str]:
    """What a (flattened) checkpoint holds, from its tensor names: ``(GPT|BERT|T5|biencoder, evidence)``."""
    keys = sorted(keys)
    for family, telling in (("biencoder", lambda k: k.startswith(("query_model.", "context_model."))),
                            ("T5", lambda k: ".decoder." in k),
                            ("BERT", lambda k: any(part in k for part in (
                                "lm_head.dense.", "binary_head.", "classification_head.", "multichoice_head.",
                                "pooler.", "tokentype_embeddings.")))):
        evidence = next((k for k in keys if telling(k)), None)
        if evidence is not None:
            return family, f"it has {evidence}"
    return "GPT", "no BERT head, pooler or token-type embedding and no decoder"


def check_model_type(source: "SourceCheckpoint", model_type: Optional[str]) -> None:
    """Refuse ``--model-type`` when the checkpoint holds another kind of model."""
    if model_type is None:
        return
    family, evidence = model_family(k for chunks in source.shards.values() for chunk in chunks for k in chunk)
    accepted = {"BERT": ("BERT", "biencoder"), "RACE": ("BERT",), "MNLI": ("BERT",), "QQP": ("BERT",)}
    if family not in accepted.get(model_type, (model_type,)):
        raise CheckpointError(f"--model-type {model_type} but {source.iteration_dir} holds a {family} model "
                              f"({evidence})")


class SourceCheckpoint:
    """All shard files of one checkpoint iteration, flattened (legacy names and QKV orders fixed).

    ``load_dir`` may also be an ``iter_*`` directory; ``iteration`` picks one other than the tracker's.
    """

    def __init__(self, load_dir: str, iteration: Optional[int] = None):
        self.load_dir, self.iteration, self.release = select_iteration(load_dir, iteration)
        self.iteration_dir = resolve_iteration_dir(self.load_dir, self.iteration, self.release)
        first = self._file(0, 0)
        state = load_checkpoint_file(first)
        self.args = state.get("args")
        if self.args is None:
            raise CheckpointError(f"{first} holds no arguments; the layout and model shape cannot be known")
        if isinstance(self.args, dict):
            self.args = argparse.Namespace(**self.args)
        self.tp = saved_arg(self.args, "tensor_model_parallel_size") or 1
        self.pp = saved_arg(self.args, "pipeline_model_parallel_size") or 1
        self.checkpoint_version = float(state.get("checkpoint_version", 0))
        self.shards: Dict[Tuple[int, int], List[Dict[str, torch.Tensor]]] = {}
        for pp_rank in range(self.pp):
            for tp_rank in range(self.tp):
                path = self._file(tp_rank, pp_rank)
                loaded = state if (tp_rank, pp_rank) == (0, 0) else load_checkpoint_file(path)
                self.shards[(tp_rank, pp_rank)] = self._chunks(loaded, path)

    def _file(self, tp_rank: int, pp_rank: int) -> str:
        pp = getattr(self, "pp", None)
        candidates = [_rank_dirname(tp_rank, pp_rank, pp)] if pp is not None else [
            _rank_dirname(tp_rank, pp_rank, 2), _rank_dirname(tp_rank, pp_rank, 1)]
        for name in candidates:
            path = os.path.join(self.iteration_dir, name, MODEL_FILENAME)
            if os.path.isfile(path):
                return path
        present = sorted(n for n in os.listdir(self.iteration_dir) if n.startswith("mp_rank_"))
        raise CheckpointError(f"checkpoint file {os.path.join(self.iteration_dir, candidates[0], MODEL_FILENAME)} "
                              f"does not exist; {self.iteration_dir} holds {present[:8]}")

    def _chunks(self, state: dict, path: str) -> List[Dict[str, torch.Tensor]]:
        keys = ["model"] if "model" in state else sorted(
            (k for k in state if re.fullmatch(r"model\d+", k)), key=lambda k: int(k[5:]))
        if not keys:
            raise CheckpointError(f"{path} holds no model weights ('model' or 'model0'...)")
        chunks = []
        for key in keys:
            flat = rename_legacy_keys(flatten_state_dict(state[key]))
            if self.checkpoint_version < 2.0:
                head_dim = (saved_arg(self.args, "kv_channels")
                            or self.args.hidden_size // self.args.num_attention_heads)
                flat = fix_query_key_value_ordering(flat, self.checkpoint_version, head_dim)
            chunks.append(flat)
        return chunks


def _stack(name: str) -> str:
    return layer_layout.DECODER if ".decoder." in name else layer_layout.ENCODER


def _layout_error(where: str, error: ValueError) -> CheckpointError:
    return CheckpointError(f"{where}: {error}")


def _is_encoder_decoder(keys) -> bool:
    return any(".decoder." in key for key in keys)


def saved_split_rank(args, pp: int, encoder_decoder: bool, where: str) -> Optional[int]:
    """The encoder-decoder split of a saved layout (None when there is nothing to split)."""
    if not encoder_decoder or pp == 1:
        return None
    split = saved_arg(args, "pipeline_model_parallel_split_rank")
    if split is None or not 0 < split < pp:
        raise CheckpointError(f"{where}: an encoder-decoder (T5) checkpoint saved with pipeline_model_parallel_size "
                              f"{pp} needs a saved pipeline_model_parallel_split_rank in [1, {pp - 1}], got {split}")
    return split


def _stage_layer_offset(name: str, num_layers: int, pp: int, pp_rank: int, num_chunks: int, chunk: int,
                        split: Optional[int]) -> int:
    """The global index of local layer 0 of ``name``'s stack on stage ``pp_rank``, model chunk ``chunk``."""
    virtual = num_chunks if num_chunks > 1 else None
    return layer_layout.stage_layer_range(num_layers, pp, pp_rank, virtual, chunk, split, _stack(name))[1]


def merge_shards(source: SourceCheckpoint) -> Dict[str, torch.Tensor]:
    """One full flat state dict: tensor-parallel shards concatenated, layers numbered globally."""
    args = source.args
    swiglu = bool(saved_arg(args, "swiglu"))
    encoder_decoder = any(_is_encoder_decoder(source.shards[(0, p)][0].keys()) for p in range(source.pp))
    split = saved_split_rank(args, source.pp, encoder_decoder, source.load_dir)
    full: Dict[str, torch.Tensor] = {}
    for pp_rank in range(source.pp):
        per_tp = [source.shards[(tp_rank, pp_rank)] for tp_rank in range(source.tp)]
        for chunk_index in range(len(per_tp[0])):
            chunk_shards = [chunks[chunk_index] for chunks in per_tp]
            for name, tensor in chunk_shards[0].items():
                if not isinstance(tensor, torch.Tensor):
                    continue
                if name == _EMBEDDING_HEAD_COPY:
                    continue  # the last stage's copy of the (tied) word embeddings; the first stage's is kept
                layer = _LAYER.match(name)
                if layer is not None:
                    try:
                        offset_here = _stage_layer_offset(name, args.num_layers, source.pp, pp_rank,
                                                          len(per_tp[0]), chunk_index, split)
                    except ValueError as error:
                        raise _layout_error(source.load_dir, error) from None
                    name_out = f"{layer.group(1)}.{int(layer.group(2)) + offset_here}.{layer.group(3)}"
                else:
                    name_out = name
                if name_out in full:
                    continue  # the first decoder stage's copy of the embeddings equals the first stage's
                dim = split_dim(name)
                if dim is None or source.tp == 1:
                    merged = tensor
                else:
                    try:
                        merged = merge_tp([shard[name] for shard in chunk_shards], dim,
                                          partition_stride(name, swiglu))
                    except KeyError:
                        raise CheckpointError(f"{source.load_dir}: {name} is missing from a tensor-parallel "
                                              f"shard of pipeline stage {pp_rank}") from None
                full[name_out] = merged.clone()
    return full


# -- vocabulary padding -------------------------------------------------------------------------
def target_padded_vocab_size(args, target_tp: int, true_vocab_size: Optional[int]) -> int:
    """The padded vocabulary a run at ``target_tp`` computes, from the true vocabulary size.

    The true size comes from ``true_vocab_size``, else the saved ``--vocab-size``, else the saved
    tokenizer files; a padded size already a multiple of the target's is kept when none is known.
    """
    from megatron.tokenizer.build import build_tokenizer, vocab_size_with_padding

    divisible_by = saved_arg(args, "make_vocab_size_divisible_by") or 128
    padding_args = argparse.Namespace(make_vocab_size_divisible_by=divisible_by, tensor_model_parallel_size=target_tp)
    if true_vocab_size is None and saved_arg(args, "vocab_size"):
        true_vocab_size = args.vocab_size + (saved_arg(args, "vocab_extra_ids") or 0)
    if true_vocab_size is None and saved_arg(args, "tokenizer_type"):
        tokenizer_args = copy.copy(args)
        tokenizer_args.rank = 1  # silent
        try:
            true_vocab_size = build_tokenizer(tokenizer_args).vocab_size
        except (OSError, ValueError):
            true_vocab_size = None
    if true_vocab_size is not None:
        return vocab_size_with_padding(true_vocab_size, padding_args)
    padded = args.padded_vocab_size
    if padded % (divisible_by * target_tp) != 0:
        raise CheckpointError(
            f"the saved padded vocabulary {padded} is not a multiple of make_vocab_size_divisible_by {divisible_by} "
            f"x target TP {target_tp} and the tokenizer files are not readable: pass --true-vocab-size")
    return padded


def _repad(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Cut or zero-pad the vocabulary rows; the padding rows are never a real token's."""
    if tensor.shape[0] >= rows:
        return tensor[:rows].clone()
    pad = torch.zeros((rows - tensor.shape[0], *tensor.shape[1:]), dtype=tensor.dtype)
    return torch.cat([tensor, pad], dim=0)


# -- splitting ----------------------------------------------------------------------------------
def _stage_of(name: str, num_layers: int, pp: int) -> Tuple[int, str]:
    """(pipeline stage, local name) for a full-dict parameter name."""
    layer = _LAYER.match(name)
    if layer is not None:
        stage, _, local = layer_layout.layer_position(int(layer.group(2)), num_layers, pp)
        return stage, f"{layer.group(1)}.{local}.{layer.group(3)}"
    if name.startswith("language_model.embedding."):
        return 0, name
    return pp - 1, name  # final layer norm, pooler and heads


def _encoder_decoder_stages(name: str, num_layers: int, pp: int, split: Optional[int]) -> List[Tuple[int, str]]:
    """Every (pipeline stage, local name) that holds ``name`` of a T5 model split at ``split``."""
    if pp == 1:
        return [(0, name)]
    layer = _LAYER.match(name)
    if layer is not None:
        stage, _, local = layer_layout.layer_position(int(layer.group(2)), num_layers, pp, None, split, _stack(name))
        return [(stage, f"{layer.group(1)}.{local}.{layer.group(3)}")]
    if name.startswith("language_model.embedding."):
        return [(0, name), (split, name)]  # both sides embed their own tokens
    if name.startswith("language_model.encoder."):
        return [(split - 1, name)]  # the encoder's final layer norm
    return [(pp - 1, name)]  # the decoder's final layer norm, LM head


def check_split_rank(full, num_layers: int, pp: int, split_rank: Optional[int]) -> Optional[int]:
    """The split rank a target layout uses: None without an encoder-decoder split, else a valid one."""
    if not _is_encoder_decoder(full) or pp == 1:
        if split_rank is not None and pp == 1:
            raise CheckpointError(f"a pipeline split rank ({split_rank}) needs --target-pipeline-parallel-size > 1")
        if split_rank is not None:
            raise CheckpointError(f"a pipeline split rank ({split_rank}) applies to encoder-decoder (T5) "
                                  f"checkpoints only")
        return None
    if split_rank is None:
        split_rank = pp // 2
    try:
        layer_layout.check_layer_layout(num_layers, pp, None, split_rank, _TARGET_NAMES)
    except ValueError as error:
        raise CheckpointError(str(error)) from None
    return split_rank


_TARGET_NAMES = {"pp": "target pipeline size", "split": "pipeline split rank"}


def split_full(full: Dict[str, torch.Tensor], num_layers: int, tp: int, pp: int,
               padded_vocab_size: int, split_rank: Optional[int] = None, swiglu: bool = False) -> Shards:
    """The flat state dict of every (tp_rank, pp_rank) of the target layout.

    ``split_rank`` places an encoder-decoder model (default: half the stages for each side);
    ``swiglu`` splits the gate and up halves of ``dense_h_to_4h`` separately.
    """
    encoder_decoder = _is_encoder_decoder(full)
    split = check_split_rank(full, num_layers, pp, split_rank)
    if not encoder_decoder:
        try:
            layer_layout.check_layer_layout(num_layers, pp, names={"pp": "--target-pipeline-parallel-size"})
        except ValueError as error:
            raise CheckpointError(str(error)) from None
    shards: Shards = {(t, p): {} for t in range(tp) for p in range(pp)}
    items = dict(full)
    # The last stage keeps a copy of the tied word embeddings unless it embeds tokens itself (or
    # the model has an untied output layer of its own).
    if pp > 1 and _WORD_EMBEDDINGS in items and split != pp - 1 and _OUTPUT_LAYER not in items:
        items["\0head"] = items[_WORD_EMBEDDINGS]  # placed below
    for name, tensor in items.items():
        if name == "\0head":
            placements = [(pp - 1, _EMBEDDING_HEAD_COPY)]
        elif encoder_decoder:
            placements = _encoder_decoder_stages(name, num_layers, pp, split)
        else:
            placements = [_stage_of(name, num_layers, pp)]
        for stage, local in placements:
            if local.endswith(_VOCAB_PARALLEL):
                tensor = _repad(tensor, padded_vocab_size)
            dim = split_dim(local)
            stride = partition_stride(local, swiglu)
            if dim is not None and tensor.shape[dim] % (tp * stride) != 0:
                raise CheckpointError(f"{local} has {tensor.shape[dim]} entries along dimension {dim}, not "
                                      f"divisible by --target-tensor-parallel-size {tp}"
                                      + (f" x {stride} (SwiGLU gate and up)" if stride > 1 else ""))
            for tp_rank in range(tp):
                part = tensor if dim is None else take_tp(tensor, dim, tp, tp_rank, stride)
                shards[(tp_rank, stage)][local] = part.clone()
    return shards


# -- writing ------------------------------------------------------------------------------------
def target_args(args, tp: int, pp: int, padded_vocab_size: int, split_rank: Optional[int] = None):
    """The saved arguments, describing the target layout (checked by the loader)."""
    new = copy.copy(args)
    new.tensor_model_parallel_size = tp
    new.pipeline_model_parallel_size = pp
    new.pipeline_model_parallel_split_rank = split_rank
    new.padded_vocab_size = padded_vocab_size
    for name in ("virtual_pipeline_model_parallel_size", "num_layers_per_virtual_pipeline_stage"):
        if hasattr(new, name):
            setattr(new, name, None)
    if hasattr(new, "model_parallel_size"):
        new.model_parallel_size = tp
    return new


def write_checkpoint(save_dir: str, shards: Shards, args, iteration: int, release: bool) -> str:
    """Write the shards in Megatron's layout: built as ``.partial``, renamed whole, tracker last.

    Only model weights and arguments are written (no optimizer or RNG state: those belong to one
    layout), so a resumed run loads it with ``--no-load-optim --no-load-rng`` or ``--finetune``.
    """
    pp = max(p for _, p in shards) + 1
    os.makedirs(save_dir, exist_ok=True)
    remove_stale_save_dirs(save_dir)
    final_dir = os.path.join(save_dir, "release" if release else f"iter_{iteration:07d}")
    partial_dir = final_dir + ".partial"
    if os.path.exists(partial_dir):
        shutil.rmtree(partial_dir)
    os.makedirs(partial_dir)
    for (tp_rank, pp_rank), flat in sorted(shards.items()):
        rank_dir = os.path.join(partial_dir, _rank_dirname(tp_rank, pp_rank, pp))
        os.makedirs(rank_dir, exist_ok=True)
        state = {"args": args, "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration,
                 "model": nest_state_dict(flat)}
        with atomic_open(os.path.join(rank_dir, MODEL_FILENAME), "wb") as f:
            torch.save(state, f)
        fsync_dir(rank_dir)
    fsync_dir(partial_dir)
    publish_iteration_dir(partial_dir, final_dir)
    atomic_write_text(get_checkpoint_tracker_filename(save_dir), "release\n" if release else f"{iteration}\n")
    fsync_dir(save_dir)
    return final_dir


def check_target_tp(args, target_tp: int, flag: str) -> None:
    """Attention heads and key/value groups must split evenly over the target's TP ranks."""
    heads = args.num_attention_heads
    groups = saved_arg(args, "num_query_groups") or heads
    for count, what in ((heads, "num_attention_heads"), (groups, "num_query_groups")):
        if count % target_tp != 0:
            raise CheckpointError(f"{flag} {target_tp} does not divide {what} {count}")


def reshard_checkpoint(load_dir: str, save_dir: str, target_tp: int, target_pp: int,
                       true_vocab_size: Optional[int] = None, target_split_rank: Optional[int] = None,
                       iteration: Optional[int] = None, model_type: Optional[str] = None) -> str:
    """Read ``load_dir`` at any layout and write it to ``save_dir`` at ``target_tp x target_pp``.

    An encoder-decoder (T5) target with more than one stage is split at ``target_split_rank``;
    by default at the source's split when the pipeline size is unchanged, else at half the stages.
    ``iteration`` picks a saved iteration other than the tracker's (``load_dir`` may also be an
    ``iter_*`` directory); ``model_type`` (GPT, BERT, T5), when given, must be what the checkpoint holds.
    """
    if target_tp < 1 or target_pp < 1:
        raise CheckpointError(f"target sizes must be at least 1 (got TP {target_tp}, PP {target_pp})")
    if os.path.abspath(load_dir) == os.path.abspath(save_dir):
        raise CheckpointError(f"--save-dir {save_dir} must differ from --load-dir")
    source = SourceCheckpoint(load_dir, iteration)
    check_model_type(source, model_type)
    full = merge_shards(source)
    check_target_tp(source.args, target_tp, "--target-tensor-parallel-size")
    padded = target_padded_vocab_size(source.args, target_tp, true_vocab_size)
    if target_split_rank is None and _is_encoder_decoder(full) and target_pp == source.pp > 1:
        target_split_rank = saved_arg(source.args, "pipeline_model_parallel_split_rank")
    split = check_split_rank(full, source.args.num_layers, target_pp, target_split_rank)
    shards = split_full(full, source.args.num_layers, target_tp, target_pp, padded, split,
                        swiglu=bool(saved_arg(source.args, "swiglu")))
    args = target_args(source.args, target_tp, target_pp, padded, split)
    return write_checkpoint(save_dir, shards, args, source.iteration, source.release)
