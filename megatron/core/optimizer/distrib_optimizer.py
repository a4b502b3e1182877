"""ZeRO-1: fp32 master parameters and optimizer state sharded over the data-parallel ranks.

The local DDP wrapper (with ``use_distributed_optimizer``) pads every bucket to a multiple of the
data-parallel size and reduce-scatters it, so data-parallel rank ``r`` ends backward holding the
averaged gradient of the ``r``-th contiguous slice of each bucket. This optimizer keeps fp32
masters and Adam/SGD state for exactly those slices (a slice may cover part of a parameter),
updates them, writes them into the model parameters and all-gathers each bucket's parameters.
The update of every element is the one the unsharded optimizer would make, so the result equals
``Float16OptimizerWithFloat16Params`` / ``FP32Optimizer`` on the same gradients.

Checkpoints: ``state_dict()`` is collective over the data-parallel group (every DP rank must call
it). Data-parallel rank 0 receives the whole unsharded state: the fp32 master of every parameter
and every optimizer state tensor at full shape, in parameter order, which it saves like any
optimizer state. The shards travel to it one bucket and one quantity at a time (a gather, not an
all-reduce), so the other ranks never hold more than one bucket's shard beyond their own state and
get back a dict without tensors (``fp32_params`` is None), which is not a checkpoint. On load every
rank passes the saved dict to ``load_state_dict()``, which keeps its own slices (no
communication), so a resume is exact and may change the data-parallel size.
"""
from dataclasses import dataclass
from typing import Dict, List, Optional

import torch
import torch.distributed as dist

from megatron.core.distributed.distributed_data_parallel import DistributedDataParallel
from megatron.core.distributed.grad_buffer import Bucket, GradBuffer
from megatron.core.optimizer.optimizer import (MegatronOptimizer, build_torch_optimizer, copy_tp_attributes,
                                               plain_param_groups)
from megatron.core.tensor_parallel.mappings import all_reduce, gather_to_first

FORMAT = "megatron-lite distributed optimizer, unsharded, v1"
# Elements per rank in one gather of a checkpoint save: bounds what a save adds to any rank's memory.
GATHER_ELEMENTS = 4_000_000
_STATE_KEYS = {"adam": ("exp_avg", "exp_avg_sq"), "sgd": ("momentum_buffer",)}


@dataclass(eq=False)
class _Shard:
    master: torch.nn.Parameter
    param: torch.nn.Parameter
    start: int              # [start, end) of the flattened parameter
    end: int
    buffer: GradBuffer
    bucket: Bucket


def find_ddp(chunk: torch.nn.Module) -> DistributedDataParallel:
    module = chunk
    while module is not None:
        if isinstance(module, DistributedDataParallel):
            return module
        module = getattr(module, "_modules", {}).get("module")
    raise TypeError("the distributed optimizer needs every model chunk wrapped in "
                    "megatron.core.distributed.DistributedDataParallel (--DDP-impl local)")


class DistributedOptimizer(MegatronOptimizer):
    def __init__(self, config, groups: List[Dict], model_chunks, pg, grad_scaler=None, duplicate_params=None):
        self.ddps = [find_ddp(chunk) for chunk in model_chunks]
        for ddp in self.ddps:
            if not ddp.config.use_distributed_optimizer:
                raise ValueError("the distributed optimizer needs DistributedDataParallelConfig("
                                 "use_distributed_optimizer=True) so that gradients are reduce-scattered")
        self.model_params = [p for group in groups for p in group["params"]]
        group_of = {p: i for i, group in enumerate(groups) for p in group["params"]}
        self.shards: List[_Shard] = []
        main_groups = [dict(group, params=[]) for group in groups]
        for ddp in self.ddps:
            for buffer in ddp.buffers:
                for bucket in buffer.buckets:
                    lo, hi = bucket.shard_range()
                    for param in bucket.params:
                        if param not in group_of:
                            continue
                        if not param.is_contiguous():
                            raise ValueError("distributed optimizer: model parameters must be contiguous")
                        ps, pe = buffer.param_ranges[param]
                        start, end = max(ps, lo) - ps, min(pe, hi) - ps
                        if start >= end:
                            continue
                        master = torch.nn.Parameter(param.detach().reshape(-1)[start:end].clone().float())
                        copy_tp_attributes(param, master)
                        main_groups[group_of[param]]["params"].append(master)
                        self.shards.append(_Shard(master, param, start, end, buffer, bucket))
        super().__init__(build_torch_optimizer(config, main_groups), config, model_chunks, pg, grad_scaler,
                         duplicate_params)
        # Each rank sees only its shard: inf checks and norms also sum over data-parallel ranks.
        self.stats_groups = [pg.dp, pg.mp]
        self._pairs = [(s.master, s.param) for s in self.shards]

    def main_params(self):
        return self._pairs

    def _prepare_grads(self) -> None:
        for shard in self.shards:
            grad = shard.param.main_grad.reshape(-1)[shard.start:shard.end]
            shard.master.grad = grad if grad.dtype == torch.float32 else grad.float()

    def _copy_main_params_to_model_params(self) -> None:
        for shard in self.shards:
            shard.param.data.view(-1)[shard.start:shard.end].copy_(shard.master.data)
        for ddp in self.ddps:
            ddp.all_gather_params()

    def reload_model_params(self) -> None:
        for shard in self.shards:
            shard.master.data.copy_(shard.param.data.reshape(-1)[shard.start:shard.end].float())

    # -- checkpointing ---------------------------------------------------------------------------
    def _gather_full(self, pieces) -> Optional[List[torch.Tensor]]:
        """Full fp32 tensors, in parameter order, on data-parallel rank 0 (None on the others);
        ``pieces(shard)`` gives this rank's slice. Each bucket is gathered on its own, in pieces of
        at most ``GATHER_ELEMENTS`` per rank, straight into a flat tensor laid out like the grad
        buffer, of which the returned tensors are views: rank 0 holds little beyond the result, the
        other ranks one piece at a time."""
        first = self.pg.dp_rank == 0
        dp = self.pg.data_parallel_size
        index = {p: i for i, p in enumerate(self.model_params)}
        full: List[Optional[torch.Tensor]] = [None] * len(self.model_params)
        shards_of: Dict[int, List[_Shard]] = {}
        for shard in self.shards:
            shards_of.setdefault(id(shard.bucket), []).append(shard)
        for ddp in self.ddps:
            for buffer in ddp.buffers:
                flat = torch.zeros(buffer.numel, dtype=torch.float32, device=buffer.data.device) if first else None
                for bucket in buffer.buckets:
                    # Same buckets and pieces in the same order on every data-parallel rank: the gathers pair up.
                    lo, hi = bucket.shard_range()
                    values = [(buffer.param_ranges[s.param][0] + s.start - lo, pieces(s))
                              for s in shards_of.get(id(bucket), ())]
                    for begin in range(0, hi - lo, GATHER_ELEMENTS):
                        end = min(begin + GATHER_ELEMENTS, hi - lo)
                        piece = torch.zeros(end - begin, dtype=torch.float32, device=bucket.data.device)
                        for offset, value in values:
                            if value is None:
                                continue
                            s, e = max(offset, begin), min(offset + value.numel(), end)
                            if s < e:
                                piece[s - begin:e - begin].copy_(value[s - offset:e - offset])
                        outputs = None
                        if first:
                            # Rank r's shard of the bucket starts at bucket.start + r * shard size.
                            outputs = [flat[bucket.start + r * (hi - lo) + begin:bucket.start + r * (hi - lo) + end]
                                       for r in range(dp)]
                        gather_to_first(piece, self.pg.dp, outputs)
                if first:
                    for param in buffer.params:
                        if param in index:
                            ps, pe = buffer.param_ranges[param]
                            full[index[param]] = flat[ps:pe].view(param.shape)
        if not first:
            return None
        return [t if t is not None else torch.zeros(p.shape, dtype=torch.float32, device=p.device)
                for t, p in zip(full, self.model_params)]

    def _max_over_dp(self, value: float) -> float:
        tensor = torch.tensor([value], dtype=torch.float64)
        all_reduce(tensor, self.pg.dp, op=dist.ReduceOp.MAX)
        return float(tensor.item())

    def state_dict(self) -> Dict:
        """Collective over the data-parallel group; the whole unsharded state on data-parallel rank 0,
        a dict without tensors (``fp32_params`` None) on the others."""
        inner = self.optimizer.state
        steps = [float(inner[s.master]["step"]) for s in self.shards if "step" in inner.get(s.master, {})]
        step = self._max_over_dp(max(steps) if steps else -1.0)
        keys = _STATE_KEYS[self.config.optimizer]
        has_state = self._max_over_dp(1.0 if any(
            inner.get(s.master, {}).get(keys[0]) is not None for s in self.shards) else 0.0) > 0
        state = {}
        if has_state:
            for key in keys:
                state[key] = self._gather_full(lambda s, key=key: inner.get(s.master, {}).get(key))
        if self.pg.dp_rank != 0:
            state = None
        groups = plain_param_groups(self.optimizer.param_groups)
        return {
            "format": FORMAT,
            "param_groups": groups,
            "fp32_params": self._gather_full(lambda s: s.master.detach()),
            "state": state,
            "step": None if step < 0 else step,
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
        }

    def load_state_dict(self, state_dict: Dict) -> None:
        if state_dict.get("format") != FORMAT:
            raise ValueError(f"distributed optimizer: checkpoint optimizer state has format "
                             f"{state_dict.get('format')!r}, expected {FORMAT!r} (was it saved without "
                             f"--use-distributed-optimizer? then load with --no-load-optim)")
        saved = state_dict["fp32_params"]
        if saved is None:
            raise ValueError("distributed optimizer: this state dict was returned to a data-parallel rank "
                             "other than 0 and holds no tensors; load the one data-parallel rank 0 saved")
        shapes = [tuple(p.shape) for p in self.model_params]
        if [tuple(t.shape) for t in saved] != shapes:
            raise ValueError(f"distributed optimizer: checkpoint holds {len(saved)} parameters that do not match "
                             f"this model's {len(shapes)} in order and shape")
        index = {p: i for i, p in enumerate(self.model_params)}
        inner = self.optimizer.state_dict()
        if len(inner["param_groups"]) != len(state_dict["param_groups"]):
            raise ValueError(f"distributed optimizer: checkpoint has {len(state_dict['param_groups'])} param "
                             f"groups, this model {len(inner['param_groups'])}")
        for group, saved_group in zip(inner["param_groups"], state_dict["param_groups"]):
            group.update({k: v for k, v in saved_group.items() if k != "params"})
        position = {id(p): i for i, p in enumerate(p for g in self.optimizer.param_groups for p in g["params"])}
        new_state = {}
        for shard in self.shards:
            i = index[shard.param]
            shard.master.data.copy_(saved[i].reshape(-1)[shard.start:shard.end])
            if state_dict["state"]:
                entry = {key: full[i].reshape(-1)[shard.start:shard.end].clone()
                         for key, full in state_dict["state"].items()}
                if state_dict["step"] is not None and self.config.optimizer == "adam":
                    entry["step"] = torch.tensor(float(state_dict["step"]), dtype=torch.float32)
                new_state[position[id(shard.master)]] = entry
        inner["state"] = new_state
        self.optimizer.load_state_dict(inner)
        if self.grad_scaler is not None:
            if state_dict.get("grad_scaler") is None:
                raise KeyError("optimizer state has no 'grad_scaler' entry but this run uses fp16 loss scaling; "
                               "load with --no-load-optim to start the scaler afresh")
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
