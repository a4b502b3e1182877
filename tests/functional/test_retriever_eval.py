"""Retrieval evaluation (tasks/main.py --task RETRIEVER-EVAL / ICT-ZEROSHOT-NQ): the metric on a
hand-made ranking with known answers, and the whole task end to end on an ICT checkpoint."""
import os
import re
import shutil

import numpy as np
import pytest

from test_create_doc_index import EVIDENCE, MODEL_ARGS, tiny_ict_checkpoint, vocab_file
from test_training_lib import REPO, run_script

from megatron.retrieval.block_store import BlockData
from megatron.retrieval.evidence import EvidenceDataset, read_qa_file
from megatron.retrieval.faiss_index import FaissMIPSIndex
from megatron.retrieval.qa_validation import has_answer
from tasks.orqa.evaluate import clamp_topk, format_report, retrieval_accuracies

QUESTIONS = os.path.join(REPO, "tests", "data", "retrieval", "nq_sample.tsv")
# The rank at which each sample question's only answer-bearing passage is placed.
ANSWER_RANKS = [1, 2, 5, 6, 10, 11, 3, 12]


@pytest.fixture(scope="module")
def sample():
    from megatron.tokenizer.bert import BertWordPieceLowerCase

    evidence = EvidenceDataset(EVIDENCE, BertWordPieceLowerCase(vocab_file()), 64)
    questions, answers = read_qa_file(QUESTIONS)
    return evidence, questions, answers


def _hand_made_search(evidence, answers):
    """One-hot passage embeddings and query vectors that rank the passages in a chosen order:
    the answer passage of question q lands exactly at ANSWER_RANKS[q]."""
    row_ids = evidence.all_row_ids().tolist()
    answer_passage = []
    for question_answers in answers:
        holders = [r for r in row_ids if has_answer(question_answers, evidence.passage(r)[0])]
        assert len(holders) == 1, f"{question_answers} should occur in exactly one sample passage, got {holders}"
        answer_passage.append(holders[0])
    store = BlockData()
    store.add_block_data(np.array(row_ids), np.eye(len(row_ids), dtype=np.float16))
    queries = np.zeros((len(answers), len(row_ids)), np.float32)
    for q, (passage, rank) in enumerate(zip(answer_passage, ANSWER_RANKS)):
        order = [r for r in row_ids if r != passage]
        order.insert(rank - 1, passage)
        for position, row_id in enumerate(order):
            queries[q, row_ids.index(row_id)] = len(row_ids) - position  # distinct: no ties
    return FaissMIPSIndex(len(row_ids), block_data=store), queries


def test_topk_accuracy_on_a_hand_made_ranking(sample):
    evidence, questions, answers = sample
    index, queries = _hand_made_search(evidence, answers)
    accuracy, measured = retrieval_accuracies(queries, answers, index, lambda r: evidence.passage(r)[0],
                                              [1, 5, 10, 20], 100)
    # Answer ranks 1, 2, 5, 6, 10, 11, 3, 12 of 8 questions; top-20 is measured at the 12 blocks.
    assert accuracy == {1: 12.5, 5: 50.0, 10: 75.0, 20: 100.0}
    assert measured == {1: 1, 5: 5, 10: 10, 20: 12}
    lines = format_report("RETRIEVER-EVAL", "dev", len(questions), accuracy, measured, 12, 100)
    assert lines[1] == " > RETRIEVER-EVAL dev: top-1 accuracy: 12.50 %"
    assert lines[4] == " > RETRIEVER-EVAL dev: top-20 accuracy: 100.00 % (measured at top-12: the corpus has 12 blocks)"


def test_retrieving_fewer_blocks_caps_every_k(sample):
    evidence, _, answers = sample
    index, queries = _hand_made_search(evidence, answers)
    accuracy, measured = retrieval_accuracies(queries, answers, index, lambda r: evidence.passage(r)[0],
                                              [1, 5], 4, num_workers=0)
    assert measured == {1: 1, 5: 4} and accuracy == {1: 12.5, 5: 37.5}
    with pytest.raises(ValueError, match="--faiss-topk-retrievals must be positive"):
        clamp_topk([1], 0, 12)
    with pytest.raises(ValueError, match="--retriever-report-topk-accuracies must be positive"):
        clamp_topk([0, 5], 10, 12)


ACCURACY_RE = re.compile(r"^ > (\S+) (dev|test): top-(\d+) accuracy: ([\d.]+) %", re.M)


def _accuracies(stdout):
    return {(m.group(2), int(m.group(3))): float(m.group(4)) for m in ACCURACY_RE.finditer(stdout)}


def _eval_args(store, *extra, task="ICT-ZEROSHOT-NQ"):
    return ["--task", task, *MODEL_ARGS, "--micro-batch-size", "2", "--vocab-file", vocab_file(),
            "--ict-load", tiny_ict_checkpoint(), "--evidence-data-path", EVIDENCE, "--retriever-seq-length", "48",
            "--qa-data-dev", QUESTIONS, "--qa-data-test", QUESTIONS, "--indexer-batch-size", "5",
            "--retriever-report-topk-accuracies", "1", "5", "20", "100", "--block-data-path", store, *extra]


def test_retriever_eval_end_to_end_on_two_ranks_then_reusing_the_store(tmp_path):
    store = f"{tmp_path}/evidence_blocks"
    two = run_script("tasks/main.py", _eval_args(store), nproc=2)
    assert "embedding 12 blocks" in two.stdout and "reusing" not in two.stdout
    got = _accuracies(two.stdout)
    assert set(got) == {(split, k) for split in ("dev", "test") for k in (1, 5, 20, 100)}
    for split in ("dev", "test"):
        values = [got[(split, k)] for k in (1, 5, 20, 100)]
        assert values == sorted(values) and all(v in {100.0 * i / 8 for i in range(9)} for v in values)
        # Every question's answer is in the 12-passage corpus, and top-20 retrieves all of it.
        assert got[(split, 20)] == 100.0
    assert "(measured at top-12: the corpus has 12 blocks)" in two.stdout
    one = run_script("tasks/main.py", _eval_args(store, task="RETRIEVER-EVAL"))
    assert f"reusing the block store at {store}" in one.stdout
    assert _accuracies(one.stdout) == got
    # The same ids embedded by another checkpoint (here: a copy, as after retraining) are not reused.
    other = str(tmp_path / "other_checkpoint")
    shutil.copytree(tiny_ict_checkpoint(), other)
    args = _eval_args(store, task="RETRIEVER-EVAL")
    args[args.index("--ict-load") + 1] = other
    again = run_script("tasks/main.py", args)
    assert "was not embedded by this checkpoint" in again.stdout and "embedding 12 blocks" in again.stdout
    assert _accuracies(again.stdout) == got


def test_retriever_flags_are_refused_by_other_tasks(tmp_path):
    args = ["--task", "MNLI", *MODEL_ARGS, "--micro-batch-size", "2", "--vocab-file", vocab_file(),
            "--bert-load", str(tmp_path), "--epochs", "0"]
    result = run_script("tasks/main.py", args, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("tasks/main.py: error: --task MNLI does not use the retriever flag(s) ")
    assert "--bert-load" in last.split("flag(s) ")[1].split(", ")


def test_bad_question_file_is_one_line_naming_file_and_line(tmp_path):
    bad = tmp_path / "nq.tsv"
    bad.write_text("who wrote it\t['Ann']\nwhere is it\tParis\n", encoding="utf-8")
    args = _eval_args(f"{tmp_path}/store", task="RETRIEVER-EVAL")
    args[args.index("--qa-data-dev") + 1] = str(bad)
    result = run_script("tasks/main.py", args, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1].startswith(f"tasks/main.py: error: {bad}:2: the answers field")
    assert not os.path.exists(f"{tmp_path}/store")  # failed before any embedding
