#!/usr/bin/env python
"""Build the RETRO retrieval index over a retmmap retrieval database, in NeMo's three stages.

    # stage 0: train an (empty) index on the embeddings of a random sample of chunks
    python tools/retro/build_retrieval_index.py --input_file=db_text_document --tokenizer-library=megatron \\
        --tokenizer-type=GPT2BPETokenizer --merge-file=merges.txt --vocab-file=vocab.json \\
        --sentence_transformer_model=all-MiniLM-L6-v2 --train_index_size=20000 --stage=0 \\
        --output_file=pretrained.index
    # stage 1, one job per shard: add the shard's chunks, with their chunk ids as faiss ids
    ... --stage=1 --learned_index=pretrained.index --shard_id=0 --total_shards=2 --output_file=shard0.index
    # stage 2: merge the shards (IVF: on-disk inverted lists) into the final index
    ... --stage=2 --learned_index=pretrained.index --shard_index_input=shard --output_file=final.index

Chunks are detokenised to text and embedded with sentence-transformers in blocks of
``--train_chunk_size`` (memory bounded by the block, not the corpus); outputs are atomic, so a
killed shard job is simply run again.
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
    RetroToolError, add_common_args, check_common_args, gib, log, open_input, progress_bar, shard_of)


def get_args(argv=None):
    parser = argparse.ArgumentParser(description="Build the RETRO faiss index in stages (NeMo's recipe).",
                                     allow_abbrev=False)
    add_common_args(parser, "--train_chunk_size", 10000, "chunks embedded and added per block (stage 1)")
    group = parser.add_argument_group("index")
    add_flag(group, "--stage", type=int, required=True, choices=[0, 1, 2],
             help="0: train on a sample; 1: add one shard; 2: merge the shards")
    add_flag(group, "--percent", type=float, default=1.0, help="index only the first fraction of the documents")
    add_flag(group, "--train_index_size", type=int, default=None, help="chunks sampled to train the index (stage 0)")
    add_flag(group, "--learned_index", default=None, help="the trained index of stage 0 (stages 1 and 2)")
    add_flag(group, "--faiss_factory", default=None,
             help="any faiss index-factory string (e.g. Flat, IVF64,Flat, OPQ32_256,IVF4096,PQ32); default: "
                  "IVF(4 sqrt(chunks)),PQ(--subquantizers)")
    add_flag(group, "--faiss_factory_metric", default="IP", choices=["IP", "L2"], help="the index's metric")
    add_flag(group, "--no_pq", action="store_true", help="default index without product quantization (IVF-Flat)")
    add_flag(group, "--subquantizers", type=int, default=8, help="PQ sub-quantizers of the default index")
    args = parser.parse_args(argv)
    check_common_args(parser, args, "train_chunk_size")
    if not 0 < args.percent <= 1:
        parser.error(f"--percent {args.percent} must lie in (0, 1]")
    if args.stage == 0 and (args.train_index_size is None or args.train_index_size < 1):
        parser.error("--stage 0 needs --train_index_size N (chunks to train the index on)")
    if args.stage in (1, 2) and not args.learned_index:
        parser.error(f"--stage {args.stage} needs --learned_index (the output of stage 0)")
    if args.stage in (0, 1) and not args.input_file:
        parser.error(f"--stage {args.stage} needs --input_file (the retmmap retrieval database)")
    if args.stage == 2 and not args.shard_index_input:
        parser.error("--stage 2 needs --shard_index_input (the prefix of the stage-1 outputs)")
    return args


def indexed_chunks(dataset, percent):
    """Chunks of the first ``percent`` of the documents (NeMo's --percent)."""
    if percent >= 1:
        return dataset.chunks
    return dataset.chunk_ids_before_document(int(len(dataset) * percent))


def stage0(args, dataset, tokenizer):
    from megatron.retrieval import retro_embed, retro_index

    total = indexed_chunks(dataset, args.percent)
    if total == 0:
        raise RetroToolError(f"--input_file {args.input_file}: no chunks to index")
    factory = retro_index.factory_string(total, args.faiss_factory, args.no_pq, args.subquantizers)
    retro_index.check_training_size(factory, args.train_index_size)  # before loading anything heavy
    device = retro_embed.select_device(args.devices)
    model = retro_embed.load_sentence_transformer(args.sentence_transformer_model, device)
    dim = retro_embed.embedding_dimension(model)
    retro_index.check_training_size(factory, args.train_index_size, dim)
    index = retro_index.build_empty_index(dim, factory, args.faiss_factory_metric)
    log(f" > index {factory} ({args.faiss_factory_metric}) over {total} chunks of dimension {dim}: about "
        f"{gib(retro_index.index_memory_bytes(index, total, dim))} when full; training embeddings "
        f"{gib(args.train_index_size * dim * 4)}; stage-1 blocks {gib(args.train_chunk_size * dim * 4)}")
    sample = np.random.default_rng(args.seed).integers(0, total, size=args.train_index_size)
    texts = retro_embed.ChunkTexts(dataset, tokenizer)
    with progress_bar(len(sample), "embed (train sample)") as bar:
        blocks = list(retro_embed.embed_chunk_blocks(sample, texts, model, args.train_chunk_size, args.batch_size,
                                                     args.workers, bar))
    embeddings = np.concatenate([e for _, e in blocks])
    start = time.perf_counter()
    trained = retro_index.train_index(index if device == "cpu" else retro_index.to_gpus(index), embeddings)
    log(f" > trained in {time.perf_counter() - start:.1f} s")
    retro_index.write_index(trained, args.output_file)
    log(f" > wrote the trained index {args.output_file}")


def stage1(args, dataset, tokenizer):
    from megatron.retrieval import retro_embed, retro_index

    total = indexed_chunks(dataset, args.percent)
    shard_id, total_shards = shard_of(args)
    start, stop = retro_index.shard_range(total, shard_id, total_shards)
    index = retro_index.read_index(args.learned_index)
    if not index.is_trained or index.ntotal:
        raise RetroToolError(f"--learned_index {args.learned_index}: expected the empty trained index of stage 0 "
                             f"(trained: {index.is_trained}, vectors: {index.ntotal})")
    device = retro_embed.select_device(args.devices)
    model = retro_embed.load_sentence_transformer(args.sentence_transformer_model, device)
    if retro_embed.embedding_dimension(model) != index.d:
        raise RetroToolError(f"--sentence_transformer_model {args.sentence_transformer_model} embeds in "
                             f"{retro_embed.embedding_dimension(model)} dimensions, the index has {index.d}")
    log(f" > shard {shard_id}/{total_shards}: chunks [{start}, {stop}) of {total}; the shard index will take about "
        f"{gib(retro_index.index_memory_bytes(index, stop - start, index.d))}, each block of embeddings "
        f"{gib(min(args.train_chunk_size, stop - start) * index.d * 4)}")
    texts = retro_embed.ChunkTexts(dataset, tokenizer)
    t0 = time.perf_counter()
    with progress_bar(stop - start, f"embed+add shard {shard_id}") as bar:
        added = retro_index.add_to_index(index, retro_embed.embed_chunk_blocks(
            np.arange(start, stop), texts, model, args.train_chunk_size, args.batch_size, args.workers, bar))
    elapsed = time.perf_counter() - t0
    retro_index.write_index(index, args.output_file)
    log(f" > added {added} chunks in {elapsed:.1f} s ({added / max(elapsed, 1e-9):.0f} chunks/s); "
        f"wrote {args.output_file}")


def stage2(args):
    from megatron.retrieval import retro_index

    total = retro_index.merge_index_shards(args.learned_index, args.shard_index_input, args.output_file, log)
    log(f" > wrote the merged index {args.output_file} ({total} vectors)")


def main(argv=None):
    args = get_args(argv)
    from megatron.retrieval.retro_embed import ModelNotFoundError
    from megatron.retrieval.retro_index import IndexPlanError

    try:
        if args.stage == 2:
            stage2(args)
        else:
            dataset, tokenizer = open_input(args)
            (stage0 if args.stage == 0 else stage1)(args, dataset, tokenizer)
    except (RetroToolError, IndexPlanError, ModelNotFoundError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
