"""Text generation in one process: sampling filters, KV-cached decoding equal to recomputation,
stopping at end-of-document, mixed prompt lengths and the errors for unsupported layouts."""
import pytest
import torch
from torch import nn

from megatron.core.models import GPTModel
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import TransformerConfig
from megatron.text_generation import SamplingParams, generate, generate_tokens, kv_cache, sample

VOCAB = 64


def tiny_gpt(backend="sdpa", seed=0, **overrides):
    torch.manual_seed(seed)
    config = TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0,
                               attention_dropout=0.0, attention_backend=backend, **overrides)
    return GPTModel(config, VOCAB, 32, parallel_output=False).eval()


# -- sampling -------------------------------------------------------------------------------------------
def test_greedy_and_top_k_1_take_the_argmax():
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    assert torch.equal(sample(logits, SamplingParams(greedy=True)), logits.argmax(-1))
    assert torch.equal(sample(logits, SamplingParams(top_k=1)), logits.argmax(-1))


def test_top_k_only_draws_from_the_k_best():
    logits = torch.randn(4, VOCAB, generator=torch.Generator().manual_seed(1))
    best = torch.topk(logits, 3, dim=-1).indices
    generator = torch.Generator().manual_seed(2)
    for _ in range(50):
        chosen = sample(logits, SamplingParams(top_k=3), generator=generator)
        assert bool((best == chosen[:, None]).any(-1).all())


def test_top_p_keeps_the_smallest_set_covering_p():
    # Probabilities 0.5, 0.3, 0.2: top_p 0.6 keeps the first two, top_p 0.4 only the first.
    logits = torch.log(torch.tensor([[0.5, 0.3, 0.2]])).expand(200, -1)
    generator = torch.Generator().manual_seed(3)
    assert set(sample(logits, SamplingParams(top_p=0.6), generator=generator).tolist()) == {0, 1}
    assert set(sample(logits, SamplingParams(top_p=0.4), generator=generator).tolist()) == {0}


def test_temperature_sharpens_the_distribution():
    logits = torch.log(torch.tensor([[0.6, 0.4]])).expand(2000, -1)
    generator = torch.Generator().manual_seed(4)
    cold = sample(logits, SamplingParams(temperature=0.1), generator=generator).float().mean()
    warm = sample(logits, SamplingParams(temperature=1.0), generator=generator).float().mean()
    # p(1) is 0.4 at temperature 1 and 0.4**10 / (0.6**10 + 0.4**10) = 0.017 at 0.1.
    assert cold < 0.04 and 0.35 < warm < 0.45


def test_padded_vocabulary_is_never_sampled():
    logits = torch.zeros(3, VOCAB)
    logits[:, 50:] = 100.0  # padding rows beyond the tokenizer's 50 tokens
    assert int(sample(logits, SamplingParams(greedy=True), vocab_size=50).max()) < 50
    assert int(sample(logits, SamplingParams(), vocab_size=50).max()) < 50


@pytest.mark.parametrize("kwargs, message", [
    ({"temperature": 0.0}, "temperature must be a number > 0"),
    ({"temperature": "1"}, "temperature must be a number > 0"),
    ({"top_k": -1}, "top_k must be an integer >= 0"),
    ({"top_k": 2.5}, "top_k must be an integer >= 0"),
    ({"top_p": 1.5}, "top_p must be a number in [0, 1]"),
])
def test_sampling_params_are_validated(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        SamplingParams(**kwargs)


# -- KV cache ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["sdpa", "unfused"])
def test_kv_cached_steps_give_the_full_forward_logits(backend):
    model = tiny_gpt(backend)
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    positions = torch.arange(12).unsqueeze(0).expand(2, -1)
    with torch.no_grad():
        full = model(tokens)
        steps = []
        with kv_cache(model):
            steps.append(model(tokens[:, :5], positions[:, :5], None))
            for i in range(5, 12):
                steps.append(model(tokens[:, i:i + 1], positions[:, i:i + 1], None))
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    assert all(m.inference_cache is None for m in model.modules() if hasattr(m, "inference_cache"))


@pytest.mark.parametrize("backend", ["sdpa", "unfused"])
def test_greedy_kv_cache_equals_recompute_with_mixed_prompt_lengths(backend):
    model = tiny_gpt(backend, seed=1)
    prompts = [[3, 4, 5], [7], [9, 10, 11, 12, 13, 14]]
    params = SamplingParams(greedy=True)
    cached = generate_tokens(model, prompts, 6, params, eod=VOCAB - 1, max_sequence_length=32)
    recomputed = generate_tokens(model, prompts, 6, params, eod=VOCAB - 1, max_sequence_length=32, use_cache=False)
    assert cached == recomputed
    # Each row is decoded as it would be alone: batching with other lengths changes nothing.
    for prompt, output in zip(prompts, cached):
        assert generate_tokens(model, [prompt], 6, params, eod=VOCAB - 1, max_sequence_length=32) == [output]


def test_sampled_generation_is_reproducible_from_the_generator_seed():
    model = tiny_gpt(seed=2)
    params = SamplingParams(temperature=0.9, top_k=20)
    runs = [generate_tokens(model, [[1, 2]], 8, params, eod=0, max_sequence_length=32,
                            generator=torch.Generator().manual_seed(7), use_cache=use_cache)
            for use_cache in (True, False)]
    assert runs[0] == runs[1]


# -- stopping and lengths (a scripted model) ------------------------------------------------------------------
class Counter(nn.Module):
    """Predicts (last token + 1) mod 10, so the end-of-document token 9 is reached on schedule."""

    def __init__(self):
        super().__init__()
        self.anchor = nn.Parameter(torch.zeros(1))
        self.calls = []

    def forward(self, tokens, position_ids, attention_mask):
        self.calls.append(tokens.shape[1])
        logits = torch.full((*tokens.shape, 10), -1e4)
        logits.scatter_(-1, ((tokens + 1) % 10).unsqueeze(-1), 0.0)
        return logits


def test_generation_stops_at_eod_per_row_and_at_the_limits():
    model = Counter()
    greedy = SamplingParams(greedy=True)
    outputs = generate_tokens(model, [[5], [1, 2], [0]], 5, greedy, eod=9, max_sequence_length=32)
    assert outputs == [{"tokens": [6, 7, 8], "finished": True},
                       {"tokens": [3, 4, 5, 6, 7], "finished": False},
                       {"tokens": [1, 2, 3, 4, 5], "finished": False}]
    # The maximum sequence length caps the continuation too.
    assert generate_tokens(model, [[0, 1, 2]], 50, greedy, eod=9, max_sequence_length=6) == [
        {"tokens": [3, 4, 5], "finished": False}]
    assert generate_tokens(model, [[0]], 0, greedy, eod=9, max_sequence_length=6) == [{"tokens": [], "finished": False}]


def test_kv_cache_feeds_only_new_positions():
    model = Counter()
    generate_tokens(model, [[1, 2, 3]], 3, SamplingParams(greedy=True), eod=9, max_sequence_length=32)
    assert model.calls == [3, 1, 1]
    model.calls.clear()
    generate_tokens(model, [[1, 2, 3]], 3, SamplingParams(greedy=True), eod=9, max_sequence_length=32, use_cache=False)
    assert model.calls == [3, 4, 5]


class DigitTokenizer:
    """Characters '0'..'8' are tokens 0..8; token 9 is the end of document."""
    eod = 9
    vocab_size = 10

    def tokenize(self, text):
        return [int(c) for c in text]

    def detokenize(self, ids):
        return "".join(str(i) for i in ids)


def test_generate_returns_prompt_plus_continuation_and_starts_unconditional_from_eod():
    results = generate(Counter(), DigitTokenizer(), ["5", "12", ""], 4, SamplingParams(greedy=True), 32, batch_size=2)
    assert results == [
        {"prompt": "5", "text": "5678", "length": 3, "finished": True},
        {"prompt": "12", "text": "123456", "length": 4, "finished": False},
        {"prompt": "", "text": "0123", "length": 4, "finished": False},
    ]


# -- errors ------------------------------------------------------------------------------------------------------
def test_errors_name_the_problem():
    model, greedy = Counter(), SamplingParams(greedy=True)
    with pytest.raises(ValueError, match="leaves no room to generate within the maximum sequence length 4"):
        generate_tokens(model, [[1, 2, 3, 4]], 2, greedy, eod=9, max_sequence_length=4)
    with pytest.raises(ValueError, match="at least one token"):
        generate_tokens(model, [[]], 2, greedy, eod=9, max_sequence_length=4)
    pp2 = ProcessGroups(rank=0, world_size=2, pipeline_model_parallel_size=2, tp_ranks=[0], pp_ranks=[0, 1],
                        dp_ranks=[0])
    with pytest.raises(ValueError, match="needs a model with a TransformerConfig"):
        generate_tokens(model, [[1]], 2, greedy, eod=9, max_sequence_length=4, pg=pp2)
    vpp = ProcessGroups(rank=0, world_size=2, pipeline_model_parallel_size=2, virtual_pipeline_model_parallel_size=2,
                        tp_ranks=[0], pp_ranks=[0, 1], dp_ranks=[0])
    with pytest.raises(ValueError, match="virtual size 2"):
        generate_tokens(model, [[1]], 2, greedy, eod=9, max_sequence_length=4, pg=vpp)
    torch.manual_seed(0)
    parallel = GPTModel(TransformerConfig(num_layers=1, hidden_size=16, num_attention_heads=2), VOCAB, 16)
    with pytest.raises(ValueError, match="parallel_output=False"):
        generate_tokens(parallel, [[1]], 2, greedy, eod=9, max_sequence_length=4)


@pytest.mark.parametrize("backend", ["sdpa", "unfused"])
def test_kv_cache_applies_rotary_embeddings_at_absolute_positions(backend):
    model = tiny_gpt(backend, seed=3, position_embedding_type="rope", rotary_percent=0.5)
    tokens = torch.randint(0, VOCAB, (2, 12), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        full = model(tokens)
        with kv_cache(model):
            steps = [model(tokens[:, :4], None, None)] + [model(tokens[:, i:i + 1], None, None) for i in range(4, 12)]
    torch.testing.assert_close(torch.cat(steps, dim=1), full, rtol=1e-5, atol=1e-5)
    prompts = [[3, 4, 5], [7], [9, 10, 11, 12, 13, 14]]
    greedy = SamplingParams(greedy=True)
    cached = generate_tokens(model, prompts, 8, greedy, eod=VOCAB - 1, max_sequence_length=32)
    assert cached == generate_tokens(model, prompts, 8, greedy, eod=VOCAB - 1, max_sequence_length=32, use_cache=False)
    assert len({tuple(row["tokens"]) for row in cached}) > 1


def test_a_cache_without_the_rotary_embedding_is_refused():
    from megatron.core.transformer.attention import ParallelAttention
    from megatron.text_generation import KVCache

    model = tiny_gpt(position_embedding_type="rope")
    for module in model.modules():
        if isinstance(module, ParallelAttention):
            module.inference_cache = KVCache()
    with pytest.raises(ValueError, match="use text_generation.kv_cache\\(model\\)"):
        model(torch.tensor([[1, 2]]), None, None)
