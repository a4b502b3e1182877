"""Megatron's optimizer wrappers around a ``torch.optim`` optimizer.

``MegatronOptimizer.step()`` is one update of one global batch: bring the gradients to the fp32
"main" parameters the inner optimizer updates, unscale them and skip the step on inf/NaN (fp16),
clip by the global norm over every tensor- and pipeline-parallel shard, count zeros if asked,
step, and copy the updated main parameters back into the model.

* ``FP32Optimizer``: fp32 model, the model parameters are the main parameters.
* ``Float16OptimizerWithFloat16Params``: fp16/bf16 model, fp32 master copies of the half
  parameters (fp32 parameters, if any, are updated in place); fp16 uses a loss scaler.
* ``DistributedOptimizer`` (``distrib_optimizer.py``): the same, sharded over data-parallel ranks.
"""
import abc
from typing import Dict, List, Optional, Set, Tuple

import torch

from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel.mappings import all_reduce

_TP_ATTRIBUTES = ("tensor_model_parallel", "partition_dim", "partition_stride", "sequence_parallel", "shared")


def model_grad(param: torch.nn.Parameter) -> Optional[torch.Tensor]:
    """The local DDP wrapper accumulates into ``main_grad``; plain modules and torch DDP into ``grad``."""
    main_grad = getattr(param, "main_grad", None)
    return main_grad if main_grad is not None else param.grad


def copy_tp_attributes(source: torch.Tensor, target: torch.Tensor) -> None:
    for name in _TP_ATTRIBUTES:
        if hasattr(source, name):
            setattr(target, name, getattr(source, name))


class MegatronOptimizer(abc.ABC):
    """Common step logic; subclasses say where the main parameters and their gradients are."""

    def __init__(self, optimizer: torch.optim.Optimizer, config, model_chunks: List[torch.nn.Module],
                 pg: ProcessGroups, grad_scaler=None, duplicate_params: Optional[Set] = None):
        self.optimizer = optimizer
        self.config = config
        self.model_chunks = model_chunks
        self.pg = pg
        self.grad_scaler = grad_scaler
        self.duplicate_params = duplicate_params or set()
        self._one = torch.tensor([1.0])
        # Inf checks and norms cover every model-parallel shard; a sharded optimizer adds DP.
        self.stats_groups = [pg.mp]

    # -- subclass hooks ----------------------------------------------------------------------
    @abc.abstractmethod
    def main_params(self) -> List[Tuple[torch.Tensor, torch.nn.Parameter]]:
        """(tensor the inner optimizer updates, the model parameter it belongs to)."""

    @abc.abstractmethod
    def _prepare_grads(self) -> None:
        """Bring the model gradients to the main parameters' ``.grad`` (fp32)."""

    @abc.abstractmethod
    def _copy_main_params_to_model_params(self) -> None:
        """Write the updated main parameters back into the model parameters."""

    @abc.abstractmethod
    def reload_model_params(self) -> None:
        """Copy the model parameters into the fp32 main parameters (after loading a checkpoint)."""

    @abc.abstractmethod
    def state_dict(self) -> Dict:
        """The inner optimizer's state plus what this wrapper must restore (scaler, fp32 copies)."""

    @abc.abstractmethod
    def load_state_dict(self, state_dict: Dict) -> None:
        """Restore what ``state_dict`` returned."""

    # -- public interface --------------------------------------------------------------------
    @property
    def param_groups(self) -> List[Dict]:
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    def get_loss_scale(self) -> torch.Tensor:
        return self.grad_scaler.scale if self.grad_scaler is not None else self._one

    def scale_loss(self, loss: torch.Tensor) -> torch.Tensor:
        return loss * self.get_loss_scale().to(loss.device)

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Clear model and main gradients, including the local DDP gradient buffers."""
        seen = set()
        for main, param in self.main_params():
            for tensor in (main, param):
                if id(tensor) in seen:
                    continue
                seen.add(id(tensor))
                if set_to_none or tensor.grad is None:
                    tensor.grad = None
                else:
                    tensor.grad.zero_()
        for chunk in self.model_chunks:
            zero_buffer = getattr(chunk, "zero_grad_buffer", None)
            if zero_buffer is not None:
                zero_buffer()

    @torch.no_grad()
    def step(self, sync: bool = True) -> Tuple[bool, Optional[float], Optional[int]]:
        """Returns (update_successful, grad_norm, num_zeros_in_grad); an fp16 overflow skips the step.

        ``sync=False`` (the training loop) never waits for the device: the norm and the zero count
        come back as device tensors, and with a loss scaler so does the overflow decision. The
        flag goes to the fused optimizer kernel (``found_inf``), which leaves the parameters and
        the optimizer state untouched on overflow, and ``update_successful`` is a device bool
        tensor that the loop passes on to the scheduler and the logger. ``sync=True`` returns
        numbers and skips on the host (the norm is then not computed for a skipped step)."""
        self._prepare_grads()
        try:
            found_inf = None
            if self.grad_scaler is not None:
                found_inf = self._unscale_and_check_for_inf()
                self.grad_scaler.update(found_inf)
                if sync and found_inf.item() > 0:
                    return False, None, None
            grad_norm = None
            if self.config.clip_grad > 0.0:
                grad_norm = self._clip_by_global_norm(self.config.clip_grad)
            num_zeros = self._count_zeros_tensor() if self.config.log_num_zeros_in_grad else None
            if found_inf is not None and not sync:
                self.optimizer.found_inf = found_inf.reshape(())
                try:
                    self.optimizer.step()
                finally:
                    self.optimizer.found_inf = None
                # A skipped step left the fp32 main parameters as they were: copying them back
                # rewrites the model parameters with their own values.
                self._copy_main_params_to_model_params()
                return found_inf.reshape(()) == 0, grad_norm, num_zeros
            self.optimizer.step()
            self._copy_main_params_to_model_params()
            if sync:
                grad_norm = float(grad_norm.item()) if grad_norm is not None else None
                num_zeros = int(num_zeros.item()) if num_zeros is not None else None
            return True, grad_norm, num_zeros
        finally:
            self._release_aliased_grads()

    # -- pieces of the step --------------------------------------------------------------------
    def _release_aliased_grads(self) -> None:
        """A model parameter whose ``grad`` aliases its ``main_grad`` must not keep it into the next
        backward, where autograd would accumulate into the buffer twice."""
        for main, param in self.main_params():
            if main is param and getattr(param, "main_grad", None) is not None:
                param.grad = None

    def _main_grads(self) -> List[torch.Tensor]:
        return [main.grad for main, _ in self.main_params() if main.grad is not None]

    def _all_reduce_stats(self, tensor: torch.Tensor, op=torch.distributed.ReduceOp.SUM) -> torch.Tensor:
        for group in self.stats_groups:
            all_reduce(tensor, group, op=op)
        return tensor

    def _unscale_and_check_for_inf(self) -> torch.Tensor:
        """Unscale the main gradients in place; returns the overflow flag [1] (> 0: inf/NaN seen on
        some model-parallel rank), on the device."""
        grads = self._main_grads()
        found_inf = torch.zeros(1)
        inv_scale = self.grad_scaler.inv_scale
        if grads:
            device = grads[0].device
            found_inf, inv_scale = found_inf.to(device), inv_scale.to(device)
            torch._amp_foreach_non_finite_check_and_unscale_(grads, found_inf, inv_scale)
        # Every rank must skip together, or the replicas' weights drift apart.
        self._all_reduce_stats(found_inf, op=torch.distributed.ReduceOp.MAX)
        return found_inf

    def _counted_grads(self) -> List[torch.Tensor]:
        """Gradients that enter the global norm once: tensor-parallel shards on every TP rank,
        replicated parameters on TP rank 0 only, tied embedding copies on their first owner only."""
        tp_rank = self.pg.tp_rank if self.pg.tensor_model_parallel_size > 1 else 0
        grads = []
        for main, param in self.main_params():
            if main.grad is None or param in self.duplicate_params:
                continue
            if getattr(param, "tensor_model_parallel", False) or tp_rank == 0:
                grads.append(main.grad)
        return grads

    def get_grad_norm_tensor(self) -> torch.Tensor:
        """The global L2 norm as a float64 device tensor [1]: one multi-tensor norm kernel
        (``torch._foreach_norm``) over this rank's counted gradients, squares summed, one
        all-reduce over the model-parallel groups; nothing is read back to the host."""
        grads = self._counted_grads()
        device = grads[0].device if grads else torch.device("cpu")
        total = torch.zeros(1, dtype=torch.float64, device=device)
        if grads:
            norms = torch._foreach_norm([g.float() if g.dtype != torch.float32 else g for g in grads])
            total = torch.stack([n.double() for n in norms]).pow(2).sum().reshape(1)
        self._all_reduce_stats(total)
        return total.sqrt()

    def get_grad_norm(self) -> float:
        return float(self.get_grad_norm_tensor().item())

    def _clip_by_global_norm(self, max_norm: float) -> torch.Tensor:
        total_norm = self.get_grad_norm_tensor()
        grads = self._main_grads()
        if grads:
            # min(1, max_norm / norm) on the device: an unclipped step multiplies by exactly 1.0,
            # so the result equals the branch on a host-side norm without reading it.
            clip_coeff = (max_norm / (total_norm + 1.0e-6)).clamp(max=1.0).to(grads[0].dtype).reshape(())
            torch._foreach_mul_(grads, clip_coeff)
        return total_norm

    def clip_grad_norm(self, max_norm: float) -> float:
        return float(self._clip_by_global_norm(max_norm).item())

    def _count_zeros_tensor(self) -> torch.Tensor:
        grads = self._counted_grads()
        if grads:
            zeros = torch.stack([(grad == 0).sum() for grad in grads]).sum().double().reshape(1)
        else:
            zeros = torch.zeros(1, dtype=torch.float64)
        self._all_reduce_stats(zeros)
        return zeros

    def count_zeros(self) -> int:
        return int(self._count_zeros_tensor().item())


class FP32Optimizer(MegatronOptimizer):
    """fp32 model: the inner optimizer updates the model parameters themselves."""

    def __init__(self, config, groups: List[Dict], model_chunks, pg, duplicate_params=None):
        super().__init__(build_torch_optimizer(config, groups), config, model_chunks, pg, None, duplicate_params)
        self._pairs = [(p, p) for group in self.optimizer.param_groups for p in group["params"]]

    def main_params(self):
        return self._pairs

    def _prepare_grads(self) -> None:
        for param, _ in self._pairs:
            main_grad = getattr(param, "main_grad", None)
            if main_grad is not None:
                param.grad = main_grad if main_grad.dtype == param.dtype else main_grad.to(param.dtype)

    def _copy_main_params_to_model_params(self) -> None:
        pass

    def reload_model_params(self) -> None:
        pass

    def state_dict(self) -> Dict:
        return with_plain_param_groups(self.optimizer.state_dict())

    def load_state_dict(self, state_dict: Dict) -> None:
        self.optimizer.load_state_dict(state_dict)


class Float16OptimizerWithFloat16Params(MegatronOptimizer):
    """fp16/bf16 model with fp32 master copies of its half-precision parameters."""

    def __init__(self, config, groups: List[Dict], model_chunks, pg, grad_scaler=None, duplicate_params=None):
        self._pairs: List[Tuple[torch.Tensor, torch.nn.Parameter]] = []
        self._groups_of_masters: List[List[torch.Tensor]] = []
        main_groups = []
        for group in groups:
            mains, masters = [], []
            for param in group["params"]:
                if param.dtype in (torch.float16, torch.bfloat16):
                    master = torch.nn.Parameter(param.detach().clone().float())
                    copy_tp_attributes(param, master)
                    masters.append(master)
                    self._pairs.append((master, param))
                    mains.append(master)
                elif param.dtype == torch.float32:
                    self._pairs.append((param, param))
                    mains.append(param)
                else:
                    raise TypeError(f"parameter dtype {param.dtype} is not fp32, fp16 or bf16")
            main_groups.append(dict(group, params=mains))
            self._groups_of_masters.append(masters)
        super().__init__(build_torch_optimizer(config, main_groups), config, model_chunks, pg, grad_scaler,
                         duplicate_params)

    def main_params(self):
        return self._pairs

    def _prepare_grads(self) -> None:
        for main, param in self._pairs:
            grad = model_grad(param)
            if grad is None:
                main.grad = None
            elif main is param:
                if grad is not param.grad:
                    param.grad = grad if grad.dtype == param.dtype else grad.to(param.dtype)
            else:
                main.grad = grad if grad.dtype == torch.float32 else grad.float()

    def _copy_main_params_to_model_params(self) -> None:
        for main, param in self._pairs:
            if main is not param:
                param.data.copy_(main.data)

    def reload_model_params(self) -> None:
        for main, param in self._pairs:
            if main is not param:
                main.data.copy_(param.data.float())

    def state_dict(self) -> Dict:
        return {
            "optimizer": with_plain_param_groups(self.optimizer.state_dict()),
            "grad_scaler": self.grad_scaler.state_dict() if self.grad_scaler is not None else None,
            "fp32_from_fp16_params": [[m.detach().clone() for m in masters] for masters in self._groups_of_masters],
        }

    def load_state_dict(self, state_dict: Dict) -> None:
        self.optimizer.load_state_dict(state_dict["optimizer"])
        if self.grad_scaler is not None:
            if state_dict.get("grad_scaler") is None:
                raise KeyError("optimizer state has no 'grad_scaler' entry but this run uses fp16 loss scaling; "
                               "load with --no-load-optim to start the scaler afresh")
            self.grad_scaler.load_state_dict(state_dict["grad_scaler"])
        saved = state_dict["fp32_from_fp16_params"]
        if [len(g) for g in saved] != [len(g) for g in self._groups_of_masters]:
            raise ValueError(f"checkpoint has fp32 master params per group {[len(g) for g in saved]}, "
                             f"this model {[len(g) for g in self._groups_of_masters]}")
        for masters, saved_masters in zip(self._groups_of_masters, saved):
            for master, value in zip(masters, saved_masters):
                master.data.copy_(value)


def plain_param_groups(groups: List[Dict]) -> List[Dict]:
    """Param-group settings without the parameters, as numbers: the scheduler hands the fused
    optimizer a tensor learning rate under fp16, and checkpoints keep Megatron's plain floats."""
    return [{k: (float(v.item()) if torch.is_tensor(v) else v) for k, v in group.items() if k != "params"}
            for group in groups]


def with_plain_param_groups(state: Dict) -> Dict:
    """A ``torch.optim`` state dict whose param groups hold numbers (see ``plain_param_groups``)."""
    params = [group["params"] for group in state["param_groups"]]
    groups = plain_param_groups(state["param_groups"])
    for group, ids in zip(groups, params):
        group["params"] = ids
    return dict(state, param_groups=groups)


def build_torch_optimizer(config, groups: List[Dict]) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Megatron's fused Adam runs in AdamW mode) or SGD: the fused
    kernels on CUDA, and under fp16 everywhere (their ``found_inf`` input skips an overflowing step
    on the device), the multi-tensor (``foreach``) implementation otherwise. All compute the same
    update as the per-tensor loop (tested to 1e-6)."""
    on_gpu = any(p.is_cuda for g in groups for p in g["params"])
    kwargs = {"fused": True} if on_gpu or getattr(config, "fp16", False) else {"foreach": True}
    lr = config.lr if config.lr is not None else 0.0
    if config.optimizer == "adam":
        return torch.optim.AdamW(groups, lr=lr, weight_decay=config.weight_decay,
                                 betas=(config.adam_beta1, config.adam_beta2), eps=config.adam_eps, **kwargs)
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, weight_decay=config.weight_decay, momentum=config.sgd_momentum,
                               **kwargs)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; expected 'adam' or 'sgd'")

