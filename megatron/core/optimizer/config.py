"""Configuration of the optimizer, mixed precision and gradient clipping."""
from dataclasses import dataclass
from typing import Optional

import torch

OPTIMIZERS = ("adam", "sgd")


@dataclass
class OptimizerConfig:
    optimizer: str = "adam"
    """``adam`` (decoupled weight decay, i.e. AdamW, as Megatron's fused Adam) or ``sgd`` (momentum)."""
    lr: Optional[float] = None
    """Initial learning rate; the scheduler overwrites it every step."""
    min_lr: float = 0.0
    weight_decay: float = 0.01
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    sgd_momentum: float = 0.9
    clip_grad: float = 1.0
    """Clip the global L2 norm of the gradients to this value; 0 disables clipping (and the norm)."""
    fp16: bool = False
    bf16: bool = False
    params_dtype: torch.dtype = torch.float32
    loss_scale: Optional[float] = None
    """Static loss scale for fp16; ``None`` selects the dynamic scaler below."""
    initial_loss_scale: float = 2**32
    min_loss_scale: float = 1.0
    loss_scale_window: float = 1000
    """Clean steps after which the dynamic scale doubles."""
    hysteresis: int = 2
    """Consecutive overflowing steps after which the dynamic scale halves."""
    use_distributed_optimizer: bool = False
    log_num_zeros_in_grad: bool = False

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are mutually exclusive")
        if self.clip_grad < 0:
            raise ValueError(f"clip_grad must be >= 0 (0 disables clipping), got {self.clip_grad}")
        if self.loss_scale is not None and self.loss_scale <= 0:
            raise ValueError(f"loss_scale must be > 0, got {self.loss_scale}")
        if self.initial_loss_scale <= 0 or self.min_loss_scale <= 0:
            raise ValueError(f"initial_loss_scale {self.initial_loss_scale} and min_loss_scale "
                             f"{self.min_loss_scale} must be > 0")
        if self.loss_scale_window < 1 or self.hysteresis < 1:
            raise ValueError(
                f"loss_scale_window {self.loss_scale_window} and hysteresis {self.hysteresis} must be >= 1")
