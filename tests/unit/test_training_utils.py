"""Training-layer helpers: GPT masks and position ids, loss averaging, the FLOPs formula, log lines."""
import argparse
import math

import pytest
import torch

from megatron.training_log import TrainingLogger, validation_line
from megatron.utils import (
    get_ltor_masks_and_position_ids,
    masked_mean,
    num_floating_point_operations,
    throughput,
)

EOD = 0


def test_plain_causal_needs_no_explicit_mask():
    tokens = torch.tensor([[5, 6, EOD, 7, 8]])
    mask, loss_mask, position_ids = get_ltor_masks_and_position_ids(tokens, EOD, False, False, False)
    assert mask is None
    assert loss_mask.tolist() == [[1, 1, 1, 1, 1]]
    assert position_ids.tolist() == [[0, 1, 2, 3, 4]]


def test_reset_position_ids_and_eod_mask_loss():
    tokens = torch.tensor([[5, EOD, 6, 7, EOD, 8], [EOD, 1, 2, 3, 4, 5]])
    _, loss_mask, position_ids = get_ltor_masks_and_position_ids(tokens, EOD, True, False, True)
    assert position_ids.tolist() == [[0, 1, 0, 1, 2, 0], [0, 0, 1, 2, 3, 4]]
    assert loss_mask.tolist() == [[1, 0, 1, 1, 0, 1], [0, 1, 1, 1, 1, 1]]


def test_reset_attention_mask_blocks_previous_documents():
    tokens = torch.tensor([[5, EOD, 6, 7]])
    mask, _, position_ids = get_ltor_masks_and_position_ids(tokens, EOD, False, True, False)
    assert mask.shape == (1, 1, 4, 4) and mask.dtype == torch.bool
    blocked = mask[0, 0]
    # Causal everywhere; token 2 and 3 (second document) cannot see tokens 0-1.
    expected = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 0, 1], [1, 1, 0, 0]], dtype=torch.bool)
    assert torch.equal(blocked, expected)
    assert position_ids.tolist() == [[0, 1, 2, 3]]  # positions untouched without --reset-position-ids


def test_reset_without_eod_token_names_the_flags():
    with pytest.raises(ValueError, match="--reset-position-ids"):
        get_ltor_masks_and_position_ids(torch.zeros(1, 3, dtype=torch.long), None, True, False, False)


def test_masked_mean_averages_kept_tokens_only():
    per_token = torch.tensor([[1.0, 2.0, 3.0], [4.0, 100.0, 6.0]])
    loss_mask = torch.tensor([[1, 1, 1], [1, 0, 1]])
    assert masked_mean(per_token, loss_mask).item() == pytest.approx(16.0 / 5)
    assert masked_mean(per_token, torch.zeros_like(loss_mask)).item() == 0.0


def test_flops_formula_matches_the_paper():
    # GPT-3 175B, batch 1536, seq 2048, vocab 51200 with recomputation: 96 B s L h^2 (1 + s/6h + V/16Lh).
    B, s, L, h, V = 1536, 2048, 96, 12288, 51200
    want = 96 * B * s * L * h * h * (1 + s / (6 * h) + V / (16 * L * h))
    assert num_floating_point_operations(B, s, L, h, V, recompute=True) == pytest.approx(want)
    # Without recomputation the layers cost 3 forward passes instead of 4; the logits (6 B s h V) are
    # never recomputed, so they stay whole.
    logits = 6 * B * s * h * V
    assert num_floating_point_operations(B, s, L, h, V, recompute=False) == pytest.approx((want - logits) * 3 / 4 + logits)


def test_throughput_and_mfu():
    tflops, mfu = throughput(8e15, 2.0, 4, 312e12)
    assert tflops == pytest.approx(1000.0)
    assert mfu == pytest.approx(1e15 / 312e12)
    assert throughput(8e15, 2.0, 4, 0.0)[1] is None


def _args(**overrides):
    values = dict(train_iters=100, log_interval=2, tensorboard_log_interval=1, seq_length=16, encoder_seq_length=None,
                  num_layers=2, hidden_size=32, padded_vocab_size=128, world_size=1, recompute_granularity=None,
                  peak_flops_per_gpu=0.0)
    values.update(overrides)
    return argparse.Namespace(**values)


def test_iteration_line_averages_over_the_interval_and_counts_skips():
    logger = TrainingLogger(_args(), timers=None)
    logger.add({"lm loss": 2.0}, 0)
    assert logger.log(1, 8, 1e-3, 8, 1.0, 0.5, None, None, 0.1, {"lm loss": 2.0}) is None  # not a log iteration
    logger.add({"lm loss": 4.0}, 0)
    logger.add({"lm loss": float("nan")}, 1)
    line = logger.log(2, 16, 1e-3, 8, 65536.0, 0.5, None, 1.25, 0.3, {"lm loss": 4.0})
    assert line.startswith(" iteration        2/     100 |")
    assert "consumed samples:           16" in line and "global batch size:     8" in line
    assert "lm loss: 3.000000E+00" in line  # (2 + 4) / 2 counted iterations
    assert "loss scale: 65536.0" in line and "params norm: 1.250" in line
    # The logged iteration was skipped (fp16 overflow): as in Megatron, it has no grad norm (under fp16
    # the optimizer hands back the overflowed norm as a device tensor; the logger drops it).
    assert "grad norm" not in line
    assert "number of skipped iterations:   1" in line and "number of nan iterations:   1" in line
    assert "elapsed time per iteration (ms): 100.0" in line and "MFU" not in line
    # Counters restart after each printed line.
    logger.add({"lm loss": 1.0}, 0)
    logger.add({"lm loss": 1.0}, 0)
    line = logger.log(4, 32, 1e-3, 8, 1.0, 0.5, None, None, 0.2, {})
    assert "number of skipped iterations:   0" in line and "grad norm: 0.500" in line


def test_device_skip_flags_are_read_at_the_log_line():
    """fp16: the skip flags and losses arrive as device tensors; the line counts and averages the same."""
    import torch

    logger = TrainingLogger(_args(), timers=None)
    logger.add({"lm loss": torch.tensor(2.0)}, torch.tensor(0))
    logger.log(1, 8, torch.tensor(1e-3), 8, torch.tensor([65536.0]), torch.tensor([0.5]), None, None, 0.1, {})
    logger.add({"lm loss": torch.tensor(float("inf"))}, torch.tensor(1))
    line = logger.log(2, 16, torch.tensor(1e-3), 8, torch.tensor([32768.0]), torch.tensor([float("inf")]), None,
                      None, 0.3, {"lm loss": torch.tensor(float("inf"))})
    assert "lm loss: 2.000000E+00" in line and "number of skipped iterations:   1" in line
    assert "learning rate: 1.000E-03" in line and "loss scale: 32768.0" in line and "grad norm" not in line


def test_iteration_line_reports_mfu_with_a_peak():
    logger = TrainingLogger(_args(log_interval=1, peak_flops_per_gpu=1e9), timers=None)
    logger.add({"lm loss": 1.0}, 0)
    line = logger.log(1, 8, 1e-3, 8, 1.0, None, None, None, 0.5, {"lm loss": 1.0})
    assert "TFLOP/s per GPU:" in line and "MFU:" in line


def test_validation_line_has_loss_and_perplexity():
    text = validation_line("validation loss at iteration 5", {"lm loss": 2.0})
    rule, body, rule2 = text.split("\n")
    assert rule == rule2 == "-" * len(body)
    assert body == f" validation loss at iteration 5 | lm loss value: 2.000000E+00 | lm loss PPL: {math.exp(2.0):.6E} |"


def test_validation_line_gives_accuracies_no_perplexity():
    body = validation_line("validation loss at iteration 5", {"retrieval loss": 1.0, "top1_acc": 50.0}).split("\n")[1]
    assert "retrieval loss PPL" in body and "top1_acc value: 5.000000E+01 |" in body and "top1_acc PPL" not in body


class _RecordingWriter:
    def __init__(self):
        self.scalars = {}

    def add_scalar(self, name, value, step):
        self.scalars.setdefault(name, []).append((step, value))


def test_tensorboard_scalars_follow_the_flags():
    writer = _RecordingWriter()
    args = _args(log_interval=10, tensorboard_log_interval=1, log_learning_rate_to_tensorboard=True,
                 log_batch_size_to_tensorboard=False, log_loss_scale_to_tensorboard=False)
    logger = TrainingLogger(args, timers=None, writer=writer)
    logger.add({"lm loss": 3.0}, 0)
    logger.log(1, 8, 1e-3, 8, 1.0, 0.7, 5, 2.0, 0.1, {"lm loss": 3.0})
    assert writer.scalars["lm loss"] == [(1, 3.0)] and writer.scalars["lm loss vs samples"] == [(8, 3.0)]
    assert writer.scalars["learning-rate"] == [(1, 1e-3)]
    assert writer.scalars["grad-norm"] == [(1, 0.7)] and writer.scalars["num-zeros"] == [(1, 5)]
    assert writer.scalars["params-norm"] == [(1, 2.0)]
    assert "batch-size" not in writer.scalars and "loss-scale" not in writer.scalars


def test_validation_scalars_with_perplexity():
    from megatron.training_log import write_validation

    writer = _RecordingWriter()
    write_validation(writer, "validation", {"lm loss": 2.0}, 10, 80, log_ppl=True)
    assert writer.scalars["lm loss validation"] == [(10, 2.0)]
    assert writer.scalars["lm loss validation ppl"] == [(10, pytest.approx(math.exp(2.0)))]
    assert writer.scalars["lm loss validation vs samples"] == [(80, 2.0)]
