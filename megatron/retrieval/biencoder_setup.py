"""Building, loading and running the ICT biencoder in the training layer.

* ``biencoder_model_provider``: the ``model_provider`` of ``pretrain_ict.py`` and the retrieval tools,
  built from ``get_args()`` (optionally only the query or only the context tower).
* ``load_biencoder``: a biencoder checkpoint (``--ict-load``) for indexing or evaluation, weights only.
* ``init_towers_from_bert``: both towers from a ``pretrain_bert.py`` checkpoint (``--bert-load``).
* ``embed_query`` / ``embed_context``: ``[b, d]`` float embeddings, no gradient.

Checkpoints are read at whatever tensor/pipeline layout they were saved: when the saved layout
differs from this run's, every shard is read and merged in memory (``checkpoint_tools.reshard``),
then this rank's tensor-parallel slice is cut from the merged weights.
"""
import argparse
import os
from typing import Callable, Dict, Iterable, List, Optional, Tuple

import torch
from torch import nn

from megatron.checkpoint_state import fix_query_key_value_ordering, flatten_state_dict, rename_legacy_keys
from megatron.checkpointing import (
    MODEL_FILENAME,
    CheckpointError,
    get_checkpoint_tracker_filename,
    load_checkpoint_file,
    read_tracker,
    resolve_iteration_dir,
    saved_arg,
    unwrap_model,
)
from megatron.core.models.biencoder import BiEncoderModel

# Arguments whose difference explains a shape mismatch, named in the error next to the keys.
_SHAPE_ARGS = (("num_layers", "--num-layers"), ("hidden_size", "--hidden-size"),
               ("num_attention_heads", "--num-attention-heads"), ("ffn_hidden_size", "--ffn-hidden-size"),
               ("max_position_embeddings", "--max-position-embeddings"),
               ("biencoder_projection_dim", "--biencoder-projection-dim"),
               ("biencoder_shared_query_context_model", "--biencoder-shared-query-context-model"))


def biencoder_model_provider(only_query_model: bool = False, only_context_model: bool = False) -> Callable:
    """A ``model_provider(pre_process=True, post_process=True) -> BiEncoderModel`` reading ``get_args()``."""

    def model_provider(pre_process=True, post_process=True):
        from megatron.config_from_args import core_transformer_config_from_args
        from megatron.global_vars import get_args

        args = get_args()
        if not (pre_process and post_process):
            raise ValueError(f"the biencoder runs on one pipeline stage: --pipeline-model-parallel-size "
                             f"{args.pipeline_model_parallel_size} is not supported")
        return BiEncoderModel(core_transformer_config_from_args(args), vocab_size=args.padded_vocab_size,
                              max_sequence_length=args.max_position_embeddings,
                              # Two token types, all zero in ICT, so that BERT checkpoints load.
                              num_tokentypes=2, projection_dim=args.biencoder_projection_dim or 0,
                              shared_query_context_model=bool(args.biencoder_shared_query_context_model),
                              only_query_model=only_query_model, only_context_model=only_context_model)

    return model_provider


# -- reading checkpoints at any layout -----------------------------------------------------------
def _check_checkpoint_dir(load_dir: Optional[str], flag: str) -> None:
    if not load_dir:
        raise CheckpointError(f"{flag} is required: the directory of the checkpoint to load")
    if not os.path.isdir(load_dir):
        raise CheckpointError(f"{flag} {load_dir}: no such directory")
    tracker = get_checkpoint_tracker_filename(load_dir)
    if not os.path.isfile(tracker):
        raise CheckpointError(f"{flag} {load_dir}: no checkpoint there (no {os.path.basename(tracker)})")


def _as_namespace(saved) -> Optional[argparse.Namespace]:
    return argparse.Namespace(**saved) if isinstance(saved, dict) else saved


def read_checkpoint_weights(load_dir: str, flag: str, args, pg) -> Tuple[Dict[str, torch.Tensor], object]:
    """(flat model state dict for this rank's tensor-parallel slice, saved args) of the checkpoint
    ``load_dir``, saved at any TP/PP layout. Errors name ``flag`` and the path."""
    from megatron.checkpoint_tools.reshard import SourceCheckpoint, merge_shards, split_full

    _check_checkpoint_dir(load_dir, flag)
    iteration, release = read_tracker(load_dir)
    iteration_dir = resolve_iteration_dir(load_dir, iteration, release)
    own = os.path.join(iteration_dir, f"mp_rank_{pg.tp_rank:02d}", MODEL_FILENAME)
    if os.path.isfile(own):
        state = load_checkpoint_file(own)
        saved = _as_namespace(state.get("args"))
        saved_tp = (saved_arg(saved, "tensor_model_parallel_size") or 1) if saved is not None else None
        saved_pp = (saved_arg(saved, "pipeline_model_parallel_size") or 1) if saved is not None else None
        if saved is None or (saved_tp == pg.tensor_model_parallel_size and saved_pp == 1):
            if "model" not in state:
                raise CheckpointError(f"{flag} {load_dir}: {own} holds no 'model' weights")
            flat = rename_legacy_keys(flatten_state_dict(state["model"]))
            version = float(state.get("checkpoint_version", 0))
            if version < 2.0 and saved is not None:
                head_dim = saved_arg(saved, "kv_channels") or saved.hidden_size // saved.num_attention_heads
                flat = fix_query_key_value_ordering(flat, version, head_dim)
            return flat, saved
    # Another layout: merge every shard, then cut this rank's slice.
    try:
        source = SourceCheckpoint(load_dir)
        full = merge_shards(source)
        num_layers = saved_arg(source.args, "num_layers")
        shards = split_full(full, num_layers, pg.tensor_model_parallel_size, 1, args.padded_vocab_size,
                            swiglu=bool(saved_arg(source.args, "swiglu")))
    except CheckpointError as error:
        raise CheckpointError(f"{flag} {load_dir}: {error}") from error
    return shards[(pg.tp_rank, 0)], source.args


def _shape_hint(saved, args, names: Iterable[Tuple[str, str]] = _SHAPE_ARGS) -> str:
    if saved is None:
        return ""
    differences = []
    for name, flag in names:
        theirs, ours = saved_arg(saved, name), getattr(args, name, None)
        if theirs is not None and ours is not None and theirs != ours:
            differences.append(f"saved {name} {theirs}, this run {flag} {ours}")
    return f" ({'; '.join(differences)})" if differences else ""


def _clip(names: List[str], count: int = 4) -> str:
    shown = ", ".join(names[:count])
    return shown + (f" and {len(names) - count} more" if len(names) > count else "")


def compare_state(model_state: Dict[str, torch.Tensor], loaded: Dict[str, torch.Tensor],
                  ignore_prefixes: Tuple[str, ...] = ()) -> List[str]:
    """Problems (missing keys, unexpected keys, shape mismatches), each a short phrase; empty when they fit."""
    problems = []
    missing = sorted(k for k in model_state if k not in loaded)
    unexpected = sorted(k for k in loaded if k not in model_state and not k.startswith(ignore_prefixes))
    mismatched = sorted(f"{k} {tuple(loaded[k].shape)} vs model {tuple(model_state[k].shape)}"
                        for k in model_state if k in loaded and tuple(loaded[k].shape) != tuple(model_state[k].shape))
    if mismatched:
        problems.append(f"shape mismatch: {_clip(mismatched, 3)}")
    if missing:
        problems.append(f"missing keys: {_clip(missing)}")
    if unexpected:
        problems.append(f"unexpected keys: {_clip(unexpected)}")
    return problems


# -- the biencoder checkpoint (--ict-load) ---------------------------------------------------------
def load_biencoder(args, pg, checkpoint_dir: Optional[str], only_query_model: bool = False,
                   only_context_model: bool = False, flag: str = "--ict-load") -> BiEncoderModel:
    """The biencoder (or one tower of it) with the weights of ``checkpoint_dir``, in eval mode.

    Only model weights are read (no optimizer or RNG state). A half model ignores exactly the
    other tower's entries; any other missing or unexpected key is an error naming it.
    """
    from megatron.core.transformer import ModelType
    from megatron.model_setup import get_model

    _check_checkpoint_dir(checkpoint_dir, flag)
    if pg.pipeline_model_parallel_size != 1:
        raise ValueError(f"the biencoder runs on one pipeline stage: --pipeline-model-parallel-size "
                         f"{pg.pipeline_model_parallel_size} is not supported")
    provider = biencoder_model_provider(only_query_model=only_query_model, only_context_model=only_context_model)
    model = unwrap_model(get_model(provider, ModelType.encoder_or_decoder, args, pg, wrap_with_ddp=False)[0])
    loaded, saved = read_checkpoint_weights(checkpoint_dir, flag, args, pg)
    problems = compare_state(model.state_dict(), loaded, model.absent_tower_prefixes())
    if problems:
        raise CheckpointError(f"{flag} {checkpoint_dir}: the checkpoint does not fit the biencoder: "
                              f"{'; '.join(problems)}{_shape_hint(saved, args)}")
    model.load_state_dict({k: v for k, v in loaded.items() if k in model.state_dict()}, strict=True)
    model.eval()
    return model


# -- the BERT checkpoint (--bert-load) -------------------------------------------------------------
def _true_vocab_size() -> Optional[int]:
    from megatron import global_vars

    tokenizer = global_vars._GLOBAL_TOKENIZER
    return None if tokenizer is None else tokenizer.vocab_size


def _same_file_contents(first: str, second: str) -> bool:
    if os.path.realpath(first) == os.path.realpath(second):
        return True
    with open(first, "rb") as a, open(second, "rb") as b:
        return a.read() == b.read()


def _check_bert_vocabulary(saved, args, load_dir: str) -> None:
    """The BERT must use this run's vocabulary: the word-embedding rows are re-padded to this run's
    size, which would silently hide another tokenizer. Checked: the tokenizer type, the vocabulary
    file's contents when the saved one is still readable, and the padded size at the saved layout."""
    from megatron.tokenizer.build import vocab_size_with_padding

    if saved is None:
        return
    saved_tokenizer = saved_arg(saved, "tokenizer_type")
    if saved_tokenizer and getattr(args, "tokenizer_type", None) and saved_tokenizer != args.tokenizer_type:
        raise CheckpointError(f"--bert-load {load_dir}: saved with tokenizer_type {saved_tokenizer}, this run "
                              f"--tokenizer-type {args.tokenizer_type}")
    saved_vocab, our_vocab = saved_arg(saved, "vocab_file"), getattr(args, "vocab_file", None)
    if saved_vocab and our_vocab and os.path.isfile(saved_vocab) and os.path.isfile(our_vocab) \
            and not _same_file_contents(saved_vocab, our_vocab):
        raise CheckpointError(f"--bert-load {load_dir}: mismatched key language_model.embedding.word_embeddings."
                              f"weight: the BERT was trained with --vocab-file {saved_vocab}, this run has "
                              f"--vocab-file {our_vocab} (different contents)")
    saved_rows = saved_arg(saved, "padded_vocab_size")
    true_vocab = _true_vocab_size()
    if saved_rows is None or true_vocab is None:
        return
    saved_layout = argparse.Namespace(
        make_vocab_size_divisible_by=saved_arg(saved, "make_vocab_size_divisible_by") or 128,
        tensor_model_parallel_size=saved_arg(saved, "tensor_model_parallel_size") or 1, rank=1)
    if vocab_size_with_padding(true_vocab, saved_layout) != saved_rows:
        raise CheckpointError(
            f"--bert-load {load_dir}: mismatched key language_model.embedding.word_embeddings.weight: the BERT "
            f"vocabulary pads to {saved_rows} rows, this run's vocabulary ({true_vocab} tokens) to "
            f"{vocab_size_with_padding(true_vocab, saved_layout)} at the saved layout (another --vocab-file?)")


def init_towers_from_bert(model: BiEncoderModel, load_dir: str, args, pg) -> None:
    """Both towers' embedding and encoder from a ``pretrain_bert.py`` checkpoint (any layout).

    The pooler, LM and binary heads are dropped; projection layers keep their fresh (per-tower)
    initialisation. A BERT trained without token types (``--bert-no-binary-head``) leaves the
    towers' token-type embeddings zeroed, so the all-zero ICT types add nothing, as in that BERT.
    """
    loaded, saved = read_checkpoint_weights(load_dir, "--bert-load", args, pg)
    _check_bert_vocabulary(saved, args, load_dir)
    prefix = "language_model."
    encoder = {k[len(prefix):]: v for k, v in loaded.items()
               if k.startswith(prefix) and not k.startswith(prefix + "pooler.")}
    if not encoder:
        raise CheckpointError(f"--bert-load {load_dir}: no 'language_model.' weights (not a BERT checkpoint; "
                              f"it holds {_clip(sorted(loaded))})")
    towers = list({id(t): t for t in model.towers() if t is not None}.values())
    expected = towers[0].language_model.state_dict()
    tokentype = "embedding.tokentype_embeddings.weight"
    no_tokentypes = tokentype in expected and tokentype not in encoder
    problems = compare_state({k: v for k, v in expected.items() if not (no_tokentypes and k == tokentype)},
                             encoder)
    if problems:
        names = _SHAPE_ARGS[:5]
        raise CheckpointError(f"--bert-load {load_dir}: the BERT checkpoint does not fit the biencoder towers: "
                              f"{'; '.join(problems)} (names under language_model.){_shape_hint(saved, args, names)}")
    for tower in towers:
        with torch.no_grad():
            tower.language_model.load_state_dict(encoder, strict=not no_tokentypes)
            if no_tokentypes:
                tower.language_model.state_dict()[tokentype].zero_()


# -- embedding ----------------------------------------------------------------------------------
def _embed(model: nn.Module, tokens: torch.Tensor, pad_mask: torch.Tensor, side: str) -> torch.Tensor:
    core = unwrap_model(model)
    device = next(core.parameters()).device
    tokens = tokens.to(device).long()
    pad_mask = pad_mask.to(device).long()
    types = torch.zeros_like(tokens)
    with torch.no_grad():
        if side == "query":
            embeddings, _ = core(tokens, pad_mask, types, None, None, None)
        else:
            _, embeddings = core(None, None, None, tokens, pad_mask, types)
    return embeddings.float()


def embed_query(model: nn.Module, tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Query-tower embeddings ``[b, d]`` (float32, no gradient) of ``[b, s]`` tokens; pad mask 1 = real token."""
    return _embed(model, tokens, pad_mask, "query")


def embed_context(model: nn.Module, tokens: torch.Tensor, pad_mask: torch.Tensor) -> torch.Tensor:
    """Context-tower embeddings ``[b, d]`` (float32, no gradient) of ``[b, s]`` tokens; pad mask 1 = real token."""
    return _embed(model, tokens, pad_mask, "context")
