"""The stack of transformer layers one pipeline stage (or virtual stage) owns, with recomputation."""
import contextlib
from typing import Optional, Tuple

import torch
from torch import nn

from megatron.core import layer_layout
from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.tensor_parallel import checkpoint, get_rng_tracker, init_rng_scope
from megatron.core.transformer.config import TransformerConfig
from megatron.core.transformer.enums import AttnMaskType, LayerType
from megatron.core.transformer.layer import TransformerLayer, make_layernorm
from megatron.core.utils import make_viewless_tensor


def stage_layer_range(config: TransformerConfig, pg: ProcessGroups, layer_type: LayerType = LayerType.encoder,
                      num_layers: Optional[int] = None) -> Tuple[int, int]:
    """(number of layers, global index of the first) for this rank's current (virtual) stage; the
    arithmetic and its checks are ``megatron.core.layer_layout``'s."""
    total = num_layers if num_layers is not None else config.num_layers
    return layer_layout.stage_layer_range(
        total, pg.pipeline_model_parallel_size, pg.pp_rank, pg.virtual_pipeline_model_parallel_size,
        pg.virtual_pipeline_model_parallel_rank, pg.pipeline_model_parallel_split_rank,
        layer_layout.ENCODER if layer_type == LayerType.encoder else layer_layout.DECODER)


class TransformerBlock(nn.Module):
    """This stage's layers (locally numbered ``layers.0..n-1``) and, on the last stage, ``final_layernorm``."""

    def __init__(self, config: TransformerConfig, layer_type: LayerType = LayerType.encoder,
                 self_attn_mask_type: AttnMaskType = AttnMaskType.padding,
                 pre_process: bool = True, post_process: bool = True, post_layer_norm: bool = True,
                 num_layers: Optional[int] = None, pg: Optional[ProcessGroups] = None):
        super().__init__()
        pg = pg if pg is not None else get_process_groups()
        config.validate_layout(pg.tensor_model_parallel_size)
        self.config = config
        self.pg = pg
        self.pre_process = pre_process
        self.post_process = post_process
        self.input_tensor = None
        count, offset = stage_layer_range(config, pg, layer_type, num_layers)
        self.layer_offset = offset
        layers = []
        for i in range(count):
            with init_rng_scope(config.init_seed, layer_type.name, offset + i + 1):
                layers.append(TransformerLayer(config, offset + i + 1, layer_type, self_attn_mask_type, pg))
        self.layers = nn.ModuleList(layers)
        if post_process and post_layer_norm:
            self.final_layernorm = make_layernorm(config, pg)
        else:
            self.final_layernorm = None
        if config.recompute_granularity == "full":
            layer_layout.check_recompute_layers(config.recompute_method, config.recompute_num_layers, count)

    def set_input_tensor(self, input_tensor: Optional[torch.Tensor]) -> None:
        """Activations received from the previous stage replace the ``hidden_states`` argument."""
        self.input_tensor = input_tensor

    def _run_layers(self, start: int, end: int):
        def run(hidden_states, attention_mask, encoder_output, enc_dec_attn_mask, rotary_pos_emb):
            for layer in self.layers[start:end]:
                hidden_states = layer(hidden_states, attention_mask, encoder_output, enc_dec_attn_mask, rotary_pos_emb)
            return hidden_states
        return run

    def forward(self, hidden_states: Optional[torch.Tensor], attention_mask: Optional[torch.Tensor],
                encoder_output: Optional[torch.Tensor] = None, enc_dec_attn_mask: Optional[torch.Tensor] = None,
                rotary_pos_emb: Optional[torch.Tensor] = None) -> torch.Tensor:
        if not self.pre_process:
            hidden_states = self.input_tensor
        args = (attention_mask, encoder_output, enc_dec_attn_mask, rotary_pos_emb)
        # Under sequence parallelism each rank holds different positions, so hidden dropout must
        # come from the per-rank stream too.
        per_rank_dropout = (self.config.sequence_parallel and self.pg.tensor_model_parallel_size > 1
                            and self.training and self.config.hidden_dropout > 0)
        with get_rng_tracker().fork() if per_rank_dropout else contextlib.nullcontext():
            count = len(self.layers)
            if self.config.recompute_granularity == "full" and self.training:
                chunk = self.config.recompute_num_layers
                if self.config.recompute_method == "uniform":
                    # Store only the input of every group of `chunk` layers; recompute the group in backward.
                    for start in range(0, count, chunk):
                        hidden_states = checkpoint(self._run_layers(start, min(start + chunk, count)), hidden_states, *args)
                else:
                    # Recompute the first `chunk` layers one by one; keep the rest's activations.
                    for index in range(count):
                        run = self._run_layers(index, index + 1)
                        hidden_states = checkpoint(run, hidden_states, *args) if index < chunk else run(hidden_states, *args)
            else:
                hidden_states = self._run_layers(0, count)(hidden_states, *args)
        if self.final_layernorm is not None:
            hidden_states = self.final_layernorm(hidden_states.to(self.final_layernorm.weight.dtype))
        # The schedule frees this tensor after sending it, which needs a tensor that is not a view.
        return make_viewless_tensor(hidden_states)
