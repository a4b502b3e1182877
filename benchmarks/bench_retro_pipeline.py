#!/usr/bin/env python
"""Benchmark the RETRO data pipeline and print three tables.

1. ``tools/preprocess_data.py``: ``--dataset-impl retmmap --retrieval-db`` against today's mmap path on
   the same corpus and tokenizer (GPT-2-style BPE trained on the demo corpus, ``--append-eod``), at 1
   and 2 workers; median wall time of ``--repeats`` runs of the real tool (start-up included).
   Goal: retmmap within 1.3x of mmap.
2. Chunk embedding: the stage-1 pipeline (``embed_chunk_blocks``: detokenise chunk ids, then
   ``SentenceTransformer.encode``) against ``encode`` alone on the same, already detokenised chunk
   texts; best of ``--repeats`` (the two alternate, so both see the same machine load). Goal: pipeline
   overhead <= 10 % at 1 and 2 workers.
3. faiss add and query rates on those embeddings (tiled to ``--index-vectors`` with small noise):
   Flat, IVF-Flat and NeMo's default IVF-PQ.

    python benchmarks/bench_retro_pipeline.py [--chunks 512] [--repeats 3] [--only preprocess]
"""
import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, REPO)

import numpy as np  # noqa: E402


def wall(cmd):
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return time.perf_counter() - t


def bench_preprocess(work, corpus, vocab, merges, repeats, workers_list):
    tool = [sys.executable, os.path.join(REPO, "tools", "preprocess_data.py"), f"--input={corpus}",
            "--json-keys=text", "--tokenizer-type=GPT2BPETokenizer", f"--vocab-file={vocab}",
            f"--merge-file={merges}", "--append-eod", "--need-pad-id"]
    retmmap = ["--dataset-impl=retmmap", "--retrieval-db", "--chunk_size=64", "--chunk_stride_size=64"]
    size = os.path.getsize(corpus) / 2**20
    print(f"\n### preprocess_data.py, {size:.2f} MiB corpus, median of {repeats}\n")
    print("| workers | mmap s | retmmap s | retmmap / mmap |")
    print("|---|---|---|---|")
    for workers in workers_list:
        times = {"mmap": [], "retmmap": []}
        for _ in range(repeats):  # alternate, so both formats see the same load
            for name, extra in (("mmap", []), ("retmmap", retmmap)):
                prefix = os.path.join(work, f"{name}{workers}")
                times[name].append(wall(tool + extra + [f"--output-prefix={prefix}", f"--workers={workers}"]))
        m, r = statistics.median(times["mmap"]), statistics.median(times["retmmap"])
        print(f"| {workers} | {m:.2f} | {r:.2f} | {r / m:.2f}x (goal <= 1.3x) |")
    return os.path.join(work, f"retmmap{workers_list[0]}_text_document")


def bench_embedding(db_prefix, vocab, merges, chunks, batch, repeats, workers_list):
    from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset
    from megatron.retrieval.retro_embed import ChunkTexts, embed_chunk_blocks, load_sentence_transformer
    from megatron.tokenizer import build_tokenizer

    class Args:
        tokenizer_type, vocab_file, merge_file, need_pad_id, rank = "GPT2BPETokenizer", vocab, merges, True, 1

    tokenizer = build_tokenizer(Args())
    db = RetrievalIndexedDataset(db_prefix, pad_id=tokenizer.pad)
    ids = np.arange(min(chunks, db.chunks))
    texts = ChunkTexts(db, tokenizer)
    model = load_sentence_transformer("all-MiniLM-L6-v2", "cpu")
    chunk_texts = texts(ids)
    model.encode(chunk_texts[:batch], batch_size=batch)  # warm-up
    import torch

    print(f"\n### chunk embedding, {len(ids)} chunks of 64 tokens, all-MiniLM-L6-v2 on CPU "
          f"({torch.get_num_threads()} torch threads), batch {batch}, best of {repeats}\n")
    print("| pipeline workers | encode alone chunks/s | pipeline chunks/s | overhead |")
    print("|---|---|---|---|")
    embeddings = None
    for workers in workers_list:
        alone, piped = [], []
        for _ in range(repeats):
            t = time.perf_counter()
            reference = model.encode(chunk_texts, batch_size=batch, convert_to_numpy=True)
            alone.append(time.perf_counter() - t)
            t = time.perf_counter()
            blocks = list(embed_chunk_blocks(ids, texts, model, block_size=256, batch_size=batch, workers=workers))
            piped.append(time.perf_counter() - t)
        embeddings = np.concatenate([e for _, e in blocks])
        assert np.allclose(embeddings, reference, atol=1e-4)
        a, p = min(alone), min(piped)
        print(f"| {workers} | {len(ids) / a:.1f} | {len(ids) / p:.1f} | {100 * (p / a - 1):+.1f} % (goal <= 10 %) |")
    return embeddings


def bench_index(embeddings, vectors, queries):
    from megatron.retrieval import retro_index

    rng = np.random.default_rng(0)
    reps = -(-vectors // len(embeddings))
    data = np.tile(embeddings, (reps, 1))[:vectors]
    data = (data + rng.normal(scale=0.02, size=data.shape)).astype(np.float32)
    data /= np.linalg.norm(data, axis=1, keepdims=True)
    q = data[rng.integers(0, len(data), size=queries)]
    print(f"\n### faiss (CPU), {vectors} vectors of {data.shape[1]} dims, {queries} queries, K=16\n")
    print("| index | train s | add vectors/s | query/s (nprobe 10) |")
    print("|---|---|---|---|")
    nlist = retro_index.default_nlist(vectors)
    for factory in ("Flat", f"IVF{nlist},Flat", f"IVF{nlist},PQ8"):
        index = retro_index.build_empty_index(data.shape[1], factory)
        t = time.perf_counter()
        retro_index.train_index(index, data[:min(len(data), 40 * nlist)])
        trained = time.perf_counter() - t
        t = time.perf_counter()
        retro_index.add_to_index(index, [(np.arange(len(data)), data)])
        add = time.perf_counter() - t
        t = time.perf_counter()
        retro_index.query_neighbours(index, q, 16, nprobe=10)
        query = time.perf_counter() - t
        print(f"| {factory} | {trained:.2f} | {len(data) / add:,.0f} | {len(q) / query:,.0f} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--chunks", type=int, default=512, help="chunks embedded per run")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--corpus-repeat", type=int, default=2, help="demo corpus copies for preprocessing")
    parser.add_argument("--index-vectors", type=int, default=50000)
    parser.add_argument("--queries", type=int, default=2000)
    parser.add_argument("--only", choices=["preprocess"], help="run only the preprocessing table")
    args = parser.parse_args()
    from tools.make_demo_corpus import write_corpus
    from tools.train_tokenizer import train_tokenizer

    work = tempfile.mkdtemp(prefix="bench_retro_")
    corpus = os.path.join(work, "corpus.json")
    write_corpus(corpus, repeat=args.corpus_repeat)
    train_tokenizer("GPT2BPETokenizer", [corpus], os.path.join(work, "gpt2"), vocab_size=8000)
    vocab, merges = os.path.join(work, "gpt2", "vocab.json"), os.path.join(work, "gpt2", "merges.txt")
    print(f"{os.cpu_count()} CPUs; work dir {work}")
    db = bench_preprocess(work, corpus, vocab, merges, args.repeats, args.workers)
    if args.only == "preprocess":
        return
    embeddings = bench_embedding(db, vocab, merges, args.chunks, args.batch, args.repeats, args.workers)
    bench_index(embeddings, args.index_vectors, args.queries)


if __name__ == "__main__":
    main()
