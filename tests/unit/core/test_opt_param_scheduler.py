"""The learning-rate / weight-decay schedule against values computed by hand."""
import math

import pytest
import torch

from megatron.core.optimizer import OptimizerParamScheduler


def make_optimizer():
    w = torch.nn.Parameter(torch.zeros(2, 2))
    b = torch.nn.Parameter(torch.zeros(2))
    return torch.optim.AdamW([{"params": [w], "wd_mult": 1.0, "lr_mult": 1.0},
                              {"params": [b], "wd_mult": 0.0, "lr_mult": 2.0}], lr=0.0)


def make(style="linear", warmup=100, decay=1000, max_lr=1.0, min_lr=0.1, init_lr=0.0, **kw):
    args = dict(start_wd=0.01, end_wd=0.01, wd_incr_steps=1000, wd_incr_style="constant")
    args.update(kw)
    return OptimizerParamScheduler(make_optimizer(), init_lr, max_lr, min_lr, warmup, decay, style, **args)


def at(sched, steps):
    sched.num_steps = 0
    sched.step(steps)
    return sched.get_lr()


@pytest.mark.parametrize("style", ["linear", "cosine", "constant", "inverse-square-root"])
def test_warmup_is_linear_from_init_lr(style):
    sched = make(style, init_lr=0.2)
    assert at(sched, 0) == pytest.approx(0.2)
    assert at(sched, 50) == pytest.approx(0.6)
    assert at(sched, 100) == pytest.approx(1.0)


def test_decay_styles_at_known_points():
    lin, cos, const, isr = make("linear"), make("cosine"), make("constant"), make("inverse-square-root")
    # r = (n - 100) / 900
    assert at(lin, 550) == pytest.approx(0.1 + 0.9 * 0.5)
    assert at(lin, 1000) == pytest.approx(0.1)
    assert at(cos, 550) == pytest.approx(0.1 + 0.9 * 0.5 * (math.cos(math.pi * 0.5) + 1))
    assert at(cos, 325) == pytest.approx(0.1 + 0.9 * 0.5 * (math.cos(math.pi * 0.25) + 1))
    assert at(const, 5000) == 1.0
    assert at(isr, 400) == pytest.approx(1.0 * math.sqrt(100) / math.sqrt(400))
    assert at(isr, 999) == pytest.approx(max(0.1, math.sqrt(100 / 999)))
    for sched in (lin, cos, isr):
        assert at(sched, 1001) == 0.1


def test_steps_are_samples_and_groups_get_multipliers():
    sched = make("linear", warmup=64, decay=640)
    opt = sched.optimizer
    for _ in range(3):
        sched.step(16)                      # three iterations of global batch 16
    assert sched.num_steps == 48
    assert opt.param_groups[0]["lr"] == pytest.approx(48 / 64)
    assert opt.param_groups[1]["lr"] == pytest.approx(2 * 48 / 64)
    assert opt.param_groups[0]["weight_decay"] == pytest.approx(0.01)
    assert opt.param_groups[1]["weight_decay"] == 0.0


def test_weight_decay_increment_styles():
    lin = make(start_wd=0.0, end_wd=0.1, wd_incr_steps=100, wd_incr_style="linear")
    cos = make(start_wd=0.0, end_wd=0.1, wd_incr_steps=100, wd_incr_style="cosine")
    for sched, want in ((lin, 0.025), (cos, 0.1 * 0.5 * (math.cos(math.pi * 0.75) + 1))):
        sched.step(25)
        assert sched.get_wd() == pytest.approx(want)
        sched.step(100)
        assert sched.get_wd() == pytest.approx(0.1)
    with pytest.raises(ValueError, match="start_wd 0.0 == end_wd 0.1"):
        make(start_wd=0.0, end_wd=0.1, wd_incr_style="constant")


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match="lr_warmup_steps 1000 must be < lr_decay_steps 1000"):
        make(warmup=1000, decay=1000)
    with pytest.raises(ValueError, match="max_lr 0.05 must be >= min_lr 0.1"):
        make(max_lr=0.05)
    with pytest.raises(ValueError, match="lr_decay_style"):
        make("exponential")


def test_state_dict_round_trip_and_conflicts():
    sched = make("cosine")
    sched.step(300)
    state = sched.state_dict()
    fresh = make("cosine")
    fresh.load_state_dict(state)
    assert fresh.num_steps == 300 and fresh.get_lr() == sched.get_lr()
    assert fresh.optimizer.param_groups[0]["lr"] == sched.optimizer.param_groups[0]["lr"]

    other = make("cosine", max_lr=2.0, use_checkpoint_opt_param_scheduler=False)
    with pytest.raises(ValueError, match="learning rate is 2.0 in this run but 1.0 in the checkpoint"):
        other.load_state_dict(state)
    override = make("cosine", max_lr=2.0, use_checkpoint_opt_param_scheduler=False,
                    override_opt_param_scheduler=True)
    override.load_state_dict(state)
    assert override.max_lr == 2.0 and override.num_steps == 300
    use_ckpt = make("cosine", max_lr=2.0)
    use_ckpt.load_state_dict(state)
    assert use_ckpt.max_lr == 1.0
    with pytest.raises(ValueError, match="exclusive"):
        make(override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=True)


def test_loads_2021_annealing_lr_state():
    legacy = {"start_lr": 1.0, "warmup_iter": 100, "num_iters": 550, "decay_style": "linear",
              "end_iter": 1000, "min_lr": 0.1}
    sched = make("linear", use_checkpoint_opt_param_scheduler=False)
    sched.load_state_dict(legacy)
    assert sched.num_steps == 550
    assert sched.get_lr() == pytest.approx(0.55)


@pytest.mark.parametrize("style", ["linear", "cosine", "constant", "inverse-square-root"])
@pytest.mark.parametrize("warmup", [0, 100])
def test_the_device_formula_equals_the_host_formula(style, warmup):
    """fp16 runs compute the learning rate from a float64 step-count tensor (no host read); the one
    formula gives the same numbers on both sides, through warmup, decay and past its end."""
    sched = make(style, warmup=warmup, init_lr=0.05)
    points = [0, 1, 37, 99, 100, 101, 325, 550, 999, 1000, 1001, 5000]
    device = [float(sched.lr_at(torch.tensor(float(n), dtype=torch.float64))) for n in points]
    host = [sched.lr_at(n) for n in points]
    assert device == pytest.approx(host, rel=1e-15, abs=0.0)


def test_skipped_steps_do_not_move_the_device_schedule():
    """``step(n, skipped=flag)`` counts zero samples when the flag is set; the count and the lr stay
    tensors (what the fused optimizer reads) until asked for, then equal the host schedule's."""
    device_sched, host_sched = make("cosine"), make("cosine")
    flags = [1, 1, 0, 0, 1, 0, 0, 0, 1, 0]
    for flag in flags:
        device_sched.step(64, skipped=torch.tensor([flag]))
        if not flag:
            host_sched.step(64)
        group = device_sched.optimizer.param_groups[1]
        assert torch.is_tensor(group["lr"]) and group["lr"].dtype == torch.float32
        assert torch.is_tensor(device_sched.current_lr())
    assert device_sched.get_lr() == host_sched.get_lr() and device_sched.num_steps == 64 * flags.count(0)
    assert float(device_sched.optimizer.param_groups[1]["lr"]) == pytest.approx(2 * host_sched.get_lr(), rel=1e-7)
    assert device_sched.state_dict() == host_sched.state_dict()
    # A weight-decay ramp depends on the count: it is applied with the skips taken into account.
    ramp = make("linear", start_wd=0.0, end_wd=0.1, wd_incr_steps=100, wd_incr_style="linear")
    ramp.step(25, skipped=torch.tensor([0]))
    ramp.step(25, skipped=torch.tensor([1]))
    assert ramp.optimizer.param_groups[0]["weight_decay"] == pytest.approx(0.025)
