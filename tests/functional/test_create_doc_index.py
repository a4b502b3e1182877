"""tools/create_doc_index.py: every block embedded exactly once, whatever the number of ranks;
shards merged with a coverage check. Also holds the tiny corpus and ICT checkpoint that
test_retriever_eval.py reuses (built once per process)."""
import json
import os
import random
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import pytest

from test_training_lib import REPO, run_script

from megatron.retrieval.block_store import BlockData, BlockStoreError, shard_dir
from megatron.retrieval.indexer import IndexBuilder

EVIDENCE = os.path.join(REPO, "tests", "data", "retrieval", "evidence_sample.tsv")
_CACHE = {}


def vocab_file() -> str:
    from megatron.tokenizer import bert_uncased_vocab_path

    return bert_uncased_vocab_path()


def tiny_corpus() -> str:
    """Prefix of a 24-document body + titles corpus (``{prefix}_text_sentence``, ``{prefix}_title_sentence``)."""
    if "corpus" in _CACHE:
        return _CACHE["corpus"]
    directory = tempfile.mkdtemp(prefix="retrieval_corpus_")
    rng = random.Random(3)
    topics = ["river", "mountain", "city", "planet", "ocean", "forest", "desert", "island", "language", "music"]
    words = "the a of in and is was large small old new north south water stone light sound people story".split()
    with open(os.path.join(directory, "corpus.json"), "w", encoding="utf-8") as handle:
        for doc in range(24):
            topic = topics[doc % len(topics)]
            sentences = [f"The {topic} number {doc} sentence {s} "
                         + " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "."
                         for s in range(rng.randint(3, 8))]
            handle.write(json.dumps({"title": f"{topic.title()} {doc}", "text": " ".join(sentences)}) + "\n")
    subprocess.run([sys.executable, "tools/preprocess_data.py", "--input", f"{directory}/corpus.json",
                    "--json-keys", "text", "title", "--split-sentences", "--tokenizer-type", "BertWordPieceLowerCase",
                    "--vocab-file", vocab_file(), "--output-prefix", f"{directory}/wiki", "--workers", "1"],
                   check=True, cwd=REPO, capture_output=True, text=True, timeout=300)
    _CACHE["corpus"] = f"{directory}/wiki"
    return _CACHE["corpus"]


MODEL_ARGS = ["--num-layers", "2", "--hidden-size", "32", "--num-attention-heads", "4", "--seq-length", "32",
              "--max-position-embeddings", "64", "--ict-head-size", "16", "--distributed-backend", "gloo"]


def tiny_ict_checkpoint() -> str:
    """A biencoder checkpoint trained for 2 iterations by pretrain_ict.py on the tiny corpus."""
    if "checkpoint" in _CACHE:
        return _CACHE["checkpoint"]
    prefix = tiny_corpus()
    save = tempfile.mkdtemp(prefix="ict_checkpoint_")
    run_script("pretrain_ict.py", MODEL_ARGS + [
        "--batch-size", "4", "--train-iters", "2", "--data-path", f"{prefix}_text_sentence",
        "--titles-data-path", f"{prefix}_title_sentence", "--vocab-file", vocab_file(), "--lr", "1e-4",
        "--num-workers", "0", "--lr-decay-style", "linear", "--weight-decay", "1e-2", "--clip-grad", "1.0",
        "--save", save, "--save-interval", "2", "--query-in-block-prob", "0.1", "--split", "80,10,10",
        "--eval-iters", "1", "--eval-interval", "1000", "--log-interval", "1"])
    _CACHE["checkpoint"] = save
    return save


def index_args(*extra):
    return MODEL_ARGS + ["--batch-size", "2", "--vocab-file", vocab_file(), "--ict-load", tiny_ict_checkpoint(),
                         "--indexer-batch-size", "8", "--indexer-log-interval", "2", *extra]


def test_two_ranks_build_the_same_block_store_as_one(tmp_path):
    prefix = tiny_corpus()
    data = ["--data-path", f"{prefix}_text_sentence", "--titles-data-path", f"{prefix}_title_sentence"]
    one = run_script("tools/create_doc_index.py", index_args(*data, "--block-data-path", f"{tmp_path}/one"))
    assert "blocks/s | ETA" in one.stdout
    two = run_script("tools/create_doc_index.py",
                     index_args(*data, "--fp16", "--block-data-path", f"{tmp_path}/embedded_blocks.pkl"), nproc=2)
    assert "--fp16 on a CPU: embedding in float32" in two.stdout
    single, merged = BlockData.load(f"{tmp_path}/one"), BlockData.load(f"{tmp_path}/embedded_blocks.pkl")
    assert len(single) > 24 and np.array_equal(single.ids(), merged.ids())
    assert np.array_equal(single.meta(), merged.meta())
    assert single.embeddings().dtype == np.float16 and merged.embeddings().dtype == np.float16
    np.testing.assert_allclose(single.embeddings().astype(np.float32), merged.embeddings().astype(np.float32),
                               rtol=2e-3, atol=2e-3)
    # The shards are gone once merged: only the two stores remain.
    assert not os.path.exists(shard_dir(f"{tmp_path}/embedded_blocks.pkl"))
    assert sorted(os.listdir(tmp_path)) == ["embedded_blocks.pkl", "one"]


def _block_corpus():
    from megatron.retrieval.evidence import BlockCorpus
    from megatron.tokenizer.bert import BertWordPieceLowerCase

    prefix = tiny_corpus()
    tokenizer = BertWordPieceLowerCase(vocab_file())
    return BlockCorpus(f"{prefix}_text_sentence", f"{prefix}_title_sentence", 32, 1234, tokenizer), tokenizer


def test_block_corpus_yields_every_block_once_with_its_title():
    corpus, tokenizer = _block_corpus()
    ids = corpus.all_row_ids()
    assert sorted(ids.tolist()) == list(range(len(corpus)))
    item = corpus[3]
    start, end, doc = item["meta"].tolist()
    tokens = item["tokens"][item["pad_mask"] == 1].tolist()
    title = [int(t) for t in corpus.ict.title_dataset[doc]]
    body = [int(t) for s in corpus.ict.block_dataset[start:end] for t in s]
    # Blocks close after passing their target length: the body is cut to fit 32 tokens.
    assert tokens == [tokenizer.cls, *title, tokenizer.sep, *body[:32 - 3 - len(title)], tokenizer.sep]
    text, title_text = corpus.passage(int(item["row_id"]))
    assert title_text == tokenizer.detokenize(title) and text.startswith("the ")


def _embed_by_row(tokens, pad_mask):
    import torch

    # A deterministic "tower": the embedding is a function of the tokens alone.
    real = (tokens * pad_mask).float()
    return torch.stack([real.sum(1), real.max(1).values, pad_mask.sum(1).float()], dim=1) / 1000.0


class _Numbers:
    """A corpus whose row ids are not positions: 10 * position + 5."""

    def __init__(self, n):
        self.n = n

    def __len__(self):
        return self.n

    def all_row_ids(self):
        return np.arange(self.n, dtype=np.int64) * 10 + 5

    def __getitem__(self, idx):
        tokens = np.arange(idx, idx + 6, dtype=np.int64)
        return {"row_id": np.int64(idx * 10 + 5), "tokens": tokens, "pad_mask": np.ones(6, np.int64)}


def _index_on_rank(rank, world_size, path, n):
    IndexBuilder(_Numbers(n), _embed_by_row, path, batch_size=2, log_interval=1, dp_rank=rank, dp_size=world_size,
                 global_rank=rank).build_and_save_index()
    return rank


def test_uneven_split_over_three_ranks_covers_every_item(tmp_path):
    from tests.distributed.spawn import run_ranks

    path = f"{tmp_path}/store"
    run_ranks(_index_on_rank, 3, path, 10)
    store = BlockData.load(path)
    dataset = _Numbers(10)
    assert store.ids().tolist() == dataset.all_row_ids().tolist()
    import torch

    for position in (0, 4, 9):
        item = dataset[position]
        want = _embed_by_row(torch.from_numpy(item["tokens"])[None], torch.from_numpy(item["pad_mask"])[None])
        np.testing.assert_allclose(store.embeddings()[position].astype(np.float32),
                                   want[0].numpy().astype(np.float16).astype(np.float32))


def test_merge_refuses_a_missing_shard_and_a_missing_block(tmp_path):
    path = f"{tmp_path}/store"
    builder = IndexBuilder(_Numbers(7), _embed_by_row, path, batch_size=3, dp_rank=0, dp_size=2)
    builder.embed_shard().save_shard(path, 0)
    with pytest.raises(BlockStoreError, match="rank 1 .* is missing"):
        BlockData.merge_shards_and_save(path, 2, expected_ids=_Numbers(7).all_row_ids())
    # Rank 1's share written, but the corpus has grown by one block since: the coverage check names it.
    IndexBuilder(_Numbers(7), _embed_by_row, path, batch_size=3, dp_rank=1, dp_size=2).embed_shard().save_shard(path, 1)
    with pytest.raises(BlockStoreError, match=r"1 missing \(e.g. \[75\]\)"):
        BlockData.merge_shards_and_save(path, 2, expected_ids=_Numbers(8).all_row_ids())
    BlockData.merge_shards_and_save(path, 2, expected_ids=_Numbers(7).all_row_ids())
    assert len(BlockData.load(path)) == 7
    shutil.rmtree(path)


def test_missing_checkpoint_is_one_line(tmp_path):
    result = run_script("tools/create_doc_index.py", MODEL_ARGS + [
        "--batch-size", "2", "--vocab-file", vocab_file(), "--evidence-data-path", EVIDENCE,
        "--retriever-seq-length", "48", "--block-data-path", f"{tmp_path}/store"], check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("create_doc_index.py: error: --ict-load (or --load) is required")
