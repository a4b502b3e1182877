"""TransformerConfig: every knob of the transformer stack, validated once."""
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from megatron.core import layer_layout
from megatron.core.utils import init_method_normal, scaled_init_method_normal

POSITION_EMBEDDING_TYPES = ("learned_absolute", "rope", "none")
NORMALIZATIONS = ("LayerNorm", "RMSNorm")
ATTENTION_BACKENDS = ("sdpa", "unfused")


@dataclass
class TransformerConfig:
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_query_groups: Optional[int] = None
    """Key/value heads (grouped-query attention): each serves num_attention_heads / num_query_groups
    query heads; defaults to num_attention_heads (multi-head attention), 1 is multi-query attention."""
    kv_channels: Optional[int] = None
    """Per-head projection size; defaults to hidden_size / num_attention_heads."""
    ffn_hidden_size: Optional[int] = None
    """MLP inner size; defaults to 4 * hidden_size."""
    swiglu: bool = False
    """MLP as SiLU(x W_gate) * (x W_up) (Llama): the first projection is 2 x ffn_hidden_size wide,
    gate rows first, up rows second in the full weight (each half split over TP ranks)."""
    normalization: str = "LayerNorm"
    """``LayerNorm`` (weight and bias) or ``RMSNorm`` (weight only, no mean subtraction)."""
    add_bias_linear: bool = True
    """Biases on the QKV, attention output and both MLP projections (Megatron's --disable-bias-linear clears it)."""
    untie_embeddings_and_output_weights: bool = False
    """GPT's output layer is a weight of its own (``language_model.output_layer``) instead of the word embedding."""
    hidden_dropout: float = 0.1
    attention_dropout: float = 0.1
    layernorm_epsilon: float = 1e-5
    init_method_std: float = 0.02
    init_method: Optional[Callable] = None
    """Weight initialiser; defaults to N(0, init_method_std)."""
    output_layer_init_method: Optional[Callable] = None
    """Initialiser of the projections into the residual; defaults to N(0, std / sqrt(2 * num_layers))."""
    apply_query_key_layer_scaling: bool = True
    """Divide attention scores by the layer number before softmax and multiply back inside it (fp16 range)."""
    attention_softmax_in_fp32: bool = True
    apply_residual_connection_post_layernorm: bool = False
    openai_gelu: bool = False
    bias_gelu_fusion: bool = True
    """Use the tanh-approximated GeLU on (x + bias), as Megatron's fused bias-GeLU does."""
    bias_dropout_fusion: bool = True
    """Request the fused bias-dropout-add; the plain PyTorch reference computes the same function."""
    masked_softmax_fusion: bool = True
    """Fused masked softmax: the Triton kernel on CUDA; on the CPU the reference, compiled when
    ``fusions.set_cpu_fusion_mode("compiled")`` (``--torch-compile``) asked for it."""
    persist_layer_norm: bool = True
    """Fused layer norm (the Triton kernel on CUDA); Megatron's ``--no-persist-layer-norm`` clears it."""
    attention_backend: str = "sdpa"
    """``sdpa``: torch scaled_dot_product_attention; ``unfused``: explicit scores, mask, softmax."""
    position_embedding_type: str = "learned_absolute"
    rotary_percent: float = 1.0
    rotary_base: float = 10000.0
    """Base of the rotary frequencies, base ** (-2i / rotary_dim)."""
    params_dtype: torch.dtype = torch.float32
    fp32_residual_connection: bool = False
    sequence_parallel: bool = False
    recompute_granularity: Optional[str] = None
    recompute_method: Optional[str] = None
    recompute_num_layers: Optional[int] = None
    use_cpu_initialization: bool = True
    """Draw every partitioned weight in full and keep this rank's slice (layout-independent start)."""
    init_seed: Optional[int] = None
    """When set, every component (embedding, each layer, pooler, heads) draws its initial weights from a
    generator seeded by (init_seed, component), so a pipeline stage draws exactly the weights the
    one-process model has there, whichever stages other ranks build before it."""
    # Pipeline communication.
    pipeline_dtype: Optional[torch.dtype] = None
    """dtype of activations sent between stages; defaults to params_dtype."""
    deallocate_pipeline_outputs: bool = True
    """Free a stage's output tensor after sending it (only the autograd graph is kept)."""
    # Maximal-update parametrisation (megatron/core/mup.py).
    use_mup: bool = False
    """μP (Yang et al., Tensor Programs V): hidden matrices start at std / sqrt(fan-in multiplier) and
    learn at lr x base fan-in / fan-in under Adam, the logits are multiplied by base / hidden size and
    attention scores are scaled by sqrt(base head size) / head size (1 / d_head, equal to 1 / sqrt(d_head)
    at the base width). At the base width the model is the standard one, weight for weight."""
    mup_base_hidden_size: Optional[int] = None
    """Hidden size of the μP base model (the width the hyper-parameters were tuned at)."""
    mup_base_num_attention_heads: Optional[int] = None
    """Heads of the base model; defaults to num_attention_heads (width grows the head size)."""
    mup_base_ffn_hidden_size: Optional[int] = None
    """MLP width of the base model; defaults to ffn_hidden_size x mup_base_hidden_size / hidden_size."""

    def __post_init__(self):
        for name in ("num_layers", "hidden_size", "num_attention_heads"):
            if getattr(self, name) < 1:
                raise ValueError(f"TransformerConfig.{name} must be >= 1, got {getattr(self, name)}")
        if self.kv_channels is None:
            if self.hidden_size % self.num_attention_heads != 0:
                raise ValueError(
                    f"hidden_size {self.hidden_size} is not divisible by num_attention_heads "
                    f"{self.num_attention_heads}; set kv_channels explicitly")
            self.kv_channels = self.hidden_size // self.num_attention_heads
        if self.ffn_hidden_size is None:
            self.ffn_hidden_size = 4 * self.hidden_size
        if self.num_query_groups is None:
            self.num_query_groups = self.num_attention_heads
        if self.num_query_groups < 1 or self.num_attention_heads % self.num_query_groups != 0:
            raise ValueError(f"num_attention_heads {self.num_attention_heads} is not divisible by num_query_groups "
                             f"{self.num_query_groups}")
        if self.normalization not in NORMALIZATIONS:
            raise ValueError(f"normalization {self.normalization!r} is not one of {NORMALIZATIONS}")
        if self.rotary_base <= 0:
            raise ValueError(f"rotary_base must be positive, got {self.rotary_base}")
        for name in ("hidden_dropout", "attention_dropout"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"TransformerConfig.{name} must lie in [0, 1), got {getattr(self, name)}")
        if self.position_embedding_type not in POSITION_EMBEDDING_TYPES:
            raise ValueError(f"position_embedding_type {self.position_embedding_type!r} is not one of {POSITION_EMBEDDING_TYPES}")
        if self.attention_backend not in ATTENTION_BACKENDS:
            raise ValueError(f"attention_backend {self.attention_backend!r} is not one of {ATTENTION_BACKENDS}")
        if not 0.0 < self.rotary_percent <= 1.0:
            raise ValueError(f"rotary_percent must lie in (0, 1], got {self.rotary_percent}")
        if self.apply_query_key_layer_scaling:
            # The scaling only cancels out when the softmax runs in fp32.
            self.attention_softmax_in_fp32 = True
        layer_layout.check_recompute(self.recompute_granularity, self.recompute_method, self.recompute_num_layers)
        if self.init_method is None:
            self.init_method = init_method_normal(self.init_method_std)
        if self.output_layer_init_method is None:
            self.output_layer_init_method = scaled_init_method_normal(self.init_method_std, self.num_layers)
        if self.pipeline_dtype is None:
            self.pipeline_dtype = self.params_dtype
        self._derive_mup_base()

    def _derive_mup_base(self) -> None:
        """The base model's sizes, derived from this model's as the base hidden size is from hidden_size."""
        self.mup_base_kv_channels = self.mup_base_num_query_groups = None
        if not self.use_mup:
            for name in ("mup_base_hidden_size", "mup_base_num_attention_heads", "mup_base_ffn_hidden_size"):
                if getattr(self, name) is not None:
                    raise ValueError(f"TransformerConfig.{name} needs use_mup")
            return
        if self.mup_base_hidden_size is None or self.mup_base_hidden_size < 1:
            raise ValueError(f"use_mup needs mup_base_hidden_size >= 1, got {self.mup_base_hidden_size}")
        if self.mup_base_num_attention_heads is None:
            self.mup_base_num_attention_heads = self.num_attention_heads
        heads, base_heads = self.num_attention_heads, self.mup_base_num_attention_heads
        if base_heads < 1:
            raise ValueError(f"mup_base_num_attention_heads must be >= 1, got {base_heads}")
        if self.mup_base_ffn_hidden_size is None:
            if (self.ffn_hidden_size * self.mup_base_hidden_size) % self.hidden_size != 0:
                raise ValueError(
                    f"ffn_hidden_size {self.ffn_hidden_size} x mup_base_hidden_size {self.mup_base_hidden_size} is not "
                    f"divisible by hidden_size {self.hidden_size}; set mup_base_ffn_hidden_size")
            self.mup_base_ffn_hidden_size = self.ffn_hidden_size * self.mup_base_hidden_size // self.hidden_size
        # Head size scales like hidden size / heads; query groups like the heads.
        kv_num = self.kv_channels * self.mup_base_hidden_size * heads
        if kv_num % (self.hidden_size * base_heads) != 0:
            raise ValueError(f"the base head size kv_channels {self.kv_channels} x mup_base_hidden_size "
                             f"{self.mup_base_hidden_size} / hidden_size {self.hidden_size} x heads {heads} / base heads "
                             f"{base_heads} is not a whole number")
        self.mup_base_kv_channels = kv_num // (self.hidden_size * base_heads)
        if (self.num_query_groups * base_heads) % heads != 0:
            raise ValueError(f"num_query_groups {self.num_query_groups} x mup_base_num_attention_heads {base_heads} is "
                             f"not divisible by num_attention_heads {heads}")
        self.mup_base_num_query_groups = self.num_query_groups * base_heads // heads
        if self.mup_base_kv_channels < 1 or self.mup_base_num_query_groups < 1 or self.mup_base_ffn_hidden_size < 1:
            raise ValueError("the μP base model has a zero size (base head size, query groups or MLP width)")

    @property
    def mup_width_mult(self) -> float:
        """hidden_size / mup_base_hidden_size (1 without μP)."""
        return self.hidden_size / self.mup_base_hidden_size if self.use_mup else 1.0

    @property
    def mup_output_multiplier(self) -> float:
        """What readouts (LM logits, classification heads) multiply their input by: 1 / width multiplier."""
        return 1.0 / self.mup_width_mult

    def mup_base_fan_in(self, which: str) -> Optional[int]:
        """Fan-in in the base model of a hidden matrix reading ``which`` (``hidden``, ``attention``
        (the heads' concatenated values) or ``ffn``); None without μP."""
        if not self.use_mup:
            return None
        return {"hidden": self.mup_base_hidden_size,
                "attention": self.mup_base_kv_channels * self.mup_base_num_attention_heads,
                "ffn": self.mup_base_ffn_hidden_size}[which]

    def validate_layout(self, tensor_model_parallel_size: int) -> None:
        """Constraints between this config and a tensor-parallel size (pipeline ones live in the block)."""
        tp = tensor_model_parallel_size
        if self.num_attention_heads % tp != 0:
            raise ValueError(
                f"num_attention_heads {self.num_attention_heads} is not divisible by tensor_model_parallel_size {tp}")
        if self.num_query_groups % tp != 0:
            raise ValueError(f"num_query_groups {self.num_query_groups} is not divisible by tensor_model_parallel_size {tp}")
        if self.ffn_hidden_size % tp != 0:
            raise ValueError(f"ffn_hidden_size {self.ffn_hidden_size} is not divisible by tensor_model_parallel_size {tp}")
