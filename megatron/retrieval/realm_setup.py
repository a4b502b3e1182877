"""REALM in the training layer: the model from ``--ict-load`` and ``--bert-load``, and the evidence
index through a run (initial build, refreshes, snapshots, resume).

Index life cycle (``IndexState.prepare``, called by every micro-batch's forward step):

* first call at iteration ``s`` (0, or the resumed checkpoint's iteration): the index the
  uninterrupted run would search at iteration ``s + 1`` -- built at ``r = s - s % interval``:
  ``--block-data-path`` when ``r = 0`` and given; else the snapshot ``<load>/realm_index/built_at_r``;
  else the blocks are embedded with the current context tower (exactly the uninterrupted run's
  index when ``r = s``; otherwise the resume is not exact, and the run says so);
* in training, at an iteration ``s`` that is a positive multiple of ``--index-refresh-interval``:
  every block is embedded again with the current context tower (``embed_corpus_sync``), and with
  ``--save`` global rank 0 writes the snapshot.
"""
import os
import time
from typing import Optional

import numpy as np
import torch

from megatron.checkpointing import CheckpointError, get_checkpoint_tracker_filename
from megatron.core.models.realm import REALMModel
from megatron.retrieval.biencoder_setup import (
    _check_bert_vocabulary,
    _shape_hint,
    _SHAPE_ARGS,
    compare_state,
    read_checkpoint_weights,
)
from megatron.retrieval.realm_index import (
    REALMIndex,
    RefreshTimer,
    embed_corpus_sync,
    embeddings_from_store,
    load_snapshot,
    newest_snapshot_at_or_before,
    save_snapshot,
)
from megatron.utils import print_rank_0


def resuming(args) -> bool:
    return bool(args.load) and os.path.isfile(get_checkpoint_tracker_filename(args.load))


def build_realm_model(args, config, tokenizer) -> REALMModel:
    return REALMModel(config, vocab_size=args.padded_vocab_size, max_sequence_length=args.max_position_embeddings,
                      projection_dim=args.biencoder_projection_dim or 0,
                      shared_query_context_model=bool(args.biencoder_shared_query_context_model),
                      pad_id=tokenizer.pad, true_vocab_size=tokenizer.vocab_size)


def load_retriever(model: REALMModel, load_dir: Optional[str], args, pg) -> None:
    """Both towers from an ICT checkpoint (``pretrain_ict.py``, any TP/PP layout)."""
    if not load_dir:
        raise CheckpointError("--ict-load is required: the ICT biencoder that starts the retriever "
                              "(or --load with a REALM checkpoint to resume)")
    loaded, saved = read_checkpoint_weights(load_dir, "--ict-load", args, pg)
    expected = model.retriever.state_dict()
    problems = compare_state(expected, loaded)
    if problems:
        raise CheckpointError(f"--ict-load {load_dir}: the checkpoint does not fit the retriever: "
                              f"{'; '.join(problems)}{_shape_hint(saved, args)}")
    with torch.no_grad():
        model.retriever.load_state_dict(loaded, strict=True)


def load_reader(model: REALMModel, load_dir: Optional[str], args, pg) -> None:
    """The reader's encoder and masked-LM head from a BERT checkpoint (``pretrain_bert.py``, any layout);
    the pooler and the binary head are not used. A BERT without token types leaves them zero."""
    if not load_dir:
        raise CheckpointError("--bert-load is required: the BERT that starts the reader "
                              "(or --load with a REALM checkpoint to resume)")
    loaded, saved = read_checkpoint_weights(load_dir, "--bert-load", args, pg)
    _check_bert_vocabulary(saved, args, load_dir)
    expected = model.reader.state_dict()
    weights = {k: v for k, v in loaded.items() if k in expected}
    tokentype = "language_model.embedding.tokentype_embeddings.weight"
    no_tokentypes = tokentype in expected and tokentype not in weights
    dropped = {"binary_head.", "language_model.pooler."}
    unexpected = [k for k in loaded if k not in expected and not k.startswith(tuple(dropped))]
    problems = compare_state({k: v for k, v in expected.items() if not (no_tokentypes and k == tokentype)}, weights)
    if unexpected:
        problems.append(f"unexpected keys: {', '.join(sorted(unexpected)[:4])}")
    if problems:
        raise CheckpointError(f"--bert-load {load_dir}: the BERT checkpoint does not fit the reader: "
                              f"{'; '.join(problems)}{_shape_hint(saved, args, _SHAPE_ARGS[:5])}")
    with torch.no_grad():
        model.reader.load_state_dict(weights, strict=not no_tokentypes)
        if no_tokentypes:
            model.reader.state_dict()[tokentype].zero_()


class IndexState:
    """The evidence corpus and the index searched now (module docstring)."""

    def __init__(self, args, pg, corpus, device: torch.device):
        self.args, self.pg, self.corpus, self.device = args, pg, corpus, device
        self.index: Optional[REALMIndex] = None
        self.timer = RefreshTimer()
        self.async_client = None
        self._polled_iteration: Optional[int] = None
        self._requested_time = 0.0

    def _make_index(self, embeddings: np.ndarray, built_at: int) -> REALMIndex:
        a = self.args
        return REALMIndex(self.corpus, embeddings, built_at, a.realm_mips, a.realm_matmul_max_blocks,
                          a.faiss_index_factory, a.faiss_nprobe)

    def _embed(self, core: REALMModel) -> np.ndarray:
        was_training = core.training
        core.eval()  # no dropout: the embeddings depend on the weights only
        try:
            with self.timer:
                embeddings = embed_corpus_sync(core.embed_blocks, self.corpus, self.pg.dp_rank,
                                               self.pg.data_parallel_size,
                                               self.pg.dp if self.pg.data_parallel_size > 1 else None,
                                               self.args.indexer_batch_size, self.device)
        finally:
            core.train(was_training)
        return embeddings

    def _built(self, core: REALMModel, iteration: int, why: str) -> None:
        self.index = self._make_index(self._embed(core), iteration)
        print_rank_0(f"> REALM index: {len(self.index)} blocks embedded with the weights of iteration {iteration} "
                     f"({why}) in {self.timer.last_seconds:.1f} s; search by "
                     f"{'faiss ' + self.args.faiss_index_factory if self.index.use_faiss else 'matrix product'}")
        if self.args.save and self.pg.rank == 0:
            save_snapshot(self.args.save, self.index)

    def prepare(self, core: REALMModel, iteration: int, training: bool) -> None:
        interval = self.args.index_refresh_interval
        if self.index is None:
            self._initial(core, iteration, interval)
        elif self.args.index_refresh_mode == "async":
            if training and self._polled_iteration != iteration:
                self._polled_iteration = iteration
                self._async_step(core, iteration, interval)
        elif training and interval > 0 and iteration > 0 and iteration % interval == 0 \
                and self.index.built_at < iteration:
            self._built(core, iteration, f"refresh every {interval} iterations")

    def _async_step(self, core: REALMModel, iteration: int, interval: int) -> None:
        """Switch to embeddings the refresh ranks finished; start the next refresh when due."""
        from megatron.retrieval.realm_async import AsyncRefreshClient

        if self.async_client is None:
            self.async_client = AsyncRefreshClient(self.args.index_refresh_ranks, len(self.index),
                                                   self.index.embeddings.shape[1], self.pg.rank == 0)
        client = self.async_client
        requested_at = client.in_flight
        embeddings = client.poll(self.device)
        if embeddings is not None:
            self.timer.last_seconds = time.time() - self._requested_time
            self.index = self._make_index(embeddings, requested_at)
            print_rank_0(f"> REALM index: switched before iteration {iteration + 1} to the index the refresh ranks "
                         f"built with the weights of iteration {requested_at} ({self.timer.last_seconds:.1f} s after "
                         f"the request)")
            if self.args.save and self.pg.rank == 0:
                save_snapshot(self.args.save, self.index)
        last = client.last_request if client.last_request is not None else self.index.built_at
        if client.in_flight is None and iteration > 0 and iteration - last >= interval:
            self._requested_time = time.time()
            client.request(core.retriever.towers()[1], iteration)

    def shutdown(self) -> None:
        """Let the refresh ranks go (async mode; after training)."""
        if self.async_client is not None:
            self.async_client.shutdown()

    def _initial(self, core: REALMModel, iteration: int, interval: int) -> None:
        a = self.args
        built_at = iteration - iteration % interval if interval > 0 else 0
        if built_at == iteration and iteration > 0:
            self._built(core, iteration, "resumed at a refresh iteration")
            return
        if built_at == 0 and a.block_data_path:
            self.index = self._make_index(embeddings_from_store(a.block_data_path, self.corpus), 0)
            print_rank_0(f"> REALM index: {len(self.index)} blocks from --block-data-path {a.block_data_path}")
            return
        if iteration > 0 and a.index_refresh_mode == "async" and a.load:
            # The index in use at the checkpoint depended on timing: take the newest snapshot before it.
            built_at = newest_snapshot_at_or_before(a.load, iteration)
            if built_at is None and a.block_data_path:
                self.index = self._make_index(embeddings_from_store(a.block_data_path, self.corpus), 0)
                print_rank_0(f"> REALM index: {len(self.index)} blocks from --block-data-path {a.block_data_path}")
                return
        if iteration > 0 and built_at is not None:
            embeddings = load_snapshot(a.load, built_at, self.corpus) if a.load else None
            if embeddings is not None:
                self.index = self._make_index(embeddings, built_at)
                print_rank_0(f"> REALM index: the snapshot built at iteration {built_at} reloaded from {a.load}")
                return
        if iteration > 0:
            which = "any index" if built_at is None else f"the index built at iteration {built_at}"
            print_rank_0(f"> REALM index: WARNING no snapshot of {which} under {a.load}: re-embedding with the "
                         f"resumed weights, so this resume is not exact")
            self._built(core, iteration, "resume without a snapshot")
            return
        self._built(core, 0, "initial weights; no --block-data-path")
