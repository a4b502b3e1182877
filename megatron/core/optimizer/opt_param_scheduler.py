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
"""
import math
from typing import Dict

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

    def get_wd(self) -> float:
        if self.num_steps > self.wd_incr_steps or self.wd_incr_style == "constant" or self.wd_incr_steps <= 0:
            return self.end_wd
        ratio = float(self.num_steps) / float(self.wd_incr_steps)
        if self.wd_incr_style == "linear":
            coeff = ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * (1.0 - ratio)) + 1.0)
        return self.start_wd + coeff * (self.end_wd - self.start_wd)

    def get_lr(self) -> float:
        if self.lr_warmup_steps > 0 and self.num_steps <= self.lr_warmup_steps:
            return self.init_lr + (self.max_lr - self.init_lr) * float(self.num_steps) / float(self.lr_warmup_steps)
        if self.lr_decay_style == "constant":
            return self.max_lr
        if self.num_steps > self.lr_decay_steps:
            return self.min_lr
        if self.lr_decay_style == "inverse-square-root":
            warmup = max(self.lr_warmup_steps, 1)
            steps = max(self.num_steps, 1)
            return max(self.min_lr, self.max_lr * warmup ** 0.5 / steps ** 0.5)
        ratio = float(self.num_steps - self.lr_warmup_steps) / float(self.lr_decay_steps - self.lr_warmup_steps)
        if self.lr_decay_style == "linear":
            coeff = 1.0 - ratio
        else:
            coeff = 0.5 * (math.cos(math.pi * ratio) + 1.0)
        return self.min_lr + coeff * (self.max_lr - self.min_lr)

    def step(self, increment: int) -> None:
        """Advance by ``increment`` samples and set every param group's lr and weight decay."""
        self.num_steps += increment
        new_lr, new_wd = self.get_lr(), self.get_wd()
        for group in self.optimizer.param_groups:
            group["lr"] = new_lr * group.get("lr_mult", 1.0)
            group["weight_decay"] = new_wd * group.get("wd_mult", 1.0)

    def state_dict(self) -> Dict:
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
        self.step(increment=num_steps)
