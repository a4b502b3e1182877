"""tasks/main.py --task ORQA / ORQA-EVAL end to end on tests/data/retrieval with a tiny ICT checkpoint:
the evidence store keeps its bytes, the best epoch is saved and ORQA-EVAL reproduces it, data
parallelism (and, slow, tensor parallelism) equals one process, bad inputs are one line."""
import glob
import hashlib
import os
import re

import pytest
import torch

from test_create_doc_index import EVIDENCE, MODEL_ARGS, tiny_ict_checkpoint, vocab_file
from test_training_lib import REPO, run_script

QUESTIONS = os.path.join(REPO, "tests", "data", "retrieval", "nq_sample.tsv")
EM_RE = re.compile(r"^ > ORQA(?:-EVAL)?(?: \|epoch: (\d+)\|)? (dev|test): (\d+) questions: exact match ([\d.]+) %$",
                   re.M)
RECALL_RE = re.compile(r"^ > ORQA(?:-EVAL)?(?: \|epoch: (\d+)\|)? (dev|test): recall@(\d+) ([\d.]+) %", re.M)
ITERATION_RE = re.compile(r"^ iteration +(\d+)/ +\d+ \| epoch \d+ \| orqa loss: (\S+) \| answerable questions per "
                          r"micro-batch: (\S+) \|", re.M)
# Dropout off and layout-independent initialisation: every layout computes the same numbers.
EXACT = ["--hidden-dropout", "0", "--attention-dropout", "0", "--use-cpu-initialization"]
COMMON = [*MODEL_ARGS, "--vocab-file", vocab_file(), "--evidence-data-path", EVIDENCE, "--retriever-seq-length", "40",
          "--question-seq-length", "24", "--reader-beam-size", "5", "--max-span-width", "4",
          "--retriever-report-topk-accuracies", "1", "5", *EXACT]


def _digest(path):
    digest = hashlib.sha256()
    for root, _, files in sorted(os.walk(path)):
        for name in sorted(files):
            with open(os.path.join(root, name), "rb") as handle:
                digest.update(name.encode() + handle.read())
    return digest.hexdigest()


def _metrics(stdout):
    got = {}
    for epoch, split, _, value in EM_RE.findall(stdout):
        got[(epoch, split, "em")] = float(value)
    for epoch, split, k, value in RECALL_RE.findall(stdout):
        got[(epoch, split, f"recall@{k}")] = float(value)
    return got


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("orqa") / "evidence_store")
    run_script("tools/create_doc_index.py", [*MODEL_ARGS, "--batch-size", "2", "--vocab-file", vocab_file(),
                                             "--ict-load", tiny_ict_checkpoint(), "--evidence-data-path", EVIDENCE,
                                             "--retriever-seq-length", "40", "--block-data-path", path,
                                             "--indexer-batch-size", "8"])
    return path


def _finetune_args(store, *extra):
    return ["--task", "ORQA", *COMMON, "--micro-batch-size", "2", "--global-batch-size", "4",
            "--retriever-load", tiny_ict_checkpoint(), "--reader-load", tiny_ict_checkpoint(),
            "--block-data-path", store, "--train-data", QUESTIONS, "--qa-data-dev", QUESTIONS,
            "--qa-data-test", QUESTIONS, "--epochs", "2", "--lr", "2e-3", "--log-interval", "1", *extra]


@pytest.fixture(scope="module")
def one_process(store, tmp_path_factory):
    save = str(tmp_path_factory.mktemp("orqa_ckpt"))
    before = _digest(store)
    result = run_script("tasks/main.py", _finetune_args(store, "--save", save, "--save-interval", "1000"))
    assert _digest(store) == before, "fine-tuning changed the frozen evidence store"
    return result.stdout, save


def test_finetune_then_eval_reproduces_the_best_epoch(store, one_process):
    stdout, save = one_process
    assert "ORQA starts from: query tower from --retriever-load" in stdout
    got = _metrics(stdout)
    for epoch in ("1", "2"):
        for split in ("dev", "test"):
            assert 0.0 <= got[(epoch, split, "em")] <= 100.0
            # The corpus holds every answer; recall is monotone in k.
            assert got[(epoch, split, "recall@1")] <= got[(epoch, split, "recall@5")]
    losses = ITERATION_RE.findall(stdout)
    assert [int(it) for it, _, _ in losses] == [1, 2, 3, 4]
    assert any(float(answerable) > 0 for _, _, answerable in losses)
    best = re.findall(r"saved the best checkpoint so far \(epoch (\d+)", stdout)[-1]
    evaluated = run_script("tasks/main.py", ["--task", "ORQA-EVAL", *COMMON, "--micro-batch-size", "3",
                                             "--load", save, "--block-data-path", store, "--qa-data-test", QUESTIONS])
    again = _metrics(evaluated.stdout)
    assert again == {("", "test", key): got[(best, "test", key)] for key in ("em", "recall@1", "recall@5")}


def test_two_data_parallel_ranks_equal_one_process(store, one_process):
    two = run_script("tasks/main.py", _finetune_args(store), nproc=2)
    ours, theirs = ITERATION_RE.findall(one_process[0]), ITERATION_RE.findall(two.stdout)
    assert len(ours) == len(theirs) == 4
    for (it1, loss1, count1), (it2, loss2, count2) in zip(ours, theirs):
        assert it1 == it2 and count1 == count2
        assert float(loss1) == pytest.approx(float(loss2), rel=1e-4, abs=1e-6)
    assert _metrics(two.stdout) == _metrics(one_process[0])


@pytest.mark.slow
def test_two_tensor_parallel_ranks_equal_one_process(store, one_process):
    two = run_script("tasks/main.py", _finetune_args(store, "--tensor-model-parallel-size", "2"), nproc=2)
    ours, theirs = ITERATION_RE.findall(one_process[0]), ITERATION_RE.findall(two.stdout)
    for (it1, loss1, count1), (it2, loss2, count2) in zip(ours, theirs):
        assert it1 == it2 and count1 == count2
        assert float(loss1) == pytest.approx(float(loss2), rel=1e-4, abs=1e-6)
    assert _metrics(two.stdout) == _metrics(one_process[0])


def _saved_model(directory):
    """The checkpoint's model tensors by dotted name (ICT nests them by module, ORQA keeps them flat)."""
    path, = glob.glob(os.path.join(directory, "iter_*", "mp_rank_00", "model_optim_rng.pt"))

    def flat(tree, prefix=""):
        out = {}
        for key, value in tree.items():
            out.update(flat(value, f"{prefix}{key}.") if isinstance(value, dict) else {prefix + key: value})
        return out

    return flat(torch.load(path, map_location="cpu", weights_only=False)["model"])


def test_retriever_lr_mult_scales_only_the_query_tower(store, tmp_path):
    """--retriever-lr-mult 0: one epoch moves the reader while the query tower keeps the ICT weights."""
    save = str(tmp_path / "ckpt")
    args = _finetune_args(store, "--retriever-lr-mult", "0", "--save", save, "--save-interval", "1000")
    args[args.index("--epochs") + 1] = "1"
    run_script("tasks/main.py", args)
    ict, orqa = _saved_model(tiny_ict_checkpoint()), _saved_model(save)
    tower = {k[len("retriever."):]: v for k, v in orqa.items() if k.startswith("retriever.")}
    assert tower and all(torch.equal(v, ict[k]) for k, v in tower.items())
    reader = {k[len("reader."):]: v for k, v in orqa.items() if k.startswith("reader.language_model.")}
    start = "query_model." if any(k.startswith("query_model.") for k in ict) else "shared_model."
    moved = [k for k, v in reader.items() if not torch.equal(v, ict[start + k])]
    assert len(moved) > len(reader) // 2, f"only {len(moved)} of {len(reader)} reader tensors changed"


def test_bad_inputs_are_one_line(store, tmp_path):
    missing = str(tmp_path / "nope.tsv")
    args = _finetune_args(store)
    args[args.index("--train-data") + 1] = missing
    result = run_script("tasks/main.py", args, check=False)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines()[-1] == f"tasks/main.py: error: --train-data {missing}: file not found"

    args = _finetune_args(str(tmp_path / "no_store"))
    result = run_script("tasks/main.py", args, check=False)
    assert result.returncode == 2
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith(f"tasks/main.py: error: --block-data-path {tmp_path}/no_store: no block store there")


def test_orqa_flags_are_refused_by_other_tasks(tmp_path):
    model = MODEL_ARGS[:MODEL_ARGS.index("--ict-head-size")] + MODEL_ARGS[MODEL_ARGS.index("--ict-head-size") + 2:]
    args = ["--task", "MNLI", *model, "--micro-batch-size", "2", "--vocab-file", vocab_file(),
            "--reader-beam-size", "3", "--epochs", "0"]
    result = run_script("tasks/main.py", args, check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == ("tasks/main.py: error: --task MNLI does not use the ORQA "
                                                      "flag(s) --reader-beam-size")
