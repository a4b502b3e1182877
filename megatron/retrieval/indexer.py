"""Embed every block (or evidence passage) of a corpus once with the context tower.

Each data-parallel rank takes one contiguous share of the corpus (no item dropped, none repeated;
the shares differ by at most one item), embeds it in batches, and writes its shard atomically;
after a barrier global rank 0 merges the shards into one store, checking that every id of the
corpus is present exactly once. Tensor-parallel peers compute the same embeddings, so only
tensor-parallel rank 0 of each data-parallel group writes.
"""
from __future__ import annotations

import contextlib
import sys
import time
from typing import Callable, Optional, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megatron.rank_logging import log_rank_0

EmbedFn = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
"""``embed(tokens [b, s], pad_mask [b, s]) -> [b, d]``."""


def shard_range(num_items: int, rank: int, world_size: int) -> Tuple[int, int]:
    """``[first, last)`` of this rank's contiguous share; the shares tile ``[0, num_items)``."""
    return num_items * rank // world_size, num_items * (rank + 1) // world_size


def format_eta(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}"


class IndexBuilder:
    """One pass of ``embed_fn`` over ``dataset`` (items: ``row_id``, ``tokens``, ``pad_mask`` and
    optionally ``meta``), saved as a ``BlockData`` store at ``block_data_path``.

    ``dataset`` must also offer ``all_row_ids()``: the ids the merged store has to cover.
    """

    def __init__(self, dataset, embed_fn: EmbedFn, block_data_path: str, batch_size: int = 128,
                 log_interval: int = 1000, dp_rank: int = 0, dp_size: int = 1, writes_shard: bool = True,
                 global_rank: int = 0, fp16: bool = False, device: Optional[torch.device] = None,
                 num_workers: int = 0):
        if batch_size < 1:
            raise ValueError(f"--indexer-batch-size must be positive, got {batch_size}")
        if log_interval < 1:
            raise ValueError(f"--indexer-log-interval must be positive, got {log_interval}")
        if not block_data_path:
            raise ValueError("--block-data-path (or --embedding-path) is required: where to save the embeddings")
        self.dataset = dataset
        self.embed_fn = embed_fn
        self.block_data_path = block_data_path
        self.batch_size = batch_size
        self.log_interval = log_interval
        self.dp_rank, self.dp_size = dp_rank, dp_size
        self.writes_shard = writes_shard
        self.global_rank = global_rank
        self.fp16 = fp16
        self.device = device if device is not None else torch.device("cpu")
        self.num_workers = num_workers

    @classmethod
    def from_args(cls, args, pg, dataset) -> "IndexBuilder":
        """The context tower of ``--ict-load`` (or ``--load``), in eval mode, on the initialised device."""
        from megatron.initialize import get_device
        from megatron.retrieval.biencoder_setup import embed_context, load_biencoder

        checkpoint_dir = args.ict_load or args.load
        if not checkpoint_dir:
            raise ValueError("--ict-load (or --load) is required: the biencoder checkpoint whose context tower "
                             "embeds the blocks")
        model = load_biencoder(args, pg, checkpoint_dir, only_context_model=True)

        def embed(tokens, pad_mask):
            return embed_context(model, tokens, pad_mask)

        return cls(dataset, embed, args.block_data_path, args.indexer_batch_size, args.indexer_log_interval,
                   dp_rank=pg.dp_rank, dp_size=pg.data_parallel_size,
                   writes_shard=pg.tp_rank == 0, global_rank=pg.rank, fp16=args.fp16,
                   device=get_device(), num_workers=args.num_workers)

    def _autocast(self):
        if not self.fp16:
            return contextlib.nullcontext()
        if self.device.type == "cuda":
            return torch.autocast("cuda", dtype=torch.float16)
        return contextlib.nullcontext()

    def _loader(self):
        first, last = shard_range(len(self.dataset), self.dp_rank, self.dp_size)
        subset = torch.utils.data.Subset(self.dataset, range(first, last))
        loader = torch.utils.data.DataLoader(subset, batch_size=self.batch_size, shuffle=False, drop_last=False,
                                             num_workers=self.num_workers)
        return loader, last - first

    def embed_shard(self):
        """This rank's ``BlockData`` shard (all of its share, embedded)."""
        from megatron.retrieval.block_store import BlockData

        if self.fp16 and self.device.type != "cuda":
            log_rank_0("> --fp16 on a CPU: embedding in float32, storing float16")
        loader, num_mine = self._loader()
        num_batches = (num_mine + self.batch_size - 1) // self.batch_size
        shard = BlockData()
        start = time.time()
        done = 0
        # A tqdm bar on a terminal; in logs (not a terminal) a line every --indexer-log-interval batches.
        bar = None
        if self.global_rank == 0 and sys.stdout.isatty():
            from tqdm import tqdm

            bar = tqdm(total=num_mine, desc="indexer (rank 0)", unit=" blocks", file=sys.stdout, dynamic_ncols=True)
        with torch.no_grad(), self._autocast():
            for batch_index, batch in enumerate(loader, start=1):
                tokens = batch["tokens"].to(self.device)
                pad_mask = batch["pad_mask"].to(self.device)
                embeddings = self.embed_fn(tokens, pad_mask)  # [b, d]
                if embeddings.dim() != 2 or embeddings.shape[0] != tokens.shape[0]:
                    raise ValueError(f"the context tower returned shape {tuple(embeddings.shape)} for a batch of "
                                     f"{tokens.shape[0]}; expected [batch, embedding size]")
                # fp16 on disk halves the store; the values are reused as float32 by faiss.
                vectors = embeddings.detach().float().cpu().numpy().astype(np.float16)
                meta = batch["meta"].numpy().astype(np.int64) if "meta" in batch else None
                shard.add_block_data(batch["row_id"].numpy().astype(np.int64), vectors, meta)
                done += tokens.shape[0]
                if bar is not None:
                    bar.update(tokens.shape[0])
                elif self.global_rank == 0 and (batch_index % self.log_interval == 0 or batch_index == num_batches):
                    elapsed = time.time() - start
                    rate = done / elapsed if elapsed > 0 else float("inf")
                    eta = (num_mine - done) / rate if rate > 0 else 0.0
                    print(f"> indexer: batch {batch_index}/{num_batches} | blocks {done}/{num_mine} on rank 0 "
                          f"| {rate:.1f} blocks/s | ETA {format_eta(eta)}", flush=True)
        if bar is not None:
            bar.close()
        return shard

    def build_and_save_index(self):
        """Embed, save shards, merge on rank 0. Returns the number of ids in the merged store."""
        shard = self.embed_shard()
        if self.writes_shard:
            shard.save_shard(self.block_data_path, self.dp_rank)
        _barrier()
        total = len(self.dataset)
        if self.global_rank == 0:
            from megatron.retrieval.block_store import BlockData

            expected = np.asarray(self.dataset.all_row_ids(), dtype=np.int64)
            BlockData.merge_shards_and_save(self.block_data_path, self.dp_size, expected_ids=expected)
            print(f"> indexer: saved {total} embeddings to {self.block_data_path}", flush=True)
        _barrier()
        return total


def _barrier():
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def block_corpus_from_args(args, tokenizer):
    """The corpus the flags name: ``--evidence-data-path`` (DPR TSV) or ``--data-path`` with
    ``--titles-data-path`` (this project's ICT blocks); passages are ``--retriever-seq-length``
    long for the DPR TSV and ``--seq-length`` long for ICT blocks (the length ICT trained on)."""
    from megatron.retrieval.evidence import BlockCorpus, EvidenceDataset

    if args.evidence_data_path:
        return EvidenceDataset(args.evidence_data_path, tokenizer, args.retriever_seq_length)
    data_path = args.data_path
    if not data_path or not args.titles_data_path:
        raise ValueError("give --evidence-data-path (DPR TSV) or --data-path with --titles-data-path "
                         "(the body and titles datasets) to index")
    if len(data_path) != 1:
        raise ValueError(f"--data-path takes a single prefix for indexing, got {' '.join(data_path)}")
    # Every rank builds the corpus, so the blocks mapping's cache uses a global barrier.
    return BlockCorpus(data_path[0], args.titles_data_path, args.seq_length, args.seed, tokenizer,
                       use_one_sent_docs=args.use_one_sent_docs, cache_dir=args.data_cache_path)
