"""Megatron's dynamic loss scaler: growth window, hysteresis, backoff, floor, state."""
import pytest
import torch

from megatron.core.optimizer import ConstantGradScaler, DynamicGradScaler


def scale(s):
    return float(s.scale.item())


def test_backoff_after_hysteresis_and_floor():
    s = DynamicGradScaler(initial_scale=16.0, min_scale=4.0, growth_interval=3, hysteresis=2)
    s.update(True)
    assert scale(s) == 16.0            # first overflow only spends hysteresis
    s.update(True)
    assert scale(s) == 8.0
    s.update(True)                     # hysteresis is not refilled by overflows
    assert scale(s) == 4.0
    s.update(True)
    assert scale(s) == 4.0             # floor
    assert s.inv_scale.item() == 0.25


def test_growth_after_window_and_clean_steps_do_not_refill_hysteresis():
    s = DynamicGradScaler(initial_scale=8.0, min_scale=1.0, growth_interval=3, hysteresis=2)
    s.update(True)
    s.update(False)
    s.update(False)
    s.update(True)                     # growth tracker reset; hysteresis now spent -> halve
    assert scale(s) == 4.0
    for _ in range(3):
        s.update(False)
    assert scale(s) == 8.0             # doubled after 3 clean steps, hysteresis refilled
    s.update(True)
    assert scale(s) == 8.0


def test_state_dict_round_trip():
    s = DynamicGradScaler(initial_scale=2.0**10, min_scale=1.0, growth_interval=5, hysteresis=3)
    for found in (True, False, False, True):
        s.update(found)
    t = DynamicGradScaler(initial_scale=1.0, min_scale=1.0, growth_interval=5, hysteresis=3)
    t.load_state_dict(s.state_dict())
    for found in (False, True, True, False, False, False, False, False):
        s.update(found)
        t.update(found)
        assert scale(s) == scale(t)


def test_constant_scaler_and_arguments():
    c = ConstantGradScaler(128.0)
    c.update(True)
    assert scale(c) == 128.0 and c.inv_scale.item() == pytest.approx(1 / 128)
    with pytest.raises(ValueError, match="min_scale 8.0 <= initial_scale 4.0"):
        DynamicGradScaler(initial_scale=4.0, min_scale=8.0)
    assert isinstance(c.scale, torch.Tensor)
