"""ORQA's span reader: span scoring and the marginal likelihood against hand-computed and brute-force
references, gold-span matching, SQuAD exact match, and frozen evidence (no gradient, unchanged bytes)."""
import hashlib
import itertools
import math
import os

import numpy as np
import pytest
import torch

from megatron.core.models.span_reader import (
    ORQAModel,
    best_spans,
    gold_spans,
    marginal_span_loss,
    span_log_probs,
    valid_spans,
)
from megatron.core.transformer import TransformerConfig
from tasks.orqa.metrics import exact_match, squad_normalize

CLS, SEP, PAD = 1, 2, 0


def test_valid_spans_lie_inside_the_block_and_respect_the_width():
    in_block = torch.tensor([[0, 1, 1, 1, 0]])
    valid = valid_spans(in_block, 2)  # [1, L=5, W=2]
    got = {(i, w) for i, w in itertools.product(range(5), range(2)) if valid[0, i, w]}
    assert got == {(1, 0), (1, 1), (2, 0), (2, 1), (3, 0)}
    with pytest.raises(ValueError, match="max_span_width"):
        valid_spans(in_block, 0)


def test_span_log_probs_equal_a_softmax_over_the_enumerated_valid_spans():
    gen = torch.Generator().manual_seed(0)
    start, end = torch.randn(2, 7, generator=gen), torch.randn(2, 7, generator=gen)
    in_block = torch.tensor([[0, 0, 1, 1, 1, 1, 0], [0, 1, 1, 1, 1, 1, 1]])
    width = 3
    got = span_log_probs(start, end, valid_spans(in_block, width))
    for row in range(2):
        inside = [i for i in range(7) if in_block[row, i]]
        spans = [(i, j) for i in inside for j in inside if 0 <= j - i < width]
        scores = [float(start[row, i] + end[row, j]) for i, j in spans]
        norm = math.log(sum(math.exp(s) for s in scores))
        for (i, j), score in zip(spans, scores):
            assert got[row, i, j - i].item() == pytest.approx(score - norm, abs=1e-5)
        assert torch.logsumexp(got[row].flatten(), 0).item() == pytest.approx(0.0, abs=1e-5)


def test_marginal_loss_on_a_hand_computed_case():
    # Question 0: p(z|x) = (0.75, 0.25); gold spans of block 0 have p 0.2 and 0.1, of block 1 p 0.5:
    #   p(answer|x) = 0.75 * 0.3 + 0.25 * 0.5 = 0.35, loss -ln 0.35.
    # Question 1 has no gold span in any block: it is left out of the mean.
    log_p_z = torch.tensor([[0.75, 0.25], [0.5, 0.5]]).log()
    probs = torch.full((2, 2, 3, 2), 0.0)
    probs[0, 0, 0, 0], probs[0, 0, 1, 1], probs[0, 0, 2, 0] = 0.2, 0.1, 0.7
    probs[0, 1, 0, 0], probs[0, 1, 1, 0] = 0.5, 0.5
    probs[1, :, 0, 0] = 1.0
    log_p_span = probs.clamp(min=1e-30).log()
    gold = torch.zeros(2, 2, 3, 2, dtype=torch.bool)
    gold[0, 0, 0, 0] = gold[0, 0, 1, 1] = gold[0, 1, 1, 0] = True
    loss, count = marginal_span_loss(log_p_z, log_p_span, gold)
    assert count.item() == 1
    assert loss.item() == pytest.approx(-math.log(0.35), rel=1e-6)
    none, zero = marginal_span_loss(log_p_z, log_p_span, torch.zeros_like(gold))
    assert none.item() == 0.0 and zero.item() == 0


def test_marginal_loss_and_gradients_match_a_brute_force_reference():
    gen = torch.Generator().manual_seed(1)
    b, k, length, width = 2, 3, 6, 2
    scores = torch.randn(b, k, requires_grad=True, generator=gen)
    start = torch.randn(b * k, length, requires_grad=True, generator=gen)
    end = torch.randn(b * k, length, requires_grad=True, generator=gen)
    in_block = torch.tensor([[0, 1, 1, 1, 1, 0]] * (b * k))
    gold = torch.zeros(b, k, length, width, dtype=torch.bool)
    gold[0, 1, 2, 1] = gold[0, 2, 4, 0] = gold[1, 0, 1, 0] = True
    log_p_span = span_log_probs(start, end, valid_spans(in_block, width)).view(b, k, length, width)
    loss, _ = marginal_span_loss(torch.log_softmax(scores, 1), log_p_span, gold)
    loss.backward()

    s2, st2, en2 = (t.detach().clone().requires_grad_(True) for t in (scores, start, end))
    total = 0
    for q in range(b):
        p_z = torch.softmax(s2[q], 0)
        mass = 0
        for z in range(k):
            row = q * k + z
            spans = [(i, j) for i in range(1, 5) for j in range(1, 5) if 0 <= j - i < width]
            norm = torch.logsumexp(torch.stack([st2[row, i] + en2[row, j] for i, j in spans]), 0)
            for i, j in spans:
                if gold[q, z, i, j - i]:
                    mass = mass + p_z[z] * torch.exp(st2[row, i] + en2[row, j] - norm)
        total = total - torch.log(mass)
    reference = total / b
    reference.backward()
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    for ours, theirs in ((scores, s2), (start, st2), (end, en2)):
        torch.testing.assert_close(ours.grad, theirs.grad, rtol=1e-4, atol=1e-6)


def test_gold_spans_match_answer_tokens_in_the_block_only():
    #            CLS  q   q  SEP | t  SEP  a   b   c   a   b  SEP  PAD
    tokens = np.array([[CLS, 7, 8, SEP, 5, SEP, 7, 8, 9, 7, 8, SEP, PAD]])
    in_block = np.array([[0, 0, 0, 0, 1, 1, 1, 1, 1, 1, 1, 1, 0]])
    gold = gold_spans(tokens, in_block, [[[7, 8], [9], [7, 8, 9, 7, 8]]], max_span_width=3)
    found = {(int(i), int(w)) for i, w in zip(*np.nonzero(gold[0]))}
    # "7 8" twice in the body (not the question's copy), "9" once; the 5-token answer exceeds the width.
    assert found == {(6, 1), (9, 1), (8, 0)}


def test_best_span_takes_retrieval_and_reader_scores_together():
    log_p_span = torch.full((1, 2, 4, 2), -50.0)
    log_p_span[0, 0, 1, 1] = math.log(0.9)  # block 0's best span, but block 0 is unlikely
    log_p_span[0, 1, 2, 0] = math.log(0.6)
    log_p_z = torch.tensor([[0.1, 0.9]]).log()
    assert best_spans(log_p_z, log_p_span) == [(1, 2, 2)]
    assert best_spans(torch.tensor([[0.9, 0.1]]).log(), log_p_span) == [(0, 1, 2)]


@pytest.mark.parametrize("prediction, answers, expected", [
    ("The Eiffel Tower", ["eiffel tower"], True),
    ("an apple.", ["Apple"], True),
    ("  Guido   van Rossum ", ["Guido van Rossum"], True),
    ("1,889", ["1889"], True),
    ("Paris, France", ["Paris"], False),
    ("theatre", ["atre"], False),  # articles are whole words only
    ("Cafe\u0301", ["café"], True),
])
def test_exact_match_uses_squad_normalisation(prediction, answers, expected):
    assert exact_match(prediction, answers) is expected


def test_squad_normalize_cases():
    assert squad_normalize("The  Quick, Brown fox!") == "quick brown fox"
    assert squad_normalize("A an THE") == ""


# -- frozen evidence --------------------------------------------------------------------------------
def _tiny_model():
    torch.manual_seed(0)
    config = TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0, init_seed=5)
    return ORQAModel(config, vocab_size=64, max_sequence_length=32, projection_dim=8, pad_id=PAD, max_span_width=3)


def _digest(directory):
    digest = hashlib.sha256()
    for name in sorted(os.listdir(directory)):
        with open(os.path.join(directory, name), "rb") as handle:
            digest.update(name.encode() + handle.read())
    return digest.hexdigest()


def test_frozen_evidence_gets_no_gradient_and_its_store_keeps_its_bytes(tmp_path):
    from megatron.retrieval.block_store import BlockData

    store = BlockData()
    gen = np.random.RandomState(0)
    store.add_block_data(np.arange(4), gen.randn(4, 8).astype(np.float16))
    path = str(tmp_path / "store")
    store.save(path)
    before = _digest(path)
    loaded = BlockData.load(path, mmap=True)
    frozen = torch.from_numpy(np.asarray(loaded.embeddings(), dtype=np.float32))
    frozen.requires_grad_(True)  # would collect a gradient if anything flowed into it
    blocks = torch.tensor([[[CLS, 10, SEP, 11, 12, 13, SEP, PAD]] * 3] * 2)

    def retrieve(query_embeddings):
        assert not query_embeddings.requires_grad
        ids = torch.tensor([[0, 1, 2], [3, 2, 1]])
        return ids, frozen[ids], blocks, (blocks != PAD).long()

    model = _tiny_model()
    assert not any(name.startswith("retriever.context_model") for name in model.state_dict())
    question = torch.tensor([[CLS, 20, 21, SEP, PAD], [CLS, 22, SEP, PAD, PAD]])
    log_p_z, log_p_span, tokens, in_block, _ = model(question, (question != PAD).long(), retrieve)
    gold = torch.zeros_like(log_p_span, dtype=torch.bool)
    gold[0, 1, 6, 1] = gold[1, 0, 7, 0] = True  # spans inside the blocks
    loss, _ = marginal_span_loss(log_p_z, log_p_span, gold)
    loss.backward()
    with torch.no_grad():  # one SGD step over everything that has a gradient
        for param in model.parameters():
            if param.grad is not None:
                param -= 0.1 * param.grad
    assert frozen.grad is None
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for n, p in model.named_parameters()
               if n.startswith("retriever."))
    assert model.reader.span_head.weight.grad.abs().sum() > 0
    del loaded
    assert _digest(path) == before


# -- starting weights from REALM, BERT and ICT checkpoints -------------------------------------------
def _config():
    return TransformerConfig(num_layers=1, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0,
                             attention_dropout=0.0, init_seed=9)


@pytest.mark.parametrize("shared", [False, True])
def test_realm_and_ict_weights_map_onto_the_orqa_model(shared):
    from megatron.core.models.biencoder import BiEncoderModel
    from megatron.core.models.realm import REALMModel
    from tasks.orqa.finetune import reader_weights, retriever_weights

    realm = REALMModel(_config(), 64, 32, projection_dim=8, shared_query_context_model=shared)
    orqa = ORQAModel(_config(), 64, 32, projection_dim=8, shared_query_context_model=shared, max_span_width=3)
    flat = realm.state_dict()
    retriever = {k: v for k, v in retriever_weights(flat).items() if not k.startswith("context_model.")}
    orqa.retriever.load_state_dict(retriever, strict=True)
    reader = reader_weights(flat)
    want = {k for k in orqa.reader.state_dict() if not k.startswith("span_head.")}
    assert set(reader) == want  # the LM head is dropped, the span head is new
    orqa.reader.load_state_dict(reader, strict=False)
    torch.testing.assert_close(orqa.reader.language_model.embedding.word_embeddings.weight,
                               realm.reader.language_model.embedding.word_embeddings.weight)
    # An ICT checkpoint: the query tower by name, and its encoder as a reader.
    ict = BiEncoderModel(_config(), 64, 32, projection_dim=8, shared_query_context_model=shared).state_dict()
    assert set(reader_weights(ict)) == want
    orqa.retriever.load_state_dict({k: v for k, v in retriever_weights(ict).items()
                                    if not k.startswith("context_model.")}, strict=True)


def test_bert_weights_map_onto_the_reader():
    from megatron.core.models.bert import BertModel
    from tasks.orqa.finetune import reader_weights

    bert = BertModel(_config(), 64, 32, num_tokentypes=2, add_binary_head=True).state_dict()
    orqa = ORQAModel(_config(), 64, 32, max_span_width=3)
    assert set(reader_weights(bert)) == {k for k in orqa.reader.state_dict() if not k.startswith("span_head.")}


# -- the demo questions ------------------------------------------------------------------------------
def test_demo_questions_are_answered_by_their_source_passage(tmp_path):
    import json

    from megatron.retrieval.evidence import EvidenceDataset, read_qa_file
    from megatron.retrieval.qa_validation import has_answer
    from megatron.tokenizer.bert import BertWordPieceLowerCase
    from megatron.tokenizer import bert_uncased_vocab_path
    from tools.make_orqa_demo_questions import main as make_questions

    corpus = tmp_path / "corpus.json"
    docs = [{"title": f"Topic {d}", "text": " ".join(
        f"The module number {d} calls the helper_{d}_{s} function when Python {s + d} starts. "
        f"Another sentence mentions Copenhagen and {1000 + s} values for testing here." for s in range(6))}
        for d in range(5)]
    corpus.write_text("".join(json.dumps(doc) + "\n" for doc in docs), encoding="utf-8")
    out = tmp_path / "qa"
    make_questions(["--input", str(corpus), "--output-dir", str(out), "--passage-words", "30",
                    "--num-questions", "12", "--split", "50,25,25"])
    evidence = EvidenceDataset(str(out / "evidence.tsv"), BertWordPieceLowerCase(bert_uncased_vocab_path()), 64)
    total = 0
    for split in ("train", "dev", "test"):
        questions, answers = read_qa_file(str(out / f"{split}.tsv"))
        sources = [int(x) for x in (out / f"{split}_source_passages.txt").read_text().split()]
        assert len(questions) == len(answers) == len(sources)
        for question, answer, source in zip(questions, answers, sources):
            assert has_answer(answer, evidence.passage(source)[0])
            assert "what" in question.lower() and not has_answer(answer, question)
        total += len(questions)
    assert total == 12
