"""Learning-rate and weight-decay schedules, as Megatron-LM defines them.

Steps are counted in samples: the training loop calls ``step(global_batch_size)`` after every
iteration, so a batch-size ramp-up moves the schedule by the samples actually consumed.

Learning rate at step ``n`` (warmup ``W``, decay ``D``):
  * ``n <= W`` (and ``W > 0``): linear from ``init_lr`` to ``max_lr``;
  * ``constant``: ``max_lr`` after warmup;
  * ``n > D``: ``min_lr``;
  * ``inverse-square-root``: ``max(min_lr, max_lr * sqrt(max(W, 1)) / sqrt(max(n, 1)))``;
  * ``linear`` / ``cosine``: with ``r = (n - W) / (D - W)``, ``min_lr + (max_lr - min_lr) * c`` where
    ``c = 1 - r`` or ``c = (cos(pi r) + 1) / 2``.
Weight decay at step ``n`` rises from ``start_wd`` to ``end_wd`` over ``wd_incr_steps`` (constant
needs ``start_wd == end_wd``; linear; cosine ``c = (cos(pi (1 - r)) + 1) / 2``), ``end_wd`` after.

fp16 steps that overflow are skipped and do not move the schedule. The training loop knows that
only on the device (the overflow flag is never read back per step), so it passes the flag to
``step(increment, skipped=flag)``: from then on the step count is a device tensor, the learning
rate is computed from it on the device by the same formula and handed to the fused optimizer as
a tensor, and the count is read back only when asked for (``get_lr``, ``state_dict``). A
weight-decay ramp is the exception: the fused kernels take weight decay as a number, so while
it depends on the step count, each step reads the count back.
"""
import math
from typing import Dict, Optional

import torch

LR_DECAY_STYLES = ("linear", "cosine", "constant", "inverse-square-root")
WD_INCR_STYLES = ("constant", "linear", "cosine")


class OptimizerParamScheduler:
    def __init__(self, optimizer, init_lr: float, max_lr: float, min_lr: float, lr_warmup_steps: int,
                 lr_decay_steps: int, lr_decay_style: str, start_wd: float, end_wd: float, wd_incr_steps: int,
                 wd_incr_style: str, use_checkpoint_opt_param_scheduler: bool = True,
                 override_opt_param_scheduler: bool = False):
        self.optimizer = optimizer
        self.init_lr = float(init_lr)
        self.max_lr = float(max_lr)
        self.min_lr = float(min_lr)
        self.lr_warmup_steps = lr_warmup_steps
        self.lr_decay_steps = lr_decay_steps
        self.lr_decay_style = lr_decay_style
        self.start_wd = float(start_wd)
        self.end_wd = float(end_wd)
        self.wd_incr_steps = wd_incr_steps
        self.wd_incr_style = wd_incr_style
        self.override_opt_param_scheduler = override_opt_param_scheduler
        self.use_checkpoint_opt_param_scheduler = use_checkpoint_opt_param_scheduler
        self.num_steps = 0
        # The step count on the device once a step's success is known only there (fp16).
        self._device_steps: Optional[torch.Tensor] = None
        self._device_lr: Optional[torch.Tensor] = None
        if lr_decay_style not in LR_DECAY_STYLES:
            raise ValueError(f"lr_decay_style must be one of {LR_DECAY_STYLES}, got {lr_decay_style!r}")
        if wd_incr_style not in WD_INCR_STYLES:
            raise ValueError(f"wd_incr_style must be one of {WD_INCR_STYLES}, got {wd_incr_style!r}")
        if self.min_lr < 0.0:
            raise ValueError(f"min_lr must be >= 0, got {self.min_lr}")
        if self.max_lr < self.min_lr:
            raise ValueError(f"max_lr {self.max_lr} must be >= min_lr {self.min_lr}")
        if self.init_lr > self.max_lr:
            raise ValueError(f"init_lr {self.init_lr} must be <= max_lr {self.max_lr}")
        if lr_decay_steps <= 0:
            raise ValueError(f"lr_decay_steps must be > 0, got {lr_decay_steps}")
        if lr_warmup_steps >= lr_decay_steps:
            raise ValueError(f"lr_warmup_steps {lr_warmup_steps} must be < lr_decay_steps {lr_decay_steps}")
        if wd_incr_steps <= 0 and start_wd != end_wd:
            raise ValueError(f"wd_incr_steps must be > 0 to move weight decay from {start_wd} to {end_wd}")
        if wd_incr_style == "constant" and self.start_wd != self.end_wd:
            raise ValueError(f"constant weight decay needs start_wd {start_wd} == end_wd {end_wd}")
        if override_opt_param_scheduler and use_checkpoint_opt_param_scheduler:
            raise ValueError("override_opt_param_scheduler (--override-lr-scheduler) and "
                             "use_checkpoint_opt_param_scheduler (--use-checkpoint-lr-scheduler) are exclusive")
        self.step(0)

    def _wd_depends_on_step(self) -> bool:
        return self.wd_incr_style != "constant" and self.start_wd != self.end_wd and self.wd_incr_steps > 0

    def get_wd(self) -> float:
        self._read_device_steps()
        if not self._wd_depends_on_step() or self.num_steps > self.wd_incr_steps:
            return self.end_wd
        ratio = float(self.num_steps) / float(self.wd_incr_steps)
        if self.wd_incr_style == "linear":
            coeff = ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * (1.0 - ratio)) + 1.0)
        return self.start_wd + coeff * (self.end_wd - self.start_wd)

    def lr_at(self, n):
        """The learning rate after ``n`` samples: ``n`` a number (host arithmetic) or a float64 tensor
        (device arithmetic, no host read); one formula for both."""
        ops = _DeviceOps if torch.is_tensor(n) else _HostOps
        warmup, decay = self.lr_warmup_steps, self.lr_decay_steps
        if self.lr_decay_style == "constant":
            after_warmup = self.max_lr
        elif self.lr_decay_style == "inverse-square-root":
            after_warmup = ops.clamp_min(self.max_lr * max(warmup, 1) ** 0.5 / ops.clamp_min(n, 1) ** 0.5,
                                         self.min_lr)
        else:
            ratio = (n - warmup) / float(decay - warmup)
            if self.lr_decay_style == "linear":
                coeff = 1.0 - ratio
            else:
                coeff = 0.5 * (ops.cos(math.pi * ratio) + 1.0)
            after_warmup = self.min_lr + coeff * (self.max_lr - self.min_lr)
        if self.lr_decay_style != "constant":
            after_warmup = ops.where(n > decay, self.min_lr, after_warmup)
        if warmup <= 0:
            return after_warmup
        in_warmup = self.init_lr + (self.max_lr - self.init_lr) * n / float(warmup)
        return ops.where(n <= warmup, in_warmup, after_warmup)

    def get_lr(self) -> float:
        self._read_device_steps()
        return self.lr_at(self.num_steps)

    def current_lr(self):
        """The learning rate of the next step without reading anything back: a float, or a device
        tensor while the step count lives on the device (the logger reads it at --log-interval)."""
        return self._device_lr if self._device_steps is not None else self.lr_at(self.num_steps)

    def _read_device_steps(self) -> None:
        if self._device_steps is not None:
            self.num_steps = int(round(float(self._device_steps.item())))

    def step(self, increment: int, skipped: Optional[torch.Tensor] = None) -> None:
        """Advance by ``increment`` samples and set every param group's lr and weight decay.

        ``skipped``: a device tensor, nonzero when the optimizer skipped this step (fp16 overflow);
        the step then counts zero samples, decided on the device (see the module docstring)."""
        if skipped is None and self._device_steps is None:
            self.num_steps += increment
            new_lr, new_wd = self.get_lr(), self.get_wd()
        else:
            if self._device_steps is None:
                device = skipped.device
                self._device_steps = torch.tensor(float(self.num_steps), dtype=torch.float64, device=device)
            kept = 1.0 if skipped is None else 1.0 - (skipped.reshape(()) != 0).to(torch.float64)
            self._device_steps = self._device_steps + increment * kept
            # float32, as the fused CUDA kernels read a tensor learning rate.
            self._device_lr = self.lr_at(self._device_steps).float()
            new_lr = self._device_lr
            new_wd = self.get_wd() if self._wd_depends_on_step() else self.end_wd
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = new_wd * group.get("wd_mult", 1.0)

    def state_dict(self) -> Dict:
        self._read_device_steps()
        return {
            "max_lr": self.max_lr, "lr_warmup_steps": self.lr_warmup_steps, "num_steps": self.num_steps,
            "lr_decay_style": self.lr_decay_style, "lr_decay_steps": self.lr_decay_steps, "min_lr": self.min_lr,
            "start_wd": self.start_wd, "end_wd": self.end_wd, "wd_incr_style": self.wd_incr_style,
            "wd_incr_steps": self.wd_incr_steps,
        }

    def _check_and_set(self, current, saved, name: str):
        """Which value wins when the run's value and the checkpoint's differ."""
        if self.override_opt_param_scheduler:
            return current
        if not self.use_checkpoint_opt_param_scheduler and current != saved:
            raise ValueError(
                f"OptimizerParamScheduler: {name} is {current} in this run but {saved} in the checkpoint; "
                f"pass --override-lr-scheduler to use this run's value or --use-checkpoint-lr-scheduler "
                f"to use the checkpoint's")
        return saved

    def load_state_dict(self, state_dict: Dict) -> None:
        """Restore a schedule, also from 2021 ``AnnealingLR`` state (``start_lr``, ``warmup_iter``,
        ``end_iter``, ``decay_style``, ``num_iters``, ``warmup_steps``, ``decay_steps``)."""
        def pick(*names):
            for name in names:
                if name in state_dict:
                    return state_dict[name]
            raise KeyError(f"scheduler state has none of {names}")

        self.max_lr = self._check_and_set(self.max_lr, pick("max_lr", "start_lr"), "learning rate")
        self.min_lr = self._check_and_set(self.min_lr, pick("min_lr"), "minimum learning rate")
        self.lr_warmup_steps = self._check_and_set(
            self.lr_warmup_steps, pick("lr_warmup_steps", "warmup_steps", "warmup_iter"), "warmup steps")
        self.lr_decay_steps = self._check_and_set(
            self.lr_decay_steps, pick("lr_decay_steps", "decay_steps", "end_iter"), "total number of iterations")
        self.lr_decay_style = self._check_and_set(
            self.lr_decay_style, pick("lr_decay_style", "decay_style"), "learning rate decay style")
        if "start_wd" in state_dict:
            self.start_wd = self._check_and_set(self.start_wd, state_dict["start_wd"], "start weight decay")
            self.end_wd = self._check_and_set(self.end_wd, state_dict["end_wd"], "end weight decay")
            self.wd_incr_steps = self._check_and_set(
                self.wd_incr_steps, state_dict["wd_incr_steps"], "total number of weight decay iterations")
            self.wd_incr_style = self._check_and_set(
                self.wd_incr_style, state_dict["wd_incr_style"], "weight decay incr style")
        num_steps = pick("num_steps", "num_iters")
        self.num_steps = 0
        self._device_steps = self._device_lr = None
        self.step(increment=num_steps)


class _HostOps:
    """Python arithmetic for ``lr_at`` on a number."""

    @staticmethod
    def where(condition, if_true, if_false):
        return if_true if condition else if_false

    cos = staticmethod(math.cos)
    clamp_min = staticmethod(max)


class _DeviceOps:
    """Tensor arithmetic for ``lr_at`` on a device tensor: both branches computed, one selected."""

    where = staticmethod(torch.where)
    cos = staticmethod(torch.cos)

    @staticmethod
    def clamp_min(value, low):
        return torch.clamp(value, min=low)
