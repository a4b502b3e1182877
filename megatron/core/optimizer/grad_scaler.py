"""Loss scalers for fp16 training: a constant one and Megatron's dynamic one with hysteresis."""
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

    def update(self, found_inf: bool) -> None:
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
        self._growth_tracker = 0
        self._hysteresis_tracker = self.hysteresis

    def update(self, found_inf: bool) -> None:
        if found_inf:
            self._growth_tracker = 0
            self._hysteresis_tracker -= 1
            if self._hysteresis_tracker <= 0:
                self._scale = torch.clamp(self._scale * self.backoff_factor, min=self.min_scale)
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._growth_tracker = 0
                self._hysteresis_tracker = self.hysteresis
                self._scale = self._scale * self.growth_factor

    def state_dict(self) -> Dict:
        return {"scale": self._scale.clone(), "growth_tracker": self._growth_tracker,
                "hysteresis_tracker": self._hysteresis_tracker}

    def load_state_dict(self, state_dict: Dict) -> None:
        self._scale = state_dict["scale"].detach().clone().float().reshape(1)
        self._growth_tracker = int(state_dict["growth_tracker"])
        self._hysteresis_tracker = int(state_dict["hysteresis_tracker"])
