"""The wrappers around a model chunk (``Float16Module``, the local ``DistributedDataParallel``) are
transparent: state dicts carry the inner module's names, so checkpoints do not depend on the
wrapping, and attributes the wrapper lacks (``pre_process``, ``set_input_tensor``...) are the
inner module's."""
import torch


class ModuleWrapper(torch.nn.Module):
    """Delegates forward, state dicts, the schedules' ``set_input_tensor`` and unknown attributes
    to ``self.module``."""

    def forward(self, *args, **kwargs):
        return self.module(*args, **kwargs)

    def set_input_tensor(self, input_tensor) -> None:
        self.module.set_input_tensor(input_tensor)

    def state_dict(self, *args, **kwargs):
        return self.module.state_dict(*args, **kwargs)

    def load_state_dict(self, state_dict, strict: bool = True):
        return self.module.load_state_dict(state_dict, strict=strict)

    def __getattr__(self, name):
        if name == "module":
            return super().__getattr__(name)
        try:
            return super().__getattr__(name)
        except AttributeError:
            return getattr(self.module, name)
