"""NeMo's RETRO data recipe end to end (examples/retro_data_demo.sh at tiny sizes) and its guarantees:
the exact-index KNN map equals a brute-force top-K over the same embeddings, no neighbour comes from
the query's own document, the sharded map equals the one built in one go; retmmap preprocessing keeps
input order for any --workers and holds the tokens of the mmap path."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from megatron.core.datasets.indexed_dataset import IndexedDataset
from megatron.core.datasets.knn_map import KNNMap
from megatron.core.datasets.retro_indexed_dataset import RetrievalIndexedDataset

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
K, MARGIN = 3, 6


def run(*args, check=True):
    result = subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True, cwd=REPO)
    if check and result.returncode:
        raise AssertionError(f"{args[0]} failed ({result.returncode}):\n{result.stderr[-3000:]}")
    return result


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("retro_demo")
    env = dict(os.environ, PYTHON=sys.executable, DEMO_DIR=str(out), DOCS="12", MAX_CHARS="450", CHUNK="32", STRIDE="32",
               TRAIN_INDEX_SIZE="40", FACTORY="Flat", SHARDS="2", K=str(K), MARGIN=str(MARGIN), BATCH="64",
               WORKERS="2")
    result = subprocess.run(["bash", os.path.join(REPO, "examples", "retro_data_demo.sh")], env=env,
                            capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "== done" in result.stdout
    return out


def tokenizer_flags(d):
    return ["--tokenizer-library=megatron", "--tokenizer-type=GPT2BPETokenizer",
            f"--merge-file={d}/gpt2/merges.txt", f"--vocab-file={d}/gpt2/vocab.json"]


def reference_knn(db, tokenizer_args):
    """Brute force: every chunk's text embedded by SentenceTransformer.encode, scores by inner product,
    top K+margin, same-document neighbours removed by a plain loop, -1 padding."""
    from megatron.retrieval.retro_embed import load_sentence_transformer
    from megatron.tokenizer import build_tokenizer

    tokenizer = build_tokenizer(tokenizer_args)
    texts = []
    for c in range(db.chunks):
        tokens = [int(t) for t in db.get_chunk(c, force_no_cont_ids=True) if int(t) != tokenizer.pad]
        texts.append(tokenizer.detokenize(tokens))
    model = load_sentence_transformer("sentence-transformers/all-MiniLM-L6-v2")
    emb = model.encode(texts, batch_size=16, convert_to_numpy=True).astype(np.float64)
    scores = emb @ emb.T
    rows = []
    for q in range(db.chunks):
        doc = db.from_chunk_id_to_doc_id(q)
        candidates = np.argsort(-scores[q], kind="stable")[:K + MARGIN]
        kept = [int(c) for c in candidates if db.from_chunk_id_to_doc_id(int(c)) != doc][:K]
        rows.append(kept + [-1] * (K - len(kept)))
    return np.array(rows), scores


def test_knn_map_matches_brute_force_and_sharding(demo):
    import faiss

    from megatron.retrieval.retro_index import read_index

    db = RetrievalIndexedDataset(str(demo / "retro_db_text_document"))
    assert db.retrieval_db and db.chunk_size == 32 and 30 <= db.chunks <= 120
    index = read_index(str(demo / "final.index"))
    assert index.ntotal == db.chunks
    np.testing.assert_array_equal(np.sort(faiss.vector_to_array(index.id_map)), np.arange(db.chunks))

    sharded = KNNMap(str(demo / "knn_final.save"))
    assert (sharded.K, sharded.chunk_start_id, len(sharded)) == (K, 0, db.chunks)
    knn = np.asarray(sharded.knn_map)

    class Args:
        tokenizer_type, tokenizer_model, vocab_extra_ids, need_pad_id, rank = "GPT2BPETokenizer", None, 0, True, 1
        vocab_file, merge_file = f"{demo}/gpt2/vocab.json", f"{demo}/gpt2/merges.txt"

    reference, scores = reference_knn(db, Args())
    for q in range(db.chunks):
        own = db.chunk_document_range(q)
        assert not ((knn[q] >= own[0]) & (knn[q] < own[1])).any(), f"chunk {q} has a neighbour from its document"
        same_slots = knn[q] >= 0
        np.testing.assert_array_equal(same_slots, reference[q] >= 0)
        # Equal ids, or an exact tie swapped (scores equal to float32 precision).
        np.testing.assert_allclose(scores[q, knn[q][same_slots]], scores[q, reference[q][same_slots]], atol=2e-5)
    assert (knn == reference).mean() > 0.95

    # The same map in one go (no --stage) equals the merged shards.
    one_go = demo / "knn_one_go.save"
    run("tools/retro/build_knn_map_index.py", f"--input_file={demo}/retro_db_text_document",
        f"--faiss_index={demo}/final.index", *tokenizer_flags(demo), "--remove_duplicate", f"--K_neighbors={K}",
        f"--dedup_margin={MARGIN}", "--sentence_transformer_model=all-MiniLM-L6-v2", "--batch_size=64",
        "--process_chunk_size=20", f"--output_file={one_go}")
    np.testing.assert_array_equal(np.asarray(KNNMap(str(one_go)).knn_map), knn)


def test_index_flags_fail_early_in_one_line(demo):
    common = [f"--input_file={demo}/retro_db_text_document", *tokenizer_flags(demo)]
    bad = run("tools/retro/build_retrieval_index.py", *common, "--train_index_size=50", "--stage=0",
              f"--output_file={demo}/x.index", check=False)  # the default IVF,PQ8 index
    assert bad.returncode == 1 and "too small" in bad.stderr and "Traceback" not in bad.stderr
    assert len(bad.stderr.strip().splitlines()) == 1
    unknown = run("tools/retro/build_retrieval_index.py", *common, "--train_index_size=50", "--stage=0",
                  "--sentence_transformer_model=bert-base-nli-mean-tokens", f"--output_file={demo}/x.index",
                  check=False)
    assert unknown.returncode == 1 and "no local copy" in unknown.stderr and "Traceback" not in unknown.stderr
    assert not os.path.exists(demo / "x.index")
    gap = run("tools/retro/build_knn_map_index.py", "--stage=2", f"--shard_index_input={demo}/knn_shard1",
              f"--output_file={demo}/y.save")
    assert KNNMap(str(demo / "y.save")).chunk_start_id > 0  # one shard alone merges (contiguity holds)
    assert "merged" in gap.stderr


def test_retmmap_preprocess_order_ftfy_and_tokens(demo, tmp_path):
    corpus = demo / "corpus.json"
    base = ["tools/preprocess_data.py", "--json-keys=text", *tokenizer_flags(demo), "--append-eod", "--need-pad-id"]
    run(*base, f"--input={corpus}", f"--output-prefix={tmp_path}/plain", "--workers=1")
    plain = IndexedDataset(str(tmp_path / "plain_text_document"))
    for workers in (1, 2):  # tiny worker tasks (--chunk-size 3) so two workers interleave
        run(*base, f"--input={corpus}", "--dataset-impl=retmmap", "--chunk_size=16", "--chunk_stride_size=8",
            f"--output-prefix={tmp_path}/r{workers}", f"--workers={workers}", "--chunk-size=3")
        ds = RetrievalIndexedDataset(str(tmp_path / f"r{workers}_text_document"))
        assert len(ds) == len(plain) and ds.stride == 8 and not ds.retrieval_db
        for i in range(len(ds)):
            np.testing.assert_array_equal(ds[i], plain[i])
    # --apply-ftfy repairs mojibake: the broken text tokenizes as the clean one.
    broken, clean = tmp_path / "broken.json", tmp_path / "clean.json"
    broken.write_text(json.dumps({"text": "The caf\u00c3\u00a9 is open."}) + "\n", encoding="utf-8")
    clean.write_text(json.dumps({"text": "The caf\u00e9 is open."}) + "\n", encoding="utf-8")
    run(*base, f"--input={broken}", "--dataset-impl=retmmap", "--apply-ftfy", f"--output-prefix={tmp_path}/b")
    run(*base, f"--input={clean}", f"--output-prefix={tmp_path}/c")
    np.testing.assert_array_equal(RetrievalIndexedDataset(str(tmp_path / "b_text_document"))[0],
                                  IndexedDataset(str(tmp_path / "c_text_document"))[0])
    bad = run(*base[:-1], f"--input={corpus}", "--dataset-impl=retmmap", "--split-sentences",
              f"--output-prefix={tmp_path}/z", check=False)
    assert bad.returncode == 2 and "--split-sentences does not apply" in bad.stderr
    no_pad = run(*base[:-1], f"--input={corpus}", "--dataset-impl=retmmap", f"--output-prefix={tmp_path}/z",
                 check=False)
    assert no_pad.returncode == 1 and "add --need-pad-id" in no_pad.stderr and "Traceback" not in no_pad.stderr


@pytest.mark.slow
def test_knn_map_by_ranks_under_torchrun(demo):
    """Without --stage under torchrun: one shard per rank, merged by rank 0, equal to the sharded map."""
    out = demo / "knn_torchrun.save"
    result = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_port=29631",
         "tools/retro/build_knn_map_index.py", f"--input_file={demo}/retro_db_text_document",
         f"--faiss_index={demo}/final.index", *tokenizer_flags(demo), "--remove_duplicate", f"--K_neighbors={K}",
         f"--dedup_margin={MARGIN}", "--batch_size=64", f"--output_file={out}"],
        capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-3000:]
    np.testing.assert_array_equal(np.asarray(KNNMap(str(out)).knn_map),
                                  np.asarray(KNNMap(str(demo / "knn_final.save")).knn_map))
    assert not list(demo.glob("knn_torchrun.save.shard*"))
