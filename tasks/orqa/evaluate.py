"""Zero-shot retrieval accuracy of an ICT biencoder on Natural Questions-style data
(``tasks/main.py --task RETRIEVER-EVAL``, alias ``ICT-ZEROSHOT-NQ``).

1. The evidence corpus (``--evidence-data-path`` DPR TSV, or ``--data-path`` + ``--titles-data-path``
   blocks) is embedded with the context tower into ``--block-data-path``, unless a store whose ids
   are exactly the corpus's ids is already there: then it is reused (and the log says so; delete
   it to re-embed, e.g. after changing the checkpoint).
2. The questions of ``--qa-data-dev`` / ``--qa-data-test`` are embedded with the query tower, each
   data-parallel rank taking a contiguous share, and gathered.
3. Global rank 0 searches the store with faiss (``--faiss-topk-retrievals`` blocks per question),
   matches answers DPR-style (``--faiss-match``), and reports top-k accuracy for each k of
   ``--retriever-report-topk-accuracies``. Every rank returns the same numbers.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist

from megatron.utils import print_rank_0

TASK_NAMES = ("RETRIEVER-EVAL", "ICT-ZEROSHOT-NQ")


def clamp_topk(report_ks: Sequence[int], top_k_retrievals: int, corpus_size: int) -> Tuple[int, Dict[int, int]]:
    """(blocks to retrieve per question, {asked k: k actually measured}): no k can exceed what is
    retrieved, and nothing more than the corpus can be retrieved."""
    if not report_ks:
        raise ValueError("--retriever-report-topk-accuracies needs at least one k")
    bad = [k for k in report_ks if k < 1]
    if bad:
        raise ValueError(f"--retriever-report-topk-accuracies must be positive, got {bad[0]}")
    if top_k_retrievals < 1:
        raise ValueError(f"--faiss-topk-retrievals must be positive, got {top_k_retrievals}")
    if corpus_size < 1:
        raise ValueError("the block store is empty: nothing to retrieve")
    search_k = min(top_k_retrievals, corpus_size)
    return search_k, {k: min(k, search_k) for k in report_ks}


def retrieval_accuracies(query_embeddings: np.ndarray, answers: List[List[str]], index,
                         passage_text: Callable[[int], str], report_ks: Sequence[int],
                         top_k_retrievals: int, match_type: str = "string",
                         num_workers: int = 0) -> Tuple[Dict[int, float], Dict[int, int]]:
    """({k: percent of questions with an answer in their top-k blocks}, {k: k measured}).

    ``index`` is a filled ``FaissMIPSIndex``; ``passage_text(row_id)`` the text answers are
    searched in.
    """
    from megatron.retrieval.qa_validation import match_questions, top_k_hits

    if len(query_embeddings) != len(answers):
        raise ValueError(f"{len(query_embeddings)} question embeddings for {len(answers)} questions")
    search_k, measured = clamp_topk(report_ks, top_k_retrievals, len(index))
    _, ids = index.search_mips_index(np.asarray(query_embeddings, dtype=np.float32), search_k)
    # An approximate index may return fewer than k blocks (id -1): they are simply not there.
    passages = [[passage_text(int(row_id)) for row_id in row if row_id >= 0] for row in ids]
    hits = match_questions(answers, passages, match_type, workers=num_workers)
    accuracy = top_k_hits(hits, sorted(set(measured.values())))
    return {k: float(accuracy[measured[k]]) for k in report_ks}, measured


def format_report(task: str, split: str, num_questions: int, accuracies: Dict[int, float],
                  measured: Dict[int, int], corpus_size: int, top_k_retrievals: int) -> List[str]:
    lines = [f" > {task} {split}: {num_questions} questions, {corpus_size} blocks"]
    for k, value in accuracies.items():
        line = f" > {task} {split}: top-{k} accuracy: {value:.2f} %"
        if measured[k] != k:
            limit = (f"the corpus has {corpus_size} blocks" if corpus_size < top_k_retrievals
                     else f"--faiss-topk-retrievals {top_k_retrievals}")
            line += f" (measured at top-{measured[k]}: {limit})"
        lines.append(line)
    return lines


def embed_questions(dataset, embed_fn, batch_size: int, dp_rank: int, dp_size: int, device,
                    dp_group=None) -> np.ndarray:
    """float32 ``[len(dataset), d]`` on every rank: each data-parallel rank embeds its contiguous
    share, the shares are gathered in rank order."""
    from megatron.retrieval.indexer import shard_range

    first, last = shard_range(len(dataset), dp_rank, dp_size)
    parts = []
    with torch.no_grad():
        for start in range(first, last, batch_size):
            items = [dataset[i] for i in range(start, min(start + batch_size, last))]
            tokens = torch.from_numpy(np.stack([it["tokens"] for it in items])).to(device)
            pad_mask = torch.from_numpy(np.stack([it["pad_mask"] for it in items])).to(device)
            parts.append(embed_fn(tokens, pad_mask).float().cpu().numpy())
    mine = np.concatenate(parts) if parts else None
    if dp_size == 1:
        return mine
    gathered = [None] * dp_size
    dist.all_gather_object(gathered, mine, group=dp_group)
    return np.concatenate([part for part in gathered if part is not None])


def _store_matches(path: str, expected_ids: np.ndarray) -> Tuple[bool, str]:
    from megatron.retrieval.block_store import BlockData

    if not os.path.exists(path):
        return False, ""
    try:
        ids = BlockData.load(path, mmap=True).ids()
    except ValueError as error:
        return False, f"the store at {path} is unreadable ({error})"
    expected = np.unique(np.asarray(expected_ids, dtype=np.int64))
    if len(ids) == len(expected) and np.array_equal(np.sort(ids), expected):
        return True, ""
    return False, f"the store at {path} holds {len(ids)} ids, not the corpus's {len(expected)}"


def store_provenance(args) -> Dict[str, object]:
    """What the embeddings in a store depend on: the checkpoint (its directory and the state of its
    tracker file, which every save rewrites), the corpus files and the passage length."""
    from megatron.checkpointing import get_checkpoint_tracker_filename

    checkpoint_dir = os.path.realpath(_checkpoint_dir(args))
    tracker = get_checkpoint_tracker_filename(checkpoint_dir)
    with open(tracker, encoding="utf-8") as handle:
        saved = handle.read().strip()
    corpus = [args.evidence_data_path] if args.evidence_data_path else [*(args.data_path or []), args.titles_data_path]
    return {"checkpoint": checkpoint_dir, "saved": saved, "tracker_mtime_ns": os.stat(tracker).st_mtime_ns,
            "corpus": [os.path.realpath(p) for p in corpus if p],
            "seq_length": args.retriever_seq_length if args.evidence_data_path else args.seq_length}


def _provenance_path(store_path: str) -> str:
    return store_path.rstrip("/") + ".provenance.json"


def ensure_block_store(args, pg, corpus) -> None:
    """Reuse ``--block-data-path`` when it holds exactly the corpus's ids and was embedded by this
    checkpoint from this corpus (its ``.provenance.json`` says so), else (re)build it."""
    import json

    from megatron.core.fileio import atomic_write_text
    from megatron.retrieval.indexer import IndexBuilder

    if not args.block_data_path:
        raise ValueError("--block-data-path (or --embedding-path) is required: where the evidence "
                         "embeddings are saved (or reused from)")
    provenance = store_provenance(args)
    decision = [None]
    if pg.rank == 0:
        reuse, reason = _store_matches(args.block_data_path, corpus.all_row_ids())
        if reuse:
            try:
                with open(_provenance_path(args.block_data_path), encoding="utf-8") as handle:
                    recorded = json.load(handle)
            except (OSError, ValueError):
                recorded = None
            if recorded != provenance:
                reuse, reason = False, (f"the store at {args.block_data_path} was not embedded by this checkpoint "
                                        f"from this corpus (see {_provenance_path(args.block_data_path)})")
        decision[0] = (reuse, reason)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.broadcast_object_list(decision, src=0)
    reuse, reason = decision[0]
    if reuse:
        print_rank_0(f"> reusing the block store at {args.block_data_path} ({len(corpus)} blocks, embedded by "
                      f"this checkpoint from this corpus)")
        return
    if reason:
        print_rank_0(f"> rebuilding the block store: {reason}")
    print_rank_0(f"> embedding {len(corpus)} blocks into {args.block_data_path}")
    IndexBuilder.from_args(args, pg, corpus).build_and_save_index()
    if pg.rank == 0:
        atomic_write_text(_provenance_path(args.block_data_path), json.dumps(provenance, indent=2) + "\n")


def _checkpoint_dir(args) -> str:
    checkpoint_dir = args.ict_load or args.load
    if not checkpoint_dir:
        raise ValueError("--ict-load (or --load) is required: the biencoder checkpoint to evaluate")
    return checkpoint_dir


def run(args, pg, tokenizer) -> Dict[str, Dict[int, float]]:
    """{split: {k: top-k accuracy %}} for the given question files (same result on every rank)."""
    from megatron.initialize import get_device
    from megatron.retrieval.biencoder_setup import embed_query, load_biencoder
    from megatron.retrieval.evidence import QuestionDataset
    from megatron.retrieval.faiss_index import require_faiss
    from megatron.retrieval.indexer import block_corpus_from_args

    require_faiss()  # fail before any embedding work when faiss is missing
    splits = [(name, path) for name, path in (("dev", args.qa_data_dev), ("test", args.qa_data_test)) if path]
    if not splits:
        raise ValueError(f"--task {args.task} needs --qa-data-dev and/or --qa-data-test (NQ-open CSV/TSV files)")
    # Read every question file before the long embedding pass, so a bad file fails fast.
    datasets = [(name, QuestionDataset(path, tokenizer, args.retriever_seq_length)) for name, path in splits]
    checkpoint_dir = _checkpoint_dir(args)
    corpus = block_corpus_from_args(args, tokenizer)
    clamp_topk(args.retriever_report_topk_accuracies, args.faiss_topk_retrievals, len(corpus))
    ensure_block_store(args, pg, corpus)

    model = load_biencoder(args, pg, checkpoint_dir, only_query_model=True)

    def embed(tokens, pad_mask):
        return embed_query(model, tokens, pad_mask)

    index = None
    if pg.rank == 0:
        from megatron.retrieval.block_store import BlockData
        from megatron.retrieval.faiss_index import FaissMIPSIndex

        store = BlockData.load(args.block_data_path, mmap=True)
        index = FaissMIPSIndex(store.embedding_dim, block_data=store, use_gpu=args.faiss_use_gpu,
                               index_factory=args.faiss_index_factory, nprobe=args.faiss_nprobe)
    results: Dict[str, Dict[int, float]] = {}
    for split, questions in datasets:
        embeddings = embed_questions(questions, embed, args.indexer_batch_size, pg.dp_rank, pg.data_parallel_size,
                                     get_device(), pg.dp if pg.data_parallel_size > 1 else None)
        outcome = [None]
        if pg.rank == 0:
            accuracies, measured = retrieval_accuracies(
                embeddings, questions.answers, index, lambda row_id: corpus.passage(row_id)[0],
                args.retriever_report_topk_accuracies, args.faiss_topk_retrievals, args.faiss_match,
                args.num_workers)
            for line in format_report(args.task, split, len(questions), accuracies, measured, len(index),
                                      args.faiss_topk_retrievals):
                print(line, flush=True)
            outcome[0] = accuracies
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast_object_list(outcome, src=0)
        results[split] = outcome[0]
    return results


def main() -> Optional[Dict[str, Dict[int, float]]]:
    from megatron.checkpointing import CheckpointError
    from megatron.core import parallel_state
    from megatron.global_vars import get_args, get_tokenizer

    args = get_args()
    if args.tokenizer_type not in ("BertWordPieceLowerCase", "BertWordPieceCase"):
        raise ValueError(f"--task {args.task} needs a BERT WordPiece tokenizer, got --tokenizer-type {args.tokenizer_type}")
    try:
        return run(args, parallel_state.get_process_groups(), get_tokenizer())
    except (CheckpointError, ImportError) as error:
        # A missing checkpoint or faiss is the user's to fix: tasks/main.py prints it on one line.
        raise ValueError(str(error)) from None
