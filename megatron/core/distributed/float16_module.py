"""``--fp16`` / ``--bf16``: run a model chunk in half precision, keep its interface in fp32.

The parameters are cast once (the optimizer keeps fp32 master copies); the first pipeline stage
casts floating-point inputs to the half dtype and the last stage returns fp32 losses/logits, so
the loss function and the loss scaler see fp32 values.
"""
from typing import Union

import torch

from megatron.core.distributed.module_wrapper import ModuleWrapper
from megatron.core.pipeline_parallel.finalize import unwrap_model

_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _convert(value, dtype: torch.dtype, only_from=None):
    """Cast every floating tensor in a (nested) value; ``only_from`` restricts the source dtypes."""
    if isinstance(value, torch.Tensor):
        if value.is_floating_point() and (only_from is None or value.dtype in only_from):
            return value.to(dtype)
        return value
    if isinstance(value, (list, tuple)):
        return type(value)(_convert(v, dtype, only_from) for v in value)
    if isinstance(value, dict):
        return {k: _convert(v, dtype, only_from) for k, v in value.items()}
    return value


def _half_dtype(config_or_dtype) -> torch.dtype:
    if isinstance(config_or_dtype, torch.dtype):
        dtype = config_or_dtype
    elif getattr(config_or_dtype, "fp16", False):
        dtype = torch.float16
    elif getattr(config_or_dtype, "bf16", False):
        dtype = torch.bfloat16
    else:
        dtype = getattr(config_or_dtype, "params_dtype", None)
    if dtype not in _HALF_DTYPES:
        raise ValueError(f"Float16Module needs torch.float16 or torch.bfloat16, got {dtype}")
    return dtype


class Float16Module(ModuleWrapper):
    def __init__(self, config_or_dtype: Union[torch.dtype, object], module: torch.nn.Module):
        super().__init__()
        self.dtype = _half_dtype(config_or_dtype)
        self.module = module.to(self.dtype)

    def _stage(self, name: str) -> bool:
        return bool(getattr(unwrap_model(self.module), name, True))

    def forward(self, *args, **kwargs):
        if self._stage("pre_process"):
            args = _convert(args, self.dtype, only_from=(torch.float32, torch.float64))
            kwargs = _convert(kwargs, self.dtype, only_from=(torch.float32, torch.float64))
        output = self.module(*args, **kwargs)
        if self._stage("post_process"):
            output = _convert(output, torch.float32, only_from=_HALF_DTYPES)
        return output
