"""The tensor shapes a Hugging Face ``config.json`` implies, checked against the weights before import.

A ``config.json`` that disagrees with its weights (another hidden size, fewer layers, another
number of key/value heads) would otherwise be converted into a checkpoint whose arguments do not
describe its tensors, found only when training or generation fails much later. Every tensor the
config implies must be present with exactly that shape, and no layer beyond the configured number
may be present; the first disagreement is an error naming the tensor.
"""
import re
from typing import Dict, Mapping, Optional, Tuple

import torch

Shape = Tuple[int, ...]


class ShapeMismatch(ValueError):
    pass


def _field(config: Mapping, name: str, source: str) -> int:
    value = config.get(name)
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ShapeMismatch(f"{source}: {name} must be a positive integer, got {value!r}")
    return value


def _gpt2_shapes(config: Mapping, source: str) -> Tuple[Dict[str, Shape], Dict[str, Shape], int]:
    hidden, heads = _field(config, "n_embd", source), _field(config, "n_head", source)
    layers, vocab = _field(config, "n_layer", source), _field(config, "vocab_size", source)
    positions = _field(config, "n_positions", source)
    inner = config.get("n_inner") or 4 * hidden
    if hidden % heads:
        raise ShapeMismatch(f"{source}: n_embd {hidden} is not divisible by n_head {heads}")
    shapes = {"wte.weight": (vocab, hidden), "wpe.weight": (positions, hidden),
              "ln_f.weight": (hidden,), "ln_f.bias": (hidden,)}
    for i in range(layers):
        layer = {"ln_1.weight": (hidden,), "ln_1.bias": (hidden,), "ln_2.weight": (hidden,), "ln_2.bias": (hidden,),
                 "attn.c_attn.weight": (hidden, 3 * hidden), "attn.c_attn.bias": (3 * hidden,),
                 "attn.c_proj.weight": (hidden, hidden), "attn.c_proj.bias": (hidden,),
                 "mlp.c_fc.weight": (hidden, inner), "mlp.c_fc.bias": (inner,),
                 "mlp.c_proj.weight": (inner, hidden), "mlp.c_proj.bias": (hidden,)}
        shapes.update({f"h.{i}.{name}": shape for name, shape in layer.items()})
    return shapes, {"lm_head.weight": (vocab, hidden)}, layers


def _megatron_bert_shapes(config: Mapping, source: str) -> Tuple[Dict[str, Shape], Dict[str, Shape], int]:
    hidden, heads = _field(config, "hidden_size", source), _field(config, "num_attention_heads", source)
    layers, vocab = _field(config, "num_hidden_layers", source), _field(config, "vocab_size", source)
    inner, positions = _field(config, "intermediate_size", source), _field(config, "max_position_embeddings", source)
    types = config.get("type_vocab_size", 2)
    if hidden % heads:
        raise ShapeMismatch(f"{source}: hidden_size {hidden} is not divisible by num_attention_heads {heads}")
    shapes = {"bert.embeddings.word_embeddings.weight": (vocab, hidden),
              "bert.embeddings.position_embeddings.weight": (positions, hidden),
              "bert.embeddings.token_type_embeddings.weight": (types, hidden),
              "bert.encoder.ln.weight": (hidden,), "bert.encoder.ln.bias": (hidden,),
              "bert.pooler.dense.weight": (hidden, hidden), "bert.pooler.dense.bias": (hidden,),
              "cls.predictions.transform.dense.weight": (hidden, hidden),
              "cls.predictions.transform.dense.bias": (hidden,),
              "cls.predictions.transform.LayerNorm.weight": (hidden,),
              "cls.predictions.transform.LayerNorm.bias": (hidden,), "cls.predictions.bias": (vocab,),
              "cls.seq_relationship.weight": (2, hidden), "cls.seq_relationship.bias": (2,)}
    for i in range(layers):
        layer = {"attention.ln.weight": (hidden,), "attention.ln.bias": (hidden,),
                 "attention.output.dense.weight": (hidden, hidden), "attention.output.dense.bias": (hidden,),
                 "ln.weight": (hidden,), "ln.bias": (hidden,),
                 "intermediate.dense.weight": (inner, hidden), "intermediate.dense.bias": (inner,),
                 "output.dense.weight": (hidden, inner), "output.dense.bias": (hidden,)}
        for part in ("query", "key", "value"):
            layer[f"attention.self.{part}.weight"] = (hidden, hidden)
            layer[f"attention.self.{part}.bias"] = (hidden,)
        shapes.update({f"bert.encoder.layer.{i}.{name}": shape for name, shape in layer.items()})
    return shapes, {"cls.predictions.decoder.weight": (vocab, hidden), "cls.predictions.decoder.bias": (vocab,)}, layers


def _llama_shapes(config: Mapping, source: str) -> Tuple[Dict[str, Shape], Dict[str, Shape], int]:
    hidden, heads = _field(config, "hidden_size", source), _field(config, "num_attention_heads", source)
    layers, vocab = _field(config, "num_hidden_layers", source), _field(config, "vocab_size", source)
    inner = _field(config, "intermediate_size", source)
    groups = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    if heads % groups:
        raise ShapeMismatch(f"{source}: num_attention_heads {heads} is not divisible by num_key_value_heads {groups}")
    bias = bool(config.get("attention_bias", False))
    shapes = {"model.embed_tokens.weight": (vocab, hidden), "model.norm.weight": (hidden,)}
    if not config.get("tie_word_embeddings", False):
        shapes["lm_head.weight"] = (vocab, hidden)
    for i in range(layers):
        layer = {"input_layernorm.weight": (hidden,), "post_attention_layernorm.weight": (hidden,),
                 "self_attn.q_proj.weight": (heads * head_dim, hidden),
                 "self_attn.k_proj.weight": (groups * head_dim, hidden),
                 "self_attn.v_proj.weight": (groups * head_dim, hidden),
                 "self_attn.o_proj.weight": (hidden, heads * head_dim),
                 "mlp.gate_proj.weight": (inner, hidden), "mlp.up_proj.weight": (inner, hidden),
                 "mlp.down_proj.weight": (hidden, inner)}
        if bias:
            layer.update({"self_attn.q_proj.bias": (heads * head_dim,),
                          "self_attn.k_proj.bias": (groups * head_dim,),
                          "self_attn.v_proj.bias": (groups * head_dim,), "self_attn.o_proj.bias": (hidden,),
                          "mlp.gate_proj.bias": (inner,), "mlp.up_proj.bias": (inner,),
                          "mlp.down_proj.bias": (hidden,)})
        shapes.update({f"model.layers.{i}.{name}": shape for name, shape in layer.items()})
    optional = {"lm_head.weight": (vocab, hidden)} if config.get("tie_word_embeddings", False) else {}
    return shapes, optional, layers


_EXPECTED = {"GPT": _gpt2_shapes, "BERT": _megatron_bert_shapes, "llama": _llama_shapes}
_LAYER_INDEX = re.compile(r"(?:^|\.)(?:h|layer|layers)\.(\d+)\.")
_GPT2_PREFIX = "transformer."


def _describe(config: Mapping, model_type: str) -> str:
    names = {"GPT": ("n_embd", "n_head", "n_layer", "n_inner", "vocab_size", "n_positions"),
             "BERT": ("hidden_size", "num_attention_heads", "num_hidden_layers", "intermediate_size", "vocab_size"),
             "llama": ("hidden_size", "num_attention_heads", "num_key_value_heads", "num_hidden_layers",
                       "intermediate_size", "vocab_size")}[model_type]
    return ", ".join(f"{name} {config[name]}" for name in names if config.get(name) is not None)


def check_hf_shapes(model_type: str, config: Mapping, tensors: Mapping[str, torch.Tensor], config_path: str,
                    weights_path: Optional[str] = None) -> None:
    """Raise ``ShapeMismatch`` naming the first tensor of ``tensors`` that ``config`` does not describe."""
    expected, optional, layers = _EXPECTED[model_type](config, config_path)
    weights = weights_path or "the weights"

    def ours(name: str) -> str:  # GPT-2 files store names with or without the "transformer." prefix
        return name[len(_GPT2_PREFIX):] if model_type == "GPT" and name.startswith(_GPT2_PREFIX) else name

    present = {ours(name): name for name in tensors}
    for key, shape in list(expected.items()) + list(optional.items()):  # in the model's order
        if key not in present:
            if key in optional:
                continue
            raise ShapeMismatch(f"{weights} has no tensor {key}, which {config_path} "
                                f"({_describe(config, model_type)}) implies")
        name = present[key]
        actual = tuple(tensors[name].shape)
        if actual != shape:
            raise ShapeMismatch(f"{weights}: tensor {name} has shape {list(actual)} but {config_path} "
                                f"({_describe(config, model_type)}) implies {list(shape)}")
    for key, name in sorted(present.items()):
        match = _LAYER_INDEX.search(key)
        if match and int(match.group(1)) >= layers:
            raise ShapeMismatch(f"{weights}: tensor {name} belongs to layer {match.group(1)} but {config_path} "
                                f"has {layers} layers")
