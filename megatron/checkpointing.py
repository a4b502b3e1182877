"""Save and load training state in Megatron-LM's checkpoint layout, atomically.

Layout (Megatron-LM's ``torch`` format)::

    {save}/latest_checkpointed_iteration.txt            "100", or "release"
    {save}/iter_0000100/mp_rank_{TT}[_{PPP}]/model_optim_rng.pt
    {save}/release/mp_rank_00/model_optim_rng.pt        released weights

``model_optim_rng.pt`` holds ``args`` (with the consumed train/valid samples), ``checkpoint_version``
(3.0), ``iteration``, ``model`` (``model0``, ``model1``... per virtual stage) in Megatron-LM's nested
form (``checkpoint_state``), ``optimizer``, ``opt_param_scheduler`` and ``rng_state`` (one dict per
data-parallel rank). Data-parallel rank 0 of each (tensor, pipeline) rank writes it. The
distributed optimizer's ``state_dict()`` is collective and gathers the whole unsharded state to
data-parallel rank 0 only (bucket by bucket), so it is saved like any optimizer state and every
rank loads its slices from the same file (a resume may even change the data-parallel size).

A save becomes visible all at once, so a process killed at any moment leaves the previous
checkpoint loadable and "latest": every file is written under a temporary name, fsynced and
renamed; the whole iteration directory is built as ``iter_N.partial`` and renamed by global rank 0
after a barrier; the tracker is replaced last. Re-saving an existing iteration moves the old
directory to ``iter_N.replaced`` for the instant between two renames, and the loader falls back to
it if a kill landed in that instant. Ranks must share one file system, as with Megatron-LM.
"""
import argparse
import contextlib
import errno
import os
import pickle
import re
import shutil
import sys
from typing import List, Optional, Tuple

import torch
import torch.distributed as dist
from torch import nn

from megatron.rank_logging import log_rank_0
from megatron.checkpoint_state import (
    capture_rng_state,
    fix_query_key_value_ordering,
    flatten_state_dict,
    model_head_dim,
    nest_state_dict,
    rename_legacy_keys,
    restore_rng_state,
    select_rng_state,
)
from megatron.core import parallel_state
from megatron.core.fileio import atomic_open, atomic_write_text, fsync_dir

CHECKPOINT_VERSION = 3.0
TRACKER_FILENAME = "latest_checkpointed_iteration.txt"
MODEL_FILENAME = "model_optim_rng.pt"
PARTIAL_SUFFIX = ".partial"
REPLACED_SUFFIX = ".replaced"
_ITERATION_DIR = re.compile(r"^iter_\d{7,}$")


class CheckpointError(RuntimeError):
    """A checkpoint that cannot be saved or loaded as asked; the message names the file and the fix."""


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def _global_rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


# -- names --------------------------------------------------------------------------------------
def get_checkpoint_tracker_filename(checkpoints_path: str) -> str:
    return os.path.join(checkpoints_path, TRACKER_FILENAME)


def _iteration_dirname(iteration: int, release: bool) -> str:
    return "release" if release else f"iter_{iteration:07d}"


def _rank_dirname(tp_rank: int, pp_rank: int, pipeline_parallel: bool) -> str:
    return f"mp_rank_{tp_rank:02d}_{pp_rank:03d}" if pipeline_parallel else f"mp_rank_{tp_rank:02d}"


def get_checkpoint_name(checkpoints_path: str, iteration: int, release: bool = False, tp_rank: Optional[int] = None,
                        pp_rank: Optional[int] = None, pipeline_parallel: Optional[bool] = None) -> str:
    """``{path}/iter_{N:07d}/mp_rank_{TT}[_{PPP}]/model_optim_rng.pt``; ranks default to this process's."""
    pg = parallel_state.get_process_groups()
    tp_rank = pg.tp_rank if tp_rank is None else tp_rank
    pp_rank = pg.pp_rank if pp_rank is None else pp_rank
    if pipeline_parallel is None:
        pipeline_parallel = pg.pipeline_model_parallel_size > 1
    return os.path.join(checkpoints_path, _iteration_dirname(iteration, release),
                        _rank_dirname(tp_rank, pp_rank, pipeline_parallel), MODEL_FILENAME)


def read_tracker(checkpoints_path: str) -> Tuple[int, bool]:
    """``(iteration, release)`` from the tracker file; a missing or unreadable one is an error naming it."""
    filename = get_checkpoint_tracker_filename(checkpoints_path)
    if not os.path.isfile(filename):
        raise FileNotFoundError(f"no checkpoint tracker file {filename}")
    with open(filename, encoding="utf-8", errors="replace") as f:
        text = f.read().strip()
    if text == "release":
        return 0, True
    try:
        iteration = int(text)
    except ValueError:
        raise CheckpointError(
            f"checkpoint tracker {filename} is corrupt: expected an iteration number or 'release', "
            f"found {text[:40]!r}") from None
    if iteration < 0:
        raise CheckpointError(f"checkpoint tracker {filename} is corrupt: iteration {iteration} is negative")
    return iteration, False


# -- models -------------------------------------------------------------------------------------
_WRAPPER_NAMES = ("DistributedDataParallel", "Float16Module")


def unwrap_model(model: nn.Module) -> nn.Module:
    """The core model inside data-parallel / mixed-precision wrappers (ours or torch's)."""
    while type(model).__name__ in _WRAPPER_NAMES and isinstance(getattr(model, "module", None), nn.Module):
        model = model.module
    return model


def _as_list(model_chunks) -> List[nn.Module]:
    return list(model_chunks) if isinstance(model_chunks, (list, tuple)) else [model_chunks]


def _model_keys(num_chunks: int) -> List[str]:
    return ["model"] if num_chunks == 1 else [f"model{i}" for i in range(num_chunks)]


# -- writing ------------------------------------------------------------------------------------
def _atomic_torch_save(obj, path: str) -> None:
    with atomic_open(path, "wb") as f:
        torch.save(obj, f)
    fsync_dir(os.path.dirname(path))


def _picklable_args(args: argparse.Namespace) -> argparse.Namespace:
    """``args`` without values that cannot be pickled (a failed pickle would abort the save midway)."""
    kept, dropped = argparse.Namespace(), []
    for name, value in vars(args).items():
        try:
            pickle.dumps(value)
        except Exception:  # noqa: BLE001 - any unpicklable value is simply left out
            dropped.append(name)
            continue
        setattr(kept, name, value)
    if dropped:
        log_rank_0(f"WARNING: arguments {sorted(dropped)} cannot be pickled and are not saved in the checkpoint")
    return kept


def _gather_over_data_parallel(obj, pg) -> list:
    if not dist.is_initialized() or pg.data_parallel_size == 1:
        return [obj]
    gathered = [None] * pg.data_parallel_size
    dist.all_gather_object(gathered, obj, group=pg.dp)
    return gathered


def remove_stale_save_dirs(save_dir: str) -> None:
    """Leftovers of killed saves: never valid, possibly large."""
    for name in os.listdir(save_dir):
        path = os.path.join(save_dir, name)
        if name.startswith(f".{TRACKER_FILENAME}.tmp-"):
            os.unlink(path)  # atomic_write_text's temporary tracker
        elif name.endswith(PARTIAL_SUFFIX) and _ITERATION_DIR.match(name[:-len(PARTIAL_SUFFIX)]):
            shutil.rmtree(path, ignore_errors=True)
        elif name.endswith(REPLACED_SUFFIX) and os.path.isdir(path[:-len(REPLACED_SUFFIX)]):
            # Only once the directory it stood in for is back; otherwise it is the loadable copy.
            shutil.rmtree(path, ignore_errors=True)


def publish_iteration_dir(partial_dir: str, final_dir: str) -> None:
    """Rename the finished iteration directory into place (replacing an older save of it)."""
    parent = os.path.dirname(final_dir)
    if os.path.exists(final_dir):
        replaced = final_dir + REPLACED_SUFFIX
        shutil.rmtree(replaced, ignore_errors=True)
        os.rename(final_dir, replaced)
        os.rename(partial_dir, final_dir)
        fsync_dir(parent)
        shutil.rmtree(replaced, ignore_errors=True)
    else:
        os.rename(partial_dir, final_dir)
        fsync_dir(parent)


def _previous_checkpoint(save_dir: str) -> str:
    try:
        iteration, release = read_tracker(save_dir)
    except (OSError, CheckpointError):
        return "no earlier checkpoint is there"
    return "the previous checkpoint (" + ("release" if release else f"iteration {iteration}") + ") is intact"


@contextlib.contextmanager
def _save_failure_explained(save_dir: str):
    """A failed or interrupted write names the directory, the cause and what is still safe, rather
    than torch's zip writer's "unexpected pos 4637760 vs 4637648" (its words for a full disk)."""
    try:
        yield
    except KeyboardInterrupt:
        print(f"checkpoint save to {save_dir} interrupted; {_previous_checkpoint(save_dir)}", file=sys.stderr,
              flush=True)
        raise
    except (OSError, RuntimeError) as error:
        if isinstance(error, OSError) and error.strerror:
            reason = error.strerror.lower()
        elif shutil.disk_usage(save_dir).free < (1 << 20):
            reason = os.strerror(errno.ENOSPC).lower()
        else:
            reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise CheckpointError(f"checkpoint save to {save_dir} failed: {reason}; "
                              f"{_previous_checkpoint(save_dir)}") from error


def save_checkpoint(iteration: int, model_chunks, optimizer, opt_param_scheduler, args, pg=None) -> None:
    """Save model, optimizer, scheduler and RNG state for ``iteration`` under ``args.save``; every rank calls it."""
    if not getattr(args, "save", None):
        raise CheckpointError("save_checkpoint needs a directory: pass --save")
    pg = pg if pg is not None else parallel_state.get_process_groups()
    chunks = _as_list(model_chunks)
    save_dir = args.save
    log_rank_0(f"saving checkpoint at iteration {iteration:7d} to {save_dir}")

    # Collectives first, on every rank, before any rank starts writing.
    rng_states = None if getattr(args, "no_save_rng", False) else _gather_over_data_parallel(capture_rng_state(), pg)
    save_optim = optimizer is not None and not getattr(args, "no_save_optim", False)
    # Called on every rank: the distributed optimizer gathers its shards to data-parallel rank 0 in state_dict().
    optimizer_state = optimizer.state_dict() if save_optim else None

    final_dir = os.path.join(save_dir, _iteration_dirname(iteration, False))
    partial_dir = final_dir + PARTIAL_SUFFIX
    if _global_rank() == 0:
        os.makedirs(save_dir, exist_ok=True)
        remove_stale_save_dirs(save_dir)
        os.makedirs(partial_dir)
    _barrier()

    rank_dir = os.path.join(partial_dir, _rank_dirname(pg.tp_rank, pg.pp_rank, pg.pipeline_model_parallel_size > 1))
    model_file = os.path.join(rank_dir, MODEL_FILENAME)
    if pg.dp_rank == 0:
        state = {"args": _picklable_args(args), "checkpoint_version": CHECKPOINT_VERSION, "iteration": iteration}
        for key, chunk in zip(_model_keys(len(chunks)), chunks):
            state[key] = nest_state_dict(unwrap_model(chunk).state_dict())
        if save_optim:
            state["optimizer"] = optimizer_state
            if opt_param_scheduler is not None:
                state["opt_param_scheduler"] = opt_param_scheduler.state_dict()
        if rng_states is not None:
            state["rng_state"] = rng_states
        with _save_failure_explained(save_dir):
            os.makedirs(rank_dir, exist_ok=True)
            _atomic_torch_save(state, model_file)
    _barrier()

    if _global_rank() == 0:
        for name in os.listdir(partial_dir):
            fsync_dir(os.path.join(partial_dir, name))
        fsync_dir(partial_dir)
        publish_iteration_dir(partial_dir, final_dir)
        atomic_write_text(get_checkpoint_tracker_filename(save_dir), f"{iteration}\n")
        fsync_dir(save_dir)
    _barrier()
    log_rank_0(f"  successfully saved checkpoint at iteration {iteration:7d} to {save_dir}")


# -- reading ------------------------------------------------------------------------------------
class _MissingClass:
    """Stands in for a class of an old Megatron-LM module (e.g. ``fp16.loss_scaler``) that no longer exists."""

    def __init__(self, *args, **kwargs):
        pass

    def __setstate__(self, state):
        if isinstance(state, dict):
            self.__dict__.update(state)
        else:
            self.state = state


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        try:
            return super().find_class(module, name)
        except (ImportError, AttributeError):
            if module.split(".")[0] in ("megatron", "fp16"):
                return type(name, (_MissingClass,), {"__module__": module})
            raise


class _LegacyPickleModule:
    """A ``pickle_module`` for ``torch.load`` that tolerates classes of old Megatron-LM modules."""
    Unpickler = _LegacyUnpickler
    __name__ = "megatron_legacy_pickle"

    @staticmethod
    def load(file, **kwargs):
        return _LegacyUnpickler(file, **kwargs).load()


def load_checkpoint_file(path: str) -> dict:
    """One rank's checkpoint file on the CPU (any era's pickles); unreadable files raise CheckpointError."""
    try:
        # Checkpoints hold pickled args and NumPy RNG state, so the weights-only loader cannot read them.
        return torch.load(path, map_location="cpu", weights_only=False, pickle_module=_LegacyPickleModule)
    except Exception as error:  # noqa: BLE001 - name the file whatever went wrong
        raise CheckpointError(f"cannot read checkpoint file {path}: {type(error).__name__}: {error}") from error


# The layout first: a different TP size also changes the padded vocabulary, and that is the real cause.
_CHECKED_ARGS = (
    ("tensor_model_parallel_size", "--tensor-model-parallel-size"),
    ("pipeline_model_parallel_size", "--pipeline-model-parallel-size"),
    ("num_layers", "--num-layers"),
    ("hidden_size", "--hidden-size"),
    ("num_attention_heads", "--num-attention-heads"),
    ("max_position_embeddings", "--max-position-embeddings"),
    ("make_vocab_size_divisible_by", "--make-vocab-size-divisible-by"),
    ("padded_vocab_size", "the padded vocabulary size (--vocab-file, --make-vocab-size-divisible-by)"),
    ("tokenizer_type", "--tokenizer-type"),
    # Architecture choices that change no tensor shape (or only add/drop a bias) are named here,
    # not left to a strict state-dict load: a rope model must not silently resume as learned/none.
    ("position_embedding_type", "--position-embedding-type"),
    ("num_query_groups", "--num-query-groups"),
    ("swiglu", "--swiglu"),
    ("normalization", "--normalization"),
    ("add_bias_linear", "--disable-bias-linear"),
    ("untie_embeddings_and_output_weights", "--untie-embeddings-and-output-weights"),
    # muP changes no shape but the initialisation, the per-parameter learning rates (the optimizer
    # groups a resume must rebuild identically) and the forward multipliers.
    ("use_mup", "--use-mup"),
    ("mup_base_hidden_size", "--mup-base-hidden-size"),
    ("mup_base_num_attention_heads", "--mup-base-num-attention-heads"),
    ("mup_base_ffn_hidden_size", "--mup-base-ffn-hidden-size"),
)


def saved_arg(saved, name: str):
    """``name`` from a checkpoint's saved arguments (Namespace or dict, any era), or None."""
    get = saved.get if isinstance(saved, dict) else lambda key, default=None: getattr(saved, key, default)
    value = get(name, None)
    if value is None and name == "tensor_model_parallel_size":
        value = get("model_parallel_size", None)  # the 2020 name
    return value


def check_checkpoint_args(saved, args, path: str, checkpoint_version: float) -> None:
    """The model shape and layout saved in the checkpoint must equal this run's."""
    if saved is None:
        log_rank_0(f"WARNING: {path} holds no arguments; the model shape cannot be checked against it")
        return
    for name, flag in _CHECKED_ARGS:
        if name == "pipeline_model_parallel_size" and checkpoint_version < 3.0:
            continue  # saved only from version 3.0 on
        theirs, ours = saved_arg(saved, name), getattr(args, name, None)
        if theirs is not None and ours is not None and theirs != ours:
            hint = ""
            if name in ("tensor_model_parallel_size", "pipeline_model_parallel_size"):
                hint = "; " + reshard_hint(_load_dir_of(path), args)
            raise CheckpointError(
                f"checkpoint {path} was saved with {name} {theirs} but this run has {ours} ({flag}){hint}")


def _load_dir_of(model_file: str) -> str:
    # {load}/iter_N/mp_rank_TT[_PPP]/model_optim_rng.pt
    return os.path.dirname(os.path.dirname(os.path.dirname(model_file)))


def reshard_hint(load_dir: str, args) -> str:
    """How to make a checkpoint of another TP/PP layout loadable by this run (one clause)."""
    tp = getattr(args, "tensor_model_parallel_size", 1) or 1
    pp = getattr(args, "pipeline_model_parallel_size", 1) or 1
    return (f"reshard it to this layout first: python tools/checkpoint_util.py --load-dir {load_dir} "
            f"--save-dir {load_dir.rstrip(os.sep)}_tp{tp}_pp{pp} --target-tensor-parallel-size {tp} "
            f"--target-pipeline-parallel-size {pp} (then load that directory)")


def resolve_iteration_dir(load_dir: str, iteration: int, release: bool) -> str:
    """The directory of ``iteration`` (or the release), or the copy an interrupted replacing save left."""
    path = os.path.join(load_dir, _iteration_dirname(iteration, release))
    if os.path.isdir(path):
        return path
    replaced = path + REPLACED_SUFFIX
    if os.path.isdir(replaced):
        log_rank_0(f"WARNING: a save replacing {path} was interrupted; loading the previous copy {replaced}")
        return replaced
    raise CheckpointError(f"{get_checkpoint_tracker_filename(load_dir)} points at {path}, which does not exist")


def _check_same_on_all_ranks(iteration: int, release: bool, tracker: str) -> None:
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return
    seen = [None] * dist.get_world_size()
    dist.all_gather_object(seen, (iteration, release))
    if len(set(seen)) > 1:
        raise CheckpointError(f"ranks read different iterations from {tracker}: {sorted(set(seen))} "
                              f"(is the checkpoint directory on a shared file system?)")


def _model_file(iteration_dir: str, pg) -> str:
    path = os.path.join(iteration_dir, _rank_dirname(pg.tp_rank, pg.pp_rank, pg.pipeline_model_parallel_size > 1),
                        MODEL_FILENAME)
    if not os.path.isfile(path):
        present = sorted(name for name in os.listdir(iteration_dir) if name.startswith("mp_rank_"))
        raise CheckpointError(
            f"checkpoint file {path} does not exist; {iteration_dir} holds {present[:8]} "
            f"(saved with another --tensor-model-parallel-size / --pipeline-model-parallel-size?); "
            f"{reshard_hint(os.path.dirname(iteration_dir.rstrip(os.sep)), pg)}")
    return path


def _load_models(chunks: List[nn.Module], state: dict, checkpoint_version: float, path: str, strict: bool) -> None:
    saved_keys = sorted(key for key in state if re.fullmatch(r"model\d*", key))
    for key, chunk in zip(_model_keys(len(chunks)), chunks):
        if key not in state:
            raise CheckpointError(
                f"{path} has no {key!r} (it holds {saved_keys}); this run has {len(chunks)} model chunk(s) "
                f"(--num-layers-per-virtual-pipeline-stage differs from the saved run?)")
        core = unwrap_model(chunk)
        flat = rename_legacy_keys(flatten_state_dict(state[key]))
        if checkpoint_version < 2.0:
            head_dim = model_head_dim(core)
            if head_dim is None:
                raise CheckpointError(f"{path} is checkpoint version {checkpoint_version}: its QKV rows need the "
                                      f"head size, but the model has no transformer config")
            flat = fix_query_key_value_ordering(flat, checkpoint_version, head_dim)
        try:
            missing, unexpected = core.load_state_dict(flat, strict=False)
        except RuntimeError as error:
            raise CheckpointError(f"cannot load {key!r} from {path}: {str(error).splitlines()[-1].strip()}") from error
        if strict and (missing or unexpected):
            raise CheckpointError(f"{key!r} in {path} does not match the model: missing {missing[:4]}"
                                  f"{'...' if len(missing) > 4 else ''}, unexpected {unexpected[:4]}"
                                  f"{'...' if len(unexpected) > 4 else ''}")


def _load_optimizer(optimizer, opt_param_scheduler, state: dict, model_file: str) -> None:
    hint = "use --no-load-optim or --finetune to skip the optimizer state"
    if optimizer is not None:
        if "optimizer" not in state:
            raise CheckpointError(f"{model_file} has no optimizer state; {hint}")
        try:
            optimizer.load_state_dict(state["optimizer"])
        except (KeyError, ValueError, RuntimeError) as error:
            raise CheckpointError(f"cannot load the optimizer state of {model_file}: {error}; {hint}") from error
    if opt_param_scheduler is not None:
        # 2021 checkpoints call the scheduler "lr_scheduler".
        scheduler_state = state.get("opt_param_scheduler", state.get("lr_scheduler"))
        if scheduler_state is None:
            raise CheckpointError(f"{model_file} has no learning-rate scheduler state; {hint}")
        try:
            opt_param_scheduler.load_state_dict(scheduler_state)
        except (KeyError, ValueError) as error:
            raise CheckpointError(f"cannot load the scheduler state of {model_file}: {error}") from error


def load_checkpoint(model_chunks, optimizer, opt_param_scheduler, args, load_arg: str = "load",
                    strict: bool = True) -> int:
    """Load the checkpoint ``args.<load_arg>`` points at into the given objects; returns its iteration.

    A missing tracker starts from scratch (iteration 0). ``release`` checkpoints and ``--finetune``
    load the weights only and return 0; ``--no-load-optim`` / ``--no-load-rng`` skip those parts.
    Unless fine-tuning from them, the consumed train/valid samples are restored into ``args``.
    """
    load_dir = getattr(args, load_arg, None)
    if not load_dir:
        return 0
    chunks = _as_list(model_chunks)
    pg = parallel_state.get_process_groups()
    tracker = get_checkpoint_tracker_filename(load_dir)
    if not os.path.isfile(tracker):
        log_rank_0(f"WARNING: could not find the checkpoint tracker {tracker}; starting from iteration 0")
        return 0
    iteration, release = read_tracker(load_dir)
    _check_same_on_all_ranks(iteration, release, tracker)
    model_file = _model_file(resolve_iteration_dir(load_dir, iteration, release), pg)
    log_rank_0(f"loading checkpoint from {load_dir} at iteration {'release' if release else iteration}")
    state = load_checkpoint_file(model_file)

    checkpoint_version = float(state.get("checkpoint_version", 0))
    check_checkpoint_args(state.get("args"), args, model_file, checkpoint_version)
    finetune = bool(getattr(args, "finetune", False))
    if release or finetune:
        loaded_iteration = 0
    else:
        loaded_iteration = state.get("iteration", state.get("total_iters"))  # "total_iters": 2019 checkpoints
        if loaded_iteration is None:
            raise CheckpointError(f"{model_file} holds no iteration number; load it with --finetune")

    _load_models(chunks, state, checkpoint_version, model_file, strict)

    if release or finetune or getattr(args, "no_load_optim", False):
        # The fp32 master copies (fp16/bf16) must start from the weights just loaded.
        if hasattr(optimizer, "reload_model_params"):
            optimizer.reload_model_params()
    else:
        _load_optimizer(optimizer, opt_param_scheduler, state, model_file)

    if not (release or finetune) and state.get("args") is not None:
        args.consumed_train_samples = saved_arg(state["args"], "consumed_train_samples") or 0
        args.consumed_valid_samples = saved_arg(state["args"], "consumed_valid_samples") or 0

    if not (release or finetune or getattr(args, "no_load_rng", False)):
        rng_state = select_rng_state(state, pg.dp_rank, pg.data_parallel_size)
        if rng_state is None:
            raise CheckpointError(f"{model_file} has no RNG state; use --no-load-rng or --finetune to skip it")
        try:
            restore_rng_state(rng_state, model_file)
        except ValueError as error:
            raise CheckpointError(f"{error}; use --no-load-rng to skip the RNG state") from error

    _barrier()
    log_rank_0(f"  successfully loaded checkpoint from {load_dir} at iteration {loaded_iteration}")
    return loaded_iteration


# Former private names, still imported by megatron/retrieval/biencoder_setup.py,
# tools/merge_mp_partitions.py and tests/unit/test_checkpointing.py.
_load_file = load_checkpoint_file
_resolve_iteration_dir = resolve_iteration_dir
_saved_arg = saved_arg
