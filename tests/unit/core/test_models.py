"""Models and schedules in one process: Megatron state-dict names, heads, masks, gradient accumulation."""
import contextlib

import pytest
import torch
import torch.nn.functional as F

from megatron.core.models import BertModel, BiEncoderModel, GPTModel, T5Model, bert_extended_attention_mask
from megatron.core.parallel_state import ProcessGroups
from megatron.core.pipeline_parallel import (
    forward_backward_no_pipelining,
    forward_backward_pipelining_with_interleaving,
    forward_backward_pipelining_without_interleaving,
    get_forward_backward_func,
)
from megatron.core.transformer import TransformerConfig


def tiny(**overrides):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


LAYER_PARTS = [
    "input_layernorm.weight", "input_layernorm.bias",
    "self_attention.query_key_value.weight", "self_attention.query_key_value.bias",
    "self_attention.dense.weight", "self_attention.dense.bias",
    "post_attention_layernorm.weight", "post_attention_layernorm.bias",
    "mlp.dense_h_to_4h.weight", "mlp.dense_h_to_4h.bias", "mlp.dense_4h_to_h.weight", "mlp.dense_4h_to_h.bias",
]
DECODER_PARTS = [
    "inter_attention.query.weight", "inter_attention.query.bias", "inter_attention.key_value.weight",
    "inter_attention.key_value.bias", "inter_attention.dense.weight", "inter_attention.dense.bias",
    "post_inter_attention_layernorm.weight", "post_inter_attention_layernorm.bias",
]


def stack_names(stack, parts, layers=2):
    names = {f"language_model.{stack}.layers.{i}.{part}" for i in range(layers) for part in parts}
    return names | {f"language_model.{stack}.final_layernorm.weight", f"language_model.{stack}.final_layernorm.bias"}


def test_gpt_state_dict_uses_megatron_names_and_shapes():
    model = GPTModel(tiny(), 128, 16)
    state = model.state_dict()
    want = stack_names("encoder", LAYER_PARTS) | {
        "language_model.embedding.word_embeddings.weight", "language_model.embedding.position_embeddings.weight"}
    assert set(state) == want
    assert state["language_model.encoder.layers.0.self_attention.query_key_value.weight"].shape == (96, 32)
    assert state["language_model.encoder.layers.1.mlp.dense_4h_to_h.weight"].shape == (32, 128)


def test_bert_state_dict_names():
    state = BertModel(tiny(), 128, 16).state_dict()
    extras = {"language_model.embedding.word_embeddings.weight", "language_model.embedding.position_embeddings.weight",
              "language_model.embedding.tokentype_embeddings.weight", "language_model.pooler.dense.weight",
              "language_model.pooler.dense.bias", "lm_head.bias", "lm_head.dense.weight", "lm_head.dense.bias",
              "lm_head.layernorm.weight", "lm_head.layernorm.bias", "binary_head.weight", "binary_head.bias"}
    assert set(state) == stack_names("encoder", LAYER_PARTS) | extras
    assert state["binary_head.weight"].shape == (2, 32)
    no_head = BertModel(tiny(), 128, 16, add_binary_head=False).state_dict()
    assert "binary_head.weight" not in no_head and "language_model.pooler.dense.weight" not in no_head


def test_t5_state_dict_names():
    state = T5Model(tiny(), 128, 16).state_dict()
    want = (stack_names("encoder", LAYER_PARTS) | stack_names("decoder", LAYER_PARTS + DECODER_PARTS)
            | {"language_model.embedding.word_embeddings.weight", "language_model.embedding.position_embeddings.weight",
               "lm_head.bias"})
    assert set(state) == want


def test_biencoder_names_and_loading_from_bert():
    torch.manual_seed(0)
    bert = BertModel(tiny(), 128, 16)
    biencoder = BiEncoderModel(tiny(), 128, 16, projection_dim=8)
    names = set(biencoder.state_dict())
    assert "query_model.projection_enc.weight" in names and "context_model.language_model.embedding.word_embeddings.weight" in names
    biencoder.init_from_bert_state_dict(bert.state_dict())
    for tower in ("query_model", "context_model"):
        loaded = biencoder.state_dict()[f"{tower}.language_model.encoder.layers.1.mlp.dense_h_to_4h.weight"]
        assert torch.equal(loaded, bert.state_dict()["language_model.encoder.layers.1.mlp.dense_h_to_4h.weight"])
    shared = BiEncoderModel(tiny(), 128, 16, shared_query_context_model=True)
    assert all(name.startswith("shared_model.") for name in shared.state_dict())
    with pytest.raises(ValueError, match="no 'language_model.' entries"):
        shared.init_from_bert_state_dict({"lm_head.bias": torch.zeros(1)})


def test_gpt_logits_and_loss_agree():
    torch.manual_seed(0)
    model = GPTModel(tiny(), 128, 16, parallel_output=False)
    tokens = torch.randint(0, 128, (2, 17))
    logits = model(tokens[:, :-1])
    assert logits.shape == (2, 16, 128)
    parallel = GPTModel(tiny(), 128, 16)
    parallel.load_state_dict(model.state_dict())
    loss = parallel(tokens[:, :-1], labels=tokens[:, 1:])
    want = F.cross_entropy(logits.reshape(-1, 128), tokens[:, 1:].reshape(-1), reduction="none").view(2, 16)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="parallel_output=True with labels"):
        model(tokens[:, :-1], labels=tokens[:, 1:])


def test_gpt_label_smoothing_matches_torch():
    torch.manual_seed(0)
    model = GPTModel(tiny(), 128, 16, label_smoothing=0.1)
    tokens = torch.randint(0, 128, (2, 17))
    loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    logits = model(tokens[:, :-1])
    want = F.cross_entropy(logits.reshape(-1, 128), tokens[:, 1:].reshape(-1), reduction="none",
                           label_smoothing=0.1 * 128 / 127).view(2, 16)
    torch.testing.assert_close(loss, want, rtol=1e-5, atol=1e-5)


def test_bert_padding_mask_and_heads():
    mask = torch.tensor([[1, 1, 0]])
    extended = bert_extended_attention_mask(mask)
    assert extended.shape == (1, 1, 3, 3)
    assert extended[0, 0].tolist() == [[False, False, True], [False, False, True], [True, True, True]]
    torch.manual_seed(0)
    model = BertModel(tiny(), 128, 16)
    tokens = torch.randint(0, 128, (2, 16))
    padding = torch.ones(2, 16, dtype=torch.long)
    padding[1, 10:] = 0
    logits, binary = model(tokens, padding, torch.zeros_like(tokens))
    assert logits.shape == (2, 16, 128) and binary.shape == (2, 2)
    # Padded tokens do not influence the real ones.
    changed = tokens.clone()
    changed[1, 12] = (changed[1, 12] + 1) % 128
    logits2, binary2 = model(changed, padding, torch.zeros_like(tokens))
    torch.testing.assert_close(logits2[1, :10], logits[1, :10])
    torch.testing.assert_close(binary2, binary)


def test_no_pipelining_accumulates_the_mean_gradient():
    torch.manual_seed(0)
    config = tiny()
    model = GPTModel(config, 128, 16)
    batches = [torch.randint(0, 128, (2, 17)) for _ in range(3)]
    for batch in batches:
        (model(batch[:, :-1], labels=batch[:, 1:]).mean() / 3).backward()
    want = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    synced = []

    def forward_step(data_iterator, model_):
        batch = next(data_iterator)
        return model_(batch[:, :-1], labels=batch[:, 1:]), lambda out: (out.mean(), {"lm loss": out.mean().detach()})

    @contextlib.contextmanager
    def no_sync():
        # Data-parallel wrappers skip their gradient all-reduce inside this context.
        synced.append("no_sync")
        yield

    losses = forward_backward_no_pipelining(
        forward_step_func=forward_step, data_iterator=iter(batches), model=model, num_microbatches=3,
        seq_length=16, micro_batch_size=2, config=config, no_sync_func=no_sync)
    assert len(losses) == 3 and synced == ["no_sync"]
    for name, grad in want.items():
        torch.testing.assert_close(dict(model.named_parameters())[name].grad, grad, rtol=1e-6, atol=1e-8)


def test_schedule_selection_and_checks():
    assert get_forward_backward_func(ProcessGroups()) is forward_backward_no_pipelining
    pp = ProcessGroups(pipeline_model_parallel_size=2, pp_ranks=[0, 1])
    assert get_forward_backward_func(pp) is forward_backward_pipelining_without_interleaving
    vpp = ProcessGroups(pipeline_model_parallel_size=2, pp_ranks=[0, 1], virtual_pipeline_model_parallel_size=2,
                        virtual_pipeline_model_parallel_rank=0)
    assert get_forward_backward_func(vpp) is forward_backward_pipelining_with_interleaving
    chunks = [torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)]
    with pytest.raises(ValueError, match="num_microbatches 3 is not divisible by pipeline_model_parallel_size 2"):
        forward_backward_pipelining_with_interleaving(
            forward_step_func=None, data_iterator=[iter([]), iter([])], model=chunks, num_microbatches=3,
            seq_length=16, micro_batch_size=1, config=tiny(), pg=vpp)
    with pytest.raises(ValueError, match="got 1 model chunks for virtual_pipeline_model_parallel_size 2"):
        forward_backward_pipelining_with_interleaving(
            forward_step_func=None, data_iterator=[iter([])], model=chunks[:1], num_microbatches=2,
            seq_length=16, micro_batch_size=1, config=tiny(), pg=vpp)
    with pytest.raises(ValueError, match="seq_length 15 is not divisible by tensor_model_parallel_size 2"):
        sp = ProcessGroups(tensor_model_parallel_size=2, tp_ranks=[0, 1], pipeline_model_parallel_size=2, pp_ranks=[0, 2])
        forward_backward_pipelining_without_interleaving(
            forward_step_func=None, data_iterator=iter([]), model=chunks[0], num_microbatches=2,
            seq_length=15, micro_batch_size=1, config=tiny(sequence_parallel=True), pg=sp)


def test_freed_output_still_backpropagates():
    from megatron.core.pipeline_parallel.schedules import custom_backward, deallocate_output_tensor

    x = torch.randn(4, 3, requires_grad=True)
    y = (x * 2).tanh()
    grad = torch.randn(4, 3)
    y.backward(grad, retain_graph=True)
    want = x.grad.clone()
    x.grad = None
    deallocate_output_tensor(y, True)
    assert y.numel() == 1
    custom_backward(y, grad)
    torch.testing.assert_close(x.grad, want)


def test_bf16_parameters_with_fp32_residual_stream():
    from megatron.core.tensor_parallel import model_parallel_manual_seed

    model_parallel_manual_seed(1)
    config = tiny(params_dtype=torch.bfloat16, fp32_residual_connection=True, hidden_dropout=0.1, attention_dropout=0.1)
    model = GPTModel(config, 128, 16)
    tokens = torch.randint(0, 128, (2, 17))
    hidden = model.language_model(tokens[:, :-1], None, None)
    assert hidden.dtype == torch.bfloat16  # the final layer norm returns the parameter dtype
    loss = model(tokens[:, :-1], labels=tokens[:, 1:])
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    loss.mean().backward()
    assert all(p.grad is not None and p.grad.dtype == torch.bfloat16 for p in model.parameters())


def test_dropout_without_seeded_tracker_names_the_fix():
    from megatron.core.tensor_parallel import get_rng_tracker

    get_rng_tracker().reset()
    model = GPTModel(tiny(attention_dropout=0.1), 128, 16)
    with pytest.raises(RuntimeError, match="call model_parallel_manual_seed first"):
        model(torch.randint(0, 128, (2, 16)))
