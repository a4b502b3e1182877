#!/usr/bin/env python
"""Build RETRO's KNN map: for every chunk of the training data, its K nearest retrieval-DB chunks.

    # the whole map in one go
    python tools/retro/build_knn_map_index.py --input_file=train_text_document --faiss_index=final.index \\
        --tokenizer-library=megatron --tokenizer-type=GPT2BPETokenizer --merge-file=merges.txt \\
        --vocab-file=vocab.json --sentence_transformer_model=all-MiniLM-L6-v2 --K_neighbors=16 \\
        --remove_duplicate --dedup_margin=2 --nprobe=10 --output_file=knn.save
    # or in shards: --stage=1 --shard_id=I --total_shards=N --output_file=knn_shard_I.save (or under
    # torchrun, one shard per rank), then --stage=2 --shard_index_input=knn_shard_ --output_file=knn.save

Training chunks are embedded with the same encoder as the index (blocks of
``--process_chunk_size``), searched with ``--nprobe``; with ``--remove_duplicate`` on a retrieval
DB input (training data = retrieval data, so chunk ids coincide) neighbours from the query
chunk's own document are dropped (K + ``--dedup_margin`` are searched) and unfilled slots are -1.
Output: NeMo's KNNRETM file (``megatron/core/datasets/knn_map.py``), written atomically.
"""
import argparse
import os
import sys
import time

if __package__ in (None, ""):
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))

import numpy as np  # noqa: E402

from megatron.preprocessing.nemo_flags import add_flag  # noqa: E402
from megatron.retrieval.retro_cli import (  # noqa: E402
    RetroToolError, add_common_args, check_common_args, log, open_input, progress_bar, shard_of)


def get_args(argv=None):
    parser = argparse.ArgumentParser(description="Build RETRO's KNN neighbour map (NeMo's recipe).",
                                     allow_abbrev=False)
    add_common_args(parser, "--process_chunk_size", 10000, "training chunks embedded and searched per block")
    group = parser.add_argument_group("neighbours")
    add_flag(group, "--faiss_index", default=None, help="the merged retrieval index (build_retrieval_index.py)")
    add_flag(group, "--K_neighbors", type=int, default=16, help="neighbours kept per training chunk")
    add_flag(group, "--remove_duplicate", action="store_true",
             help="drop neighbours from the query chunk's own document (input must be the retrieval DB)")
    add_flag(group, "--dedup_margin", type=int, default=2, help="extra neighbours searched when deduplicating")
    add_flag(group, "--nprobe", type=int, default=10, help="IVF lists visited per query")
    add_flag(group, "--stage", type=int, default=None, choices=[1, 2],
             help="1: one shard of the map; 2: merge the shards; none: the whole map at once")
    args = parser.parse_args(argv)
    check_common_args(parser, args, "process_chunk_size")
    for dest in ("K_neighbors", "nprobe"):
        if getattr(args, dest) < 1:
            parser.error(f"--{dest} {getattr(args, dest)} must be at least 1")
    if args.dedup_margin < 0:
        parser.error(f"--dedup_margin {args.dedup_margin} must not be negative")
    if args.stage is None and (args.shard_id is not None or (args.total_shards or 1) > 1):
        parser.error("--shard_id/--total_shards select a shard of --stage 1 (without --stage the whole map is "
                     "built, in shards by rank only under torchrun)")
    if args.stage == 2:
        if not args.shard_index_input:
            parser.error("--stage 2 needs --shard_index_input (the prefix of the stage-1 outputs)")
    else:
        if not args.input_file or not args.faiss_index:
            parser.error("building the map needs --input_file (training data) and --faiss_index")
    return args


def build_shard(args, output_file, shard_id, total_shards):
    from megatron.core.datasets.knn_map import KNNMapWriter
    from megatron.retrieval import retro_embed, retro_index

    dataset, tokenizer = open_input(args)
    dedup = args.remove_duplicate and dataset.retrieval_db
    if args.remove_duplicate and not dedup:
        log(f" > --remove_duplicate has no effect: {args.input_file} is not a retrieval DB, so its chunk ids "
            f"are not the index's")
    index = retro_index.read_index(args.faiss_index)
    device = retro_embed.select_device(args.devices)
    index = retro_index.to_gpus(index) if device != "cpu" else index
    model = retro_embed.load_sentence_transformer(args.sentence_transformer_model, device)
    if retro_embed.embedding_dimension(model) != index.d:
        raise RetroToolError(f"--sentence_transformer_model {args.sentence_transformer_model} embeds in "
                             f"{retro_embed.embedding_dimension(model)} dimensions, the index has {index.d}")
    start, stop = retro_index.shard_range(dataset.chunks, shard_id, total_shards)
    k = args.K_neighbors
    search_k = k + args.dedup_margin if dedup else k
    log(f" > shard {shard_id}/{total_shards}: training chunks [{start}, {stop}) of {dataset.chunks}; "
        f"searching {search_k} neighbours (nprobe {args.nprobe}) in {index.ntotal} chunks")
    texts = retro_embed.ChunkTexts(dataset, tokenizer)
    t0 = time.perf_counter()
    with KNNMapWriter(output_file, k, start) as writer, progress_bar(stop - start, f"knn shard {shard_id}") as bar:
        for ids, embeddings in retro_embed.embed_chunk_blocks(np.arange(start, stop), texts, model,
                                                              args.process_chunk_size, args.batch_size,
                                                              args.workers, bar):
            neighbours = retro_index.query_neighbours(index, embeddings, search_k, args.nprobe)
            if dedup:
                first, end = dataset.chunk_document_range(ids)
                neighbours = retro_index.remove_same_document(neighbours, first, end, k)
            writer.write(neighbours)
    elapsed = time.perf_counter() - t0
    log(f" > {stop - start} chunks in {elapsed:.1f} s ({(stop - start) / max(elapsed, 1e-9):.0f} chunks/s); "
        f"wrote {output_file}")


def _barrier():
    import torch.distributed as dist

    if not dist.is_initialized():
        dist.init_process_group("gloo")
    dist.barrier()


def main(argv=None):
    args = get_args(argv)
    from megatron.core.datasets.knn_map import KNNMapError, merge_knn_files
    from megatron.retrieval.retro_embed import ModelNotFoundError

    try:
        if args.stage == 2:
            merged = merge_knn_files(args.shard_index_input, args.output_file)
            log(f" > merged {args.shard_index_input}* into {args.output_file}: chunks "
                f"[{merged.chunk_start_id}, {merged.chunk_end_id}), K={merged.K}")
            return 0
        shard_id, total_shards = shard_of(args)
        if args.stage == 1:
            build_shard(args, args.output_file, shard_id, total_shards)
        elif total_shards == 1:
            build_shard(args, args.output_file, 0, 1)
        else:
            # Without --stage under torchrun: every rank builds its shard, rank 0 merges them.
            shard_path = f"{args.output_file}.shard{shard_id:05d}"
            build_shard(args, shard_path, shard_id, total_shards)
            _barrier()
            if shard_id == 0:
                merge_knn_files([f"{args.output_file}.shard{i:05d}" for i in range(total_shards)], args.output_file)
                for i in range(total_shards):
                    os.unlink(f"{args.output_file}.shard{i:05d}")
                log(f" > merged {total_shards} shards into {args.output_file}")
            _barrier()
    except (RetroToolError, KNNMapError, ModelNotFoundError, FileNotFoundError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
