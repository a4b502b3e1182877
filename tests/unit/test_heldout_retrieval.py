"""Held-out ICT retrieval metrics: ranks, ties, top-k, the random baseline and the query set."""
import numpy as np
import pytest

from megatron.core.datasets.ict_dataset import ICTDataset
from megatron.retrieval import heldout
from test_helpers_fixtures import FakeWordPieceTokenizer, make_sentence_corpus, make_titles


def test_ranks_count_better_and_tied_blocks():
    blocks = np.eye(4, dtype=np.float32)
    queries = np.array([[1, 0, 0, 0],  # own block best: rank 0
                        [0, 0.5, 0.9, 0],  # block 2 beats its own: rank 1
                        [0, 0, 0, 0],  # everything ties: pessimistic rank 3
                        [0.2, 0.3, 0.1, 0.25]], dtype=np.float32)  # only block 1 beats own 3: rank 1
    ranks = heldout.retrieval_ranks(queries, blocks)
    assert ranks.tolist() == [0, 1, 3, 1]
    accuracies = heldout.topk_accuracies(ranks, [1, 2, 3, 4])
    assert accuracies == {1: 25.0, 2: 75.0, 3: 75.0, 4: 100.0}


def test_random_expectation_and_table():
    assert heldout.random_topk_accuracies(40, [1, 20, 100]) == {1: 2.5, 20: 50.0, 100: 100.0}
    table = heldout.format_table([("random (expected)", {1: 2.5, 5: 12.5})], [1, 5], 40)
    assert "40 queries" in table and "top-5" in table and "12.50" in table


def test_perfect_embeddings_hit_everything():
    rng = np.random.default_rng(0)
    basis, _ = np.linalg.qr(rng.standard_normal((32, 32)))
    blocks = basis[:30].astype(np.float32)  # orthonormal: a query equal to its block scores 1, others 0
    ranks = heldout.retrieval_ranks(blocks * 3, blocks)
    assert ranks.tolist() == [0] * 30
    assert heldout.topk_accuracies(ranks, [1]) == {1: 100.0}


def test_heldout_set_removes_each_query_from_its_block(tmp_path):
    tokenizer = FakeWordPieceTokenizer()
    body, _ = make_sentence_corpus(str(tmp_path / "body"), tokenizer, num_docs=30, max_sentences=6)
    titles = make_titles(str(tmp_path / "titles"), tokenizer, 30)
    dataset = ICTDataset("heldout", body, titles, str(tmp_path / "body"), 1, None, 48, 0.0, 7, tokenizer,
                         document_range=(20, 30))
    data = heldout.build_heldout_set(dataset)
    assert len(data) == len(dataset) and len(np.unique(data.block_ids)) == len(data)
    for i in range(len(data)):
        query = data.query_tokens[i][data.query_pad_mask[i] == 1][1:-1].tolist()
        start, end, doc, _ = dataset.samples_mapping[i].tolist()
        assert 20 <= doc < 30
        sentences = [body[s].tolist() for s in range(start, end)]
        assert query in [s[:46] for s in sentences]
        block = data.block_tokens[i][data.block_pad_mask[i] == 1].tolist()
        # The query's sentence is gone: the block is shorter by it (up to truncation at 48 tokens).
        full = sum(len(s) for s in sentences) + len(titles[doc]) + 3
        assert len(block) <= min(48, full - len(query))
    assert len(heldout.build_heldout_set(dataset, max_queries=3)) == 3
    kept = ICTDataset("kept", body, titles, str(tmp_path / "body"), 1, None, 48, 1.0, 7, tokenizer,
                      document_range=(20, 30))
    with pytest.raises(ValueError, match="query_in_block_prob=0"):
        heldout.build_heldout_set(kept)
