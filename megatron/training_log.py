"""Megatron-style log lines for the training loop: iteration lines, validation lines, TensorBoard.

Losses exist on the last pipeline stage; the line is built and printed there, by the last rank
(as Megatron-LM does), so logging costs no communication.
"""
import json
import math
from typing import Dict, Optional

import torch

from megatron.utils import flops_per_iteration_from_args, is_last_rank, throughput


class TrainingLogger:
    """Accumulates losses and counters between log intervals, as Megatron's training_log does."""

    def __init__(self, args, timers, writer=None):
        self.args = args
        self.timers = timers
        self.writer = writer
        self.total_losses: Dict[str, float] = {}
        self.iterations = 0
        self.skipped = 0
        self.nan = 0
        self.nan_on_device = 0
        self.last_skipped = 0
        # Whether the interval that the last line closed saw a NaN/inf loss (the loop stops on it).
        self.nan_in_last_interval = False

    def flops_per_iteration(self, batch_size: int) -> float:
        return flops_per_iteration_from_args(self.args, batch_size)

    def add(self, loss_dict: Dict[str, float], skipped_iter) -> None:
        """Losses may be floats or device tensors; ``skipped_iter`` 0/1 or, under fp16, a device
        tensor. Tensors are summed on the device and read back only when a line or a TensorBoard
        scalar is written (no host synchronisation per step)."""
        self.iterations += 1
        self.skipped = self.skipped + skipped_iter
        self.last_skipped = skipped_iter
        for key, value in loss_dict.items():
            if torch.is_tensor(value):
                finite = torch.isfinite(value)
                self.nan_on_device = (~finite).sum() + self.nan_on_device
                if torch.is_tensor(skipped_iter) or not skipped_iter:
                    keep = finite & (skipped_iter == 0) if torch.is_tensor(skipped_iter) else finite
                    kept = torch.where(keep, value, torch.zeros_like(value))
                    self.total_losses[key] = self.total_losses.get(key, 0.0) + kept
            elif not math.isfinite(value):
                self.nan += 1
            elif not skipped_iter:
                self.total_losses[key] = self.total_losses.get(key, 0.0) + value

    def _read_nan_count(self) -> None:
        if torch.is_tensor(self.nan_on_device):
            self.nan += int(self.nan_on_device.item())
        self.nan_on_device = 0

    def log(self, iteration: int, consumed_samples: int, learning_rate: float, batch_size: int,
            loss_scale: float, grad_norm: Optional[float], num_zeros: Optional[int],
            params_norm: Optional[float], elapsed_seconds: float, loss_dict: Dict[str, float]) -> Optional[str]:
        """TensorBoard every --tensorboard-log-interval; the line every --log-interval. Returns the line."""
        args = self.args
        writer = self.writer
        tensorboard_now = writer is not None and iteration % args.tensorboard_log_interval == 0
        if tensorboard_now or iteration % args.log_interval == 0:
            # Device values (losses, norms, the loss scale, the learning rate and the skip flags under
            # fp16) are read back here, at logging time only.
            learning_rate, loss_scale, grad_norm, num_zeros = (
                None if v is None else float(v) for v in (learning_rate, loss_scale, grad_norm, num_zeros))
            loss_dict = {key: float(value) for key, value in loss_dict.items()}
            if int(self.last_skipped):  # as Megatron: a skipped step has no norm or zero count
                grad_norm = num_zeros = None
        if tensorboard_now:
            if getattr(args, "log_learning_rate_to_tensorboard", True):
                writer.add_scalar("learning-rate", learning_rate, iteration)
                writer.add_scalar("learning-rate vs samples", learning_rate, consumed_samples)
            if getattr(args, "log_batch_size_to_tensorboard", False):
                writer.add_scalar("batch-size", batch_size, iteration)
                writer.add_scalar("batch-size vs samples", batch_size, consumed_samples)
            for key, value in loss_dict.items():
                writer.add_scalar(key, value, iteration)
                writer.add_scalar(key + " vs samples", value, consumed_samples)
            if getattr(args, "log_loss_scale_to_tensorboard", True):
                writer.add_scalar("loss-scale", loss_scale, iteration)
                writer.add_scalar("loss-scale vs samples", loss_scale, consumed_samples)
            if grad_norm is not None:
                writer.add_scalar("grad-norm", grad_norm, iteration)
            if num_zeros is not None:
                writer.add_scalar("num-zeros", num_zeros, iteration)
            if params_norm is not None:
                writer.add_scalar("params-norm", params_norm, iteration)
            if getattr(args, "log_timers_to_tensorboard", False):
                self.timers.write(["forward-backward", "optimizer"], writer, iteration,
                                  normalizer=1.0, reset=False)
        if iteration % args.log_interval != 0:
            return None
        self._read_nan_count()
        self.skipped = int(self.skipped)
        self.nan_in_last_interval = self.nan > 0
        self.total_losses = {key: float(value) for key, value in self.total_losses.items()}
        per_iteration = elapsed_seconds / max(self.iterations, 1)
        tflops, mfu = throughput(self.flops_per_iteration(batch_size), per_iteration, args.world_size,
                                 args.peak_flops_per_gpu or 0.0)
        if writer is not None:
            writer.add_scalar("iteration-time", per_iteration, iteration)
            writer.add_scalar("throughput (TFLOP/s/GPU)", tflops, iteration)
        if args.train_iters:
            total = args.train_iters
        else:  # --train-samples: the iterations left at the current batch size
            total = iteration + max(0, math.ceil((args.train_samples - consumed_samples) / batch_size))
        line = (f" iteration {iteration:8d}/{total:8d} |"
                f" consumed samples: {consumed_samples:12d} |"
                f" elapsed time per iteration (ms): {per_iteration * 1000.0:.1f} |"
                f" learning rate: {learning_rate:.3E} |"
                f" global batch size: {batch_size:5d} |")
        counted = max(self.iterations - self.skipped, 1)
        averages = {key: self.total_losses.get(key, float("nan")) / counted
                    for key in sorted(self.total_losses) or sorted(loss_dict)}
        for key, average in averages.items():
            line += f" {key}: {average:.6E} |"
        write_json_record(args, {
            "kind": "iteration", "iteration": iteration, "train_iters": total, "consumed_samples": consumed_samples,
            "elapsed_ms_per_iteration": per_iteration * 1000.0, "learning_rate": learning_rate,
            "global_batch_size": batch_size, "losses": averages, "loss_scale": loss_scale, "grad_norm": grad_norm,
            "num_zeros": num_zeros, "params_norm": params_norm, "skipped_iterations": self.skipped,
            "nan_iterations": self.nan, "tflops_per_gpu": tflops, "mfu": mfu})
        line += f" loss scale: {loss_scale:.1f} |"
        if grad_norm is not None:
            line += f" grad norm: {grad_norm:.3f} |"
        if num_zeros is not None:
            line += f" num zeros: {num_zeros:.1f} |"
        if params_norm is not None:
            line += f" params norm: {params_norm:.3f} |"
        line += (f" number of skipped iterations: {self.skipped:3d} |"
                 f" number of nan iterations: {self.nan:3d} |"
                 f" TFLOP/s per GPU: {tflops:.3f} |")
        if mfu is not None:
            line += f" MFU: {100.0 * mfu:.2f}% |"
        self.total_losses, self.iterations, self.skipped, self.nan = {}, 0, 0, 0
        return line


def write_json_record(args, record: Dict) -> None:
    """--log-json FILE: append one JSON object (an iteration's or an evaluation's numbers, unrounded)
    per line, from the last rank, which holds the losses. Scripts read this, not the text lines."""
    path = getattr(args, "log_json", None)
    if not path or not is_last_rank():
        return
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record, allow_nan=True) + "\n")


def _is_loss(key: str) -> bool:
    return "loss" in key


def validation_line(label: str, loss_dict: Dict[str, float]) -> str:
    """``{label} | lm loss value: X | lm loss PPL: Y |`` framed by dashes; ``label`` is e.g.
    ``validation loss at iteration 100``. Only losses get a perplexity (not e.g. ``top1_acc``)."""
    parts = []
    for key in sorted(loss_dict):
        value = loss_dict[key]
        if not _is_loss(key):
            parts.append(f"{key} value: {value:.6E} |")
            continue
        ppl = math.exp(min(20.0, value)) if math.isfinite(value) else float("nan")
        parts.append(f"{key} value: {value:.6E} | {key} PPL: {ppl:.6E} |")
    text = f" {label} | " + " ".join(parts)
    rule = "-" * len(text)
    return f"{rule}\n{text}\n{rule}"


def write_validation(writer, split: str, loss_dict: Dict[str, float], iteration: int, consumed_samples: int,
                     log_ppl: bool) -> None:
    """``{key} validation`` (or ``{key} test``) scalars, and their perplexity with ``log_ppl``."""
    if writer is None:
        return
    for key, value in loss_dict.items():
        writer.add_scalar(f"{key} {split}", value, iteration)
        writer.add_scalar(f"{key} {split} vs samples", value, consumed_samples)
        if log_ppl and _is_loss(key):
            ppl = math.exp(min(20.0, value))
            writer.add_scalar(f"{key} {split} ppl", ppl, iteration)
            writer.add_scalar(f"{key} {split} ppl vs samples", ppl, consumed_samples)


def tensor_to_float_dict(loss_dict: Dict[str, torch.Tensor]) -> Dict[str, float]:
    return {key: float(value) for key, value in loss_dict.items()}
