"""REALM's marginal likelihood: a hand-computed case, the joint reader input, and the model's loss
against a reference that runs the BERT reader once per (query, candidate) pair."""
import math

import pytest
import torch

from megatron.core.models.realm import REALMModel, build_joint_inputs, masked_span_accuracy, realm_marginal_loss
from megatron.core.transformer import TransformerConfig

VOCAB, SEQ = 64, 48
CLS, SEP, PAD, MASK = 1, 2, 0, 3


def test_marginal_loss_equals_a_hand_computed_case():
    # One query, two masked tokens (the second one padding), three candidates (slot 0: null document).
    # p(z|x) = (0.2, 0.5, 0.3); p(y1|z,x) = (0.1, 0.6, 0.2):
    #   p(y1|x) = 0.02 + 0.30 + 0.06 = 0.38, loss = -ln 0.38, utility = ln 0.38 - ln 0.1.
    log_p_z = torch.tensor([[0.2, 0.5, 0.3]]).log()
    log_p_y = torch.tensor([[[0.1, 0.9], [0.6, 0.9], [0.2, 0.9]]]).log()  # [b=1, k=3, m=2]
    valid = torch.tensor([[1, 0]])
    loss, metrics = realm_marginal_loss(log_p_z, log_p_y, valid)
    assert loss.item() == pytest.approx(-math.log(0.38), rel=1e-6)
    assert metrics["retrieval_utility"].item() == pytest.approx(math.log(0.38) - math.log(0.1), rel=1e-6)


def test_marginal_loss_averages_masked_tokens_and_is_zero_without_any():
    log_p_z = torch.tensor([[0.5, 0.5], [0.9, 0.1]]).log()
    log_p_y = torch.tensor([[[0.2, 0.4], [0.6, 0.4]], [[0.5, 0.5], [0.5, 0.5]]]).log()
    loss, _ = realm_marginal_loss(log_p_z, log_p_y, torch.tensor([[1, 1], [1, 0]]))
    want = -(math.log(0.4) + math.log(0.4) + math.log(0.5)) / 3
    assert loss.item() == pytest.approx(want, rel=1e-6)
    empty, metrics = realm_marginal_loss(log_p_z, log_p_y, torch.zeros(2, 2, dtype=torch.long))
    assert empty.item() == 0.0 and metrics["retrieval_utility"].item() == 0.0


def test_only_the_null_document_gives_zero_utility_and_its_own_likelihood():
    log_p_y = torch.tensor([[[0.25]]]).log()
    loss, metrics = realm_marginal_loss(torch.zeros(1, 1), log_p_y, torch.ones(1, 1))
    assert loss.item() == pytest.approx(math.log(4.0))
    assert metrics["retrieval_utility"].item() == pytest.approx(0.0, abs=1e-7)


def test_joint_inputs_drop_the_block_cls_and_pack_without_gaps():
    query = torch.tensor([[CLS, 10, MASK, SEP, PAD, PAD]])
    query_pad = (query != PAD).long()
    blocks = torch.tensor([[[CLS, SEP, PAD, PAD, PAD], [CLS, 20, SEP, 21, SEP]]])  # null, then title 20 body 21
    block_pad = (blocks != PAD).long()
    tokens, pad, types = build_joint_inputs(query, query_pad, blocks, block_pad, PAD)
    assert tokens.shape == (1, 2, 10)
    assert tokens[0, 0].tolist() == [CLS, 10, MASK, SEP, SEP] + [PAD] * 5
    assert tokens[0, 1].tolist() == [CLS, 10, MASK, SEP, 20, SEP, 21, SEP] + [PAD] * 2
    assert pad[0, 1].tolist() == [1] * 8 + [0] * 2
    assert types[0, 1].tolist() == [0] * 4 + [1] * 4 + [0] * 2


def test_span_accuracy_needs_every_token_of_the_span():
    log_p_z = torch.zeros(2, 1)
    log_probs = torch.full((2, 1, 2, 5), -10.0)
    log_probs[0, 0, 0, 1] = log_probs[0, 0, 1, 2] = 0.0  # query 0 predicts 1, 2
    log_probs[1, 0, 0, 3] = log_probs[1, 0, 1, 3] = 0.0  # query 1 predicts 3, 3
    labels = torch.tensor([[1, 2], [3, 4]])
    acc = masked_span_accuracy(log_p_z, log_probs, labels, torch.ones(2, 2))
    assert acc["masked_token_acc"].item() == pytest.approx(75.0)
    assert acc["masked_span_acc"].item() == pytest.approx(50.0)


def _model():
    torch.manual_seed(0)
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0, init_seed=7)
    return REALMModel(config, VOCAB, SEQ, projection_dim=8, pad_id=PAD)


def _batch():
    gen = torch.Generator().manual_seed(3)
    query = torch.full((2, 8), PAD)
    query[0, :7] = torch.tensor([CLS, 11, MASK, MASK, 14, 15, SEP])
    query[1, :5] = torch.tensor([CLS, 16, 17, MASK, SEP])
    blocks = torch.full((2, 3, 12), PAD)
    for i in range(2):
        blocks[i, 0, :2] = torch.tensor([CLS, SEP])  # null document
        for z in (1, 2):
            n = 4 + 2 * z + i
            blocks[i, z, :n] = torch.randint(5, VOCAB, (n,), generator=gen)
            blocks[i, z, 0], blocks[i, z, 2], blocks[i, z, n - 1] = CLS, SEP, SEP
    positions = torch.tensor([[2, 3], [3, 0]])
    labels = torch.tensor([[30, 31], [40, 0]])
    valid = torch.tensor([[1, 1], [1, 0]])
    return query, (query != PAD).long(), blocks, (blocks != PAD).long(), positions, labels, valid


def _reference_loss(model, query, query_pad, blocks, block_pad, positions, labels, valid):
    """Reader run per (query, candidate) with the plain BertModel forward (full logits), the
    marginal likelihood summed in Python."""
    total, count = 0.0, 0
    for i in range(query.shape[0]):
        q = model.embed_queries(query[i:i + 1], query_pad[i:i + 1])[0]
        d = model.embed_blocks(blocks[i], block_pad[i])  # [k, dim]
        log_p_z = torch.log_softmax(d.float() @ q.float(), dim=0)
        per_candidate = []
        for z in range(blocks.shape[1]):
            q_real = query[i][query_pad[i] == 1].tolist()
            b_real = blocks[i, z][block_pad[i, z] == 1].tolist()
            joint = torch.tensor([q_real + b_real[1:]])
            types = torch.tensor([[0] * len(q_real) + [1] * (len(b_real) - 1)])
            logits, _ = model.reader(joint, torch.ones_like(joint), types)  # [1, s, v]
            per_candidate.append(torch.log_softmax(logits[0].float(), dim=-1))
        for j in range(positions.shape[1]):
            if not valid[i, j]:
                continue
            terms = torch.stack([log_p_z[z] + per_candidate[z][positions[i, j], labels[i, j]]
                                 for z in range(blocks.shape[1])])
            total = total - torch.logsumexp(terms, dim=0)
            count += 1
    return total / count


def test_model_loss_and_gradients_match_the_pairwise_reference():
    model = _model()
    query, query_pad, blocks, block_pad, positions, labels, valid = _batch()
    seen = []

    def retrieve(query_embeddings):
        seen.append(query_embeddings)
        return blocks, block_pad

    loss, metrics = model(query, query_pad, positions, labels, valid, retrieve=retrieve)
    assert not seen[0].requires_grad  # retrieval sees detached embeddings
    reference = _reference_loss(model, query, query_pad, blocks, block_pad, positions, labels, valid)
    assert loss.item() == pytest.approx(reference.item(), rel=1e-5)
    assert set(metrics) >= {"retrieval_utility", "masked_span_acc", "masked_token_acc", "null_doc_prob"}

    grads = torch.autograd.grad(loss, list(model.parameters()), allow_unused=True)
    want = torch.autograd.grad(reference, list(model.parameters()), allow_unused=True)
    names = [name for name, _ in model.named_parameters()]
    for name, g, w in zip(names, grads, want):
        assert (g is None) == (w is None), name
        if g is not None:
            torch.testing.assert_close(g, w, rtol=1e-4, atol=1e-6, msg=name)
    # Both towers and the reader learn from the marginal likelihood.
    for prefix in ("retriever.query_model.", "retriever.context_model.", "reader.lm_head."):
        assert any(g is not None and g.abs().sum() > 0 for n, g in zip(names, grads) if n.startswith(prefix)), prefix


def test_state_dict_holds_both_towers_and_the_reader():
    names = set(_model().state_dict())
    assert any(n.startswith("retriever.query_model.language_model.") for n in names)
    assert any(n.startswith("retriever.context_model.projection_enc.") for n in names)
    assert "reader.lm_head.bias" in names and not any(n.startswith("reader.binary_head") for n in names)
