"""The optimizer wrappers in one process: groups, fp16 skip and scaling, bf16 masters, clipping,
state round trips, the local DDP wrapper's accumulation and the half-precision wrapper."""
import copy

import pytest
import torch

from megatron.core.distributed import DistributedDataParallel, DistributedDataParallelConfig, Float16Module
from megatron.core.distributed import finalize_model_grads
from megatron.core.models import GPTModel
from megatron.core.optimizer import (
    DistributedOptimizer,
    Float16OptimizerWithFloat16Params,
    FP32Optimizer,
    OptimizerConfig,
    get_megatron_optimizer,
    get_param_groups,
)
from megatron.core.transformer import TransformerConfig

VOCAB, SEQ = 64, 8


def gpt(seed=0, dtype=torch.float32):
    """Half-precision models are built from the fp32 weights (same seed), as the training layer does."""
    torch.manual_seed(seed)
    cfg = TransformerConfig(num_layers=2, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0,
                            attention_dropout=0.0, params_dtype=dtype)
    return GPTModel(cfg, vocab_size=VOCAB, max_sequence_length=SEQ)


def batches(n, seed=1, mbs=2):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, VOCAB, (mbs, SEQ), generator=g) for _ in range(n)]


def train(model, opt, data, chunks=None):
    """One optimizer step per element of ``data`` (a list of micro-batches of one global batch)."""
    chunks = chunks or [model]
    results = []
    for micro_batches in data:
        opt.zero_grad()
        for i, tokens in enumerate(micro_batches):
            ctx = chunks[0].no_sync() if (hasattr(chunks[0], "no_sync") and i < len(micro_batches) - 1) \
                else torch.enable_grad()
            with ctx:
                loss = model(tokens, labels=tokens).float().mean() / len(micro_batches)
                opt.scale_loss(loss).backward()
        finalize_model_grads(chunks)
        results.append(opt.step())
    return results


def params(model):
    return {n: p.detach().clone() for n, p in model.named_parameters()}


def test_param_groups_no_weight_decay_on_biases_and_layernorm():
    model = gpt()
    groups = get_param_groups([model])
    assert [(g["wd_mult"], g["lr_mult"]) for g in groups] == [(1.0, 1.0), (0.0, 1.0)]
    names = {id(p): n for n, p in model.named_parameters()}
    no_wd = {names[id(p)] for p in groups[1]["params"]}
    assert "language_model.encoder.layers.0.input_layernorm.weight" in no_wd
    assert all(n.endswith(".bias") or "layernorm" in n for n in no_wd)
    assert "language_model.embedding.word_embeddings.weight" not in no_wd
    scaled = get_param_groups([model], scale_lr_cond=lambda n, p: "embedding" in n, lr_mult=0.5)
    assert {(g["wd_mult"], g["lr_mult"]) for g in scaled} == {(1.0, 1.0), (1.0, 0.5), (0.0, 1.0)}
    opt = get_megatron_optimizer(OptimizerConfig(lr=1e-3, weight_decay=0.1), [model])
    assert isinstance(opt, FP32Optimizer)
    assert isinstance(opt.optimizer, torch.optim.AdamW)


def test_local_ddp_accumulation_equals_plain_autograd():
    ref, wrapped = gpt(), gpt()
    ddp = DistributedDataParallel(DistributedDataParallelConfig(bucket_size=300), wrapped)
    assert len(ddp.buffers[0].buckets) > 2
    cfg = OptimizerConfig(lr=1e-2, clip_grad=0.5)
    opt_ref = get_megatron_optimizer(cfg, [ref])
    opt_ddp = get_megatron_optimizer(cfg, [ddp])
    data = [batches(3, seed=s) for s in range(3)]
    r_ref = train(ref, opt_ref, data)
    r_ddp = train(ddp, opt_ddp, data, [ddp])
    for (ok_a, norm_a, _), (ok_b, norm_b, _) in zip(r_ref, r_ddp):
        assert ok_a and ok_b and norm_a == pytest.approx(norm_b, rel=1e-6)
    for name, value in params(ref).items():
        torch.testing.assert_close(wrapped.state_dict()[name], value, rtol=1e-6, atol=1e-7)
    assert all(p.grad is None for p in wrapped.parameters())


def test_clip_norm_and_zero_count_match_torch():
    model = gpt()
    reference = copy.deepcopy(model)
    opt = get_megatron_optimizer(OptimizerConfig(lr=0.0, clip_grad=0.01, log_num_zeros_in_grad=True), [model])
    tokens = batches(1)[0]
    for m in (model, reference):
        m(tokens, labels=tokens).mean().backward()
    want = torch.nn.utils.clip_grad_norm_(reference.parameters(), 0.01).item()
    zeros = sum(int((p.grad == 0).sum()) for p in reference.parameters())
    ok, norm, num_zeros = opt.step()
    assert ok and norm == pytest.approx(want, rel=1e-6) and num_zeros == zeros
    for p, q in zip(model.parameters(), reference.parameters()):
        torch.testing.assert_close(p.grad, q.grad)


def test_fp16_overflow_skips_step_and_scaler_follows_hysteresis_and_window():
    model = Float16Module(torch.float16, gpt(dtype=torch.float16))
    cfg = OptimizerConfig(lr=1e-3, fp16=True, initial_loss_scale=1024.0, hysteresis=2, loss_scale_window=2)
    opt = get_megatron_optimizer(cfg, [model])
    assert isinstance(opt, Float16OptimizerWithFloat16Params)
    tokens = batches(1)[0]

    def step(inject_inf):
        opt.zero_grad()
        loss = model(tokens, labels=tokens).mean()
        assert loss.dtype == torch.float32
        opt.scale_loss(loss).backward()
        if inject_inf:
            next(model.parameters()).grad.view(-1)[0] = float("inf")
        return opt.step()

    before = params(model)
    masters = [m.detach().clone() for m, _ in opt.main_params()]
    assert step(True) == (False, None, None)
    assert opt.get_loss_scale().item() == 1024.0        # hysteresis 2: not yet
    assert step(True)[0] is False
    assert opt.get_loss_scale().item() == 512.0
    for name, value in params(model).items():
        assert torch.equal(value, before[name]), name
    assert all(torch.equal(m, w) for (m, _), w in zip(opt.main_params(), masters))
    ok, norm, _ = step(False)
    assert ok and norm is not None and norm > 0
    assert opt.get_loss_scale().item() == 512.0
    step(False)
    assert opt.get_loss_scale().item() == 1024.0        # window of 2 clean steps
    assert any(not torch.equal(v, before[n]) for n, v in params(model).items())


def test_fp16_static_loss_scale_and_unscaled_gradients():
    fp32 = gpt()
    half = Float16Module(torch.float16, gpt(dtype=torch.float16))
    opt = get_megatron_optimizer(OptimizerConfig(lr=0.0, fp16=True, loss_scale=256.0, clip_grad=0.0), [half])
    tokens = batches(1)[0]
    fp32(tokens, labels=tokens).mean().backward()
    opt.scale_loss(half(tokens, labels=tokens).mean()).backward()
    opt._prepare_grads()
    opt._unscale_and_check_for_inf()
    assert opt.get_loss_scale().item() == 256.0
    names = {id(p): n for n, p in half.module.named_parameters()}
    refs = dict(fp32.named_parameters())
    for master, param in opt.main_params():
        ref = refs[names[id(param)]]
        torch.testing.assert_close(master.grad, ref.grad, rtol=0.05, atol=2e-3)


def test_bf16_keeps_fp32_master_weights():
    model = Float16Module(torch.bfloat16, gpt(dtype=torch.bfloat16))
    ddp = DistributedDataParallel(DistributedDataParallelConfig(grad_reduce_in_fp32=True), model)
    assert ddp.buffers[0].data.dtype == torch.float32
    opt = get_megatron_optimizer(OptimizerConfig(optimizer="sgd", lr=1e-4, bf16=True, sgd_momentum=0.0,
                                                 weight_decay=0.0, clip_grad=0.0), [ddp])
    assert opt.grad_scaler is None and opt.get_loss_scale().item() == 1.0
    master, param = opt.main_params()[0]
    assert master.dtype == torch.float32 and param.dtype == torch.bfloat16
    start = master.detach().clone()
    tokens = batches(1)[0]
    for _ in range(3):
        opt.zero_grad()
        ddp(tokens, labels=tokens).mean().backward()
        finalize_model_grads([ddp])
        assert opt.step()[0]
    # Updates of ~1e-5 vanish in bf16 (8 mantissa bits) but accumulate in the fp32 master.
    assert not torch.equal(master, start)
    torch.testing.assert_close(param.float(), master.to(torch.bfloat16).float())


@pytest.mark.parametrize("kind", ["fp32-adam", "fp16-adam", "fp32-sgd"])
def test_state_dict_round_trip_reproduces_next_steps_bitwise(kind):
    fp16 = kind.startswith("fp16")
    cfg = OptimizerConfig(optimizer=kind.split("-")[1], lr=1e-2, fp16=fp16, initial_loss_scale=2.0**12,
                          loss_scale_window=2)

    def build():
        model = Float16Module(torch.float16, gpt(dtype=torch.float16)) if fp16 else gpt()
        ddp = DistributedDataParallel(DistributedDataParallelConfig(bucket_size=500), model)
        return model, ddp, get_megatron_optimizer(cfg, [ddp])

    model, ddp, opt = build()
    data = [batches(2, seed=s) for s in range(5)]
    train(ddp, opt, data[:3], [ddp])
    model_state = copy.deepcopy(model.state_dict())
    opt_state = copy.deepcopy(opt.state_dict())
    want = train(ddp, opt, data[3:], [ddp])
    final = params(model)

    model2, ddp2, opt2 = build()
    model2.load_state_dict(model_state)
    opt2.reload_model_params()
    opt2.load_state_dict(opt_state)
    got = train(ddp2, opt2, data[3:], [ddp2])
    assert got == want
    for name, value in params(model2).items():
        assert torch.equal(value, final[name]), name
    if fp16:
        assert opt2.get_loss_scale().item() == opt.get_loss_scale().item()


def test_distributed_optimizer_needs_local_ddp():
    with pytest.raises(TypeError, match="DistributedDataParallel"):
        get_megatron_optimizer(OptimizerConfig(lr=1.0, use_distributed_optimizer=True), [gpt()])
    ddp = DistributedDataParallel(DistributedDataParallelConfig(use_distributed_optimizer=True), gpt())
    opt = get_megatron_optimizer(OptimizerConfig(lr=1.0, use_distributed_optimizer=True), [ddp])
    assert isinstance(opt, DistributedOptimizer)


def test_config_rejects_bad_values():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        OptimizerConfig(optimizer="lamb")
    with pytest.raises(ValueError, match="mutually exclusive"):
        OptimizerConfig(fp16=True, bf16=True)
    with pytest.raises(ValueError, match="bucket_size"):
        DistributedDataParallelConfig(bucket_size=0)
