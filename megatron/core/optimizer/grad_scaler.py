"""Loss scalers for fp16 training: a constant one and Megatron's dynamic one with hysteresis.

The scale and the trackers live in tensors that ``update`` changes with device operations, so
the training step never reads the overflow flag back to the host; ``state_dict`` (checkpoint
time) is where they become numbers.
"""
from typing import Dict

import torch


class ConstantGradScaler:
    def __init__(self, scale: float):
        self._scale = torch.tensor([float(scale)])

    @property
    def scale(self) -> torch.Tensor:
        return self._scale

    @property
    def inv_scale(self) -> torch.Tensor:
        return self._scale.double().reciprocal().float()

    def update(self, found_inf: torch.Tensor) -> None:
        pass

    def state_dict(self) -> Dict:
        return {}

    def load_state_dict(self, state_dict: Dict) -> None:
        pass


class DynamicGradScaler(ConstantGradScaler):
    """Grow the scale ``growth_factor``-fold after ``growth_interval`` clean steps in a row; shrink it
    by ``backoff_factor`` (never below ``min_scale``) once ``hysteresis`` overflowing steps have
    been seen since the last growth.

    As in Megatron, a clean step does not refill the hysteresis budget; only a growth does.
    ``update`` takes the overflow flag as a tensor (one element, > 0 means overflow; a bool also
    works) and decides with ``torch.where``: no branch on the flag, no host read.
    """

    def __init__(self, initial_scale: float, min_scale: float, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 1000, hysteresis: int = 2):
        if not (initial_scale > 0 and min_scale > 0 and min_scale <= initial_scale):
            raise ValueError(f"loss scale: need 0 < min_scale {min_scale} <= initial_scale {initial_scale}")
        if not (growth_factor > 1 and 0 < backoff_factor < 1):
            raise ValueError(f"loss scale: need growth_factor {growth_factor} > 1 and 0 < backoff_factor "
                             f"{backoff_factor} < 1")
        super().__init__(initial_scale)
        self.min_scale = float(min_scale)
        self.growth_factor = float(growth_factor)
        self.backoff_factor = float(backoff_factor)
        self.growth_interval = int(growth_interval)
        self.hysteresis = int(hysteresis)
        self._growth_tracker = torch.zeros(1, dtype=torch.int64)
        self._hysteresis_tracker = torch.full((1,), self.hysteresis, dtype=torch.int64)

    def update(self, found_inf: torch.Tensor) -> None:
        flag = torch.as_tensor(found_inf)
        device = flag.device
        inf = flag.reshape(1) > 0
        scale = self._scale.to(device)
        growth = torch.where(inf, 0, self._growth_tracker.to(device) + 1)
        grow = growth == self.growth_interval  # only reachable on a clean step
        hysteresis = self._hysteresis_tracker.to(device)
        hysteresis = torch.where(inf, hysteresis - 1, torch.where(grow, self.hysteresis, hysteresis))
        back_off = inf & (hysteresis <= 0)
        self._scale = torch.where(back_off, torch.clamp(scale * self.backoff_factor, min=self.min_scale),
                                  torch.where(grow, scale * self.growth_factor, scale))
        self._growth_tracker = torch.where(grow, 0, growth)
        self._hysteresis_tracker = hysteresis

    def state_dict(self) -> Dict:
        return {"scale": self._scale.detach().cpu().clone(), "growth_tracker": int(self._growth_tracker.item()),
                "hysteresis_tracker": int(self._hysteresis_tracker.item())}

    def load_state_dict(self, state_dict: Dict) -> None:
        self._scale = state_dict["scale"].detach().clone().float().reshape(1)
        self._growth_tracker = torch.tensor([int(state_dict["growth_tracker"])], dtype=torch.int64)
        self._hysteresis_tracker = torch.tensor([int(state_dict["hysteresis_tracker"])], dtype=torch.int64)
