"""RETRO model: CCA causality, blanked neighbours, chunk shift, refusals, recompute."""
import pytest
import torch

from megatron.core.models.retro import RetroConfig, RetroModel
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import TransformerConfig
from megatron.core.transformer.retro_layers import chunk_shift, chunk_unshift

VOCAB, CHUNK, K, CHUNKS = 64, 4, 2, 4
SEQ = CHUNK * CHUNKS


def build(position_embedding_type="rope", **overrides):
    base = dict(num_layers=4, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
                position_embedding_type=position_embedding_type)
    base.update(overrides)
    retro = RetroConfig(chunk_size=CHUNK, num_neighbors=K, encoder_num_layers=2, encoder_cca_layers=(0,),
                        decoder_cca_layers=(1, 3), pad_id=0)
    torch.manual_seed(3)
    return RetroModel(TransformerConfig(**base), retro, VOCAB, SEQ, pg=ProcessGroups())


def sample(seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randint(1, VOCAB, (2, SEQ), generator=gen),
            torch.randint(1, VOCAB, (2, CHUNKS, K, 2 * CHUNK), generator=gen))


@pytest.mark.parametrize("position_embedding_type", ["rope", "learned_absolute"])
def test_cca_causality(position_embedding_type):
    """Neighbours of chunk u change no logit before the last token of chunk u, and do change that one."""
    model = build(position_embedding_type).eval()
    tokens, retrieved = sample()
    with torch.no_grad():
        base = model(tokens, retrieved_ids=retrieved)
        for u in range(CHUNKS):
            changed = retrieved.clone()
            changed[:, u] = torch.randint(1, VOCAB, changed[:, u].shape, generator=torch.Generator().manual_seed(u + 9))
            diff = (model(tokens, retrieved_ids=changed) - base).abs().amax(dim=(0, 2))  # per position
            first_allowed = u * CHUNK + CHUNK - 1
            assert diff[:first_allowed].max().item() == 0.0, u
            assert diff[first_allowed].item() > 1e-6, u


def test_retrieval_off_equals_blanked_neighbours_and_differs_from_retrieval():
    model = build().eval()
    tokens, retrieved = sample()
    with torch.no_grad():
        off = model(tokens)
        blank = model(tokens, retrieved_ids=torch.zeros_like(retrieved))
        on = model(tokens, retrieved_ids=retrieved)
    assert torch.equal(off, blank)
    assert (on - off).abs().max() > 1e-4
    # The first m - 1 positions never see neighbours.
    assert torch.equal(on[:, :CHUNK - 1], off[:, :CHUNK - 1])


def test_continuation_matters_when_present():
    """A neighbour whose continuation is padding (the DB's document end) gives other logits than
    the full neighbour: the padded keys are masked, the real ones attended."""
    model = build().eval()
    tokens, retrieved = sample()
    half = retrieved.clone()
    half[..., CHUNK:] = 0
    with torch.no_grad():
        a = model(tokens, retrieved_ids=half)
        b = model(tokens, retrieved_ids=retrieved)
    assert (a - b).abs().max() > 0  # the continuation matters when present


def test_chunk_shift_roundtrip_positions():
    n, b, h = SEQ, 2, 3
    x = torch.arange(n, dtype=torch.float32)[:, None, None].expand(n, b, h).contiguous()
    q = chunk_shift(x, CHUNK)  # [m, b*l, h]
    assert q.shape == (CHUNK, b * CHUNKS, h)
    # Row (batch 0, chunk u) holds positions u*m + m-1 ... u*m + 2m-2 (past the end: zeros).
    for u in range(CHUNKS):
        want = [p if p < n else 0 for p in range(u * CHUNK + CHUNK - 1, u * CHUNK + 2 * CHUNK - 1)]
        assert q[:, u, 0].tolist() == want
    back = chunk_unshift(q, n, b, CHUNK)
    assert back.shape == x.shape
    assert torch.equal(back[CHUNK - 1:], x[CHUNK - 1:])
    assert back[:CHUNK - 1].abs().max() == 0


def test_loss_and_gradients_with_full_recompute_match():
    tokens, retrieved = sample()
    grads = []
    for overrides in ({}, {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 2},
                      {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 1},
                      {"recompute_granularity": "selective"}):
        model = build(**overrides).train()
        loss = model(tokens, retrieved_ids=retrieved, labels=torch.roll(tokens, -1, 1)).mean()
        loss.backward()
        grads.append({n: p.grad.clone() for n, p in model.named_parameters()})
    for other in grads[1:]:
        for name, grad in grads[0].items():
            torch.testing.assert_close(other[name], grad, rtol=1e-5, atol=1e-7, msg=name)


def test_every_parameter_gets_a_gradient():
    model = build().train()
    tokens, retrieved = sample()
    model(tokens, retrieved_ids=retrieved, labels=torch.roll(tokens, -1, 1)).mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().max() == 0]
    assert not missing


def test_refusals():
    cfg = TransformerConfig(num_layers=4, hidden_size=32, num_attention_heads=4)
    with pytest.raises(ValueError, match="decoder_cca_layers"):
        RetroModel(cfg, RetroConfig(chunk_size=4, decoder_cca_layers=(4,)), VOCAB, SEQ, pg=ProcessGroups())
    with pytest.raises(ValueError, match="encoder_cca_layers"):
        RetroModel(cfg, RetroConfig(chunk_size=4, encoder_num_layers=1, encoder_cca_layers=(1,),
                                    decoder_cca_layers=(1,)), VOCAB, SEQ, pg=ProcessGroups())
    with pytest.raises(ValueError, match="pipeline parallelism"):
        RetroModel(cfg, RetroConfig(chunk_size=4, decoder_cca_layers=(1,)), VOCAB, SEQ, post_process=False,
                   pg=ProcessGroups())
    model = build()
    tokens, retrieved = sample()
    with pytest.raises(ValueError, match="retrieved_ids has shape"):
        model(tokens, retrieved_ids=retrieved[:, :2])


def test_greedy_generation_without_retrieval_equals_a_blanked_forward():
    from megatron.text_generation.retro import generate_retro
    from megatron.text_generation.sampling import SamplingParams

    model = build().eval()
    prompt = sample()[0][0, :5].tolist()
    out = generate_retro(model, prompt, 10, SamplingParams(greedy=True), None, SEQ, vocab_size=VOCAB)
    assert len(out) == 15
    with torch.no_grad():
        logits = model(torch.tensor([out]))  # retrieved_ids=None: blanked neighbours
    assert logits[0, len(prompt) - 1:-1].argmax(-1).tolist() == out[len(prompt):]


def test_generation_queries_each_completed_chunk_once_and_conditions_later_tokens():
    from megatron.text_generation.retro import generate_retro
    from megatron.text_generation.sampling import SamplingParams

    model = build().eval()
    queried = []
    rows = torch.randint(1, VOCAB, (K, 2 * CHUNK), generator=torch.Generator().manual_seed(4)).numpy()

    def retriever(chunk):
        queried.append(list(chunk))
        return rows

    prompt = sample()[0][0, :3].tolist()
    out = generate_retro(model, prompt, 10, SamplingParams(greedy=True), retriever, SEQ, vocab_size=VOCAB)
    # The 12 tokens before the last step hold 3 complete chunks, each queried once when it completed.
    assert len(out) == 13
    assert queried == [out[0:CHUNK], out[CHUNK:2 * CHUNK], out[2 * CHUNK:3 * CHUNK]]
    retrieved = torch.from_numpy(rows)[None, None].expand(1, 3, K, 2 * CHUNK).clone()
    with torch.no_grad():
        logits = model(torch.tensor([out[:12]]), retrieved_ids=retrieved)
    assert logits[0, len(prompt) - 1:].argmax(-1).tolist() == out[len(prompt):]


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_weights_give_the_fp32_loss(dtype):
    """The fp32 model's weights cast to bf16/fp16 run forward and backward (masks, rotary, CCA
    reshapes keep the dtype) and give its loss to half-precision accuracy."""
    tokens, retrieved = sample()
    labels = torch.roll(tokens, -1, 1)
    reference = build()
    want = reference(tokens, retrieved_ids=retrieved, labels=labels).mean()
    half = build(params_dtype=dtype)
    half.load_state_dict({k: v.to(dtype) for k, v in reference.state_dict().items()})
    got = half(tokens, retrieved_ids=retrieved, labels=labels).float().mean()
    got.backward()
    assert abs(got.item() - want.item()) < 2e-2 * want.item()
    assert all(p.grad is not None and p.grad.dtype == dtype and torch.isfinite(p.grad).all()
               for p in half.parameters())
