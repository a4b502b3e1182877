"""Name and layout mappings between our full (TP 1) state dicts and Hugging Face ``transformers`` models.

GPT <-> ``GPT2LMHeadModel``: GPT-2's ``Conv1D`` layers store ``[in, out]`` (the transpose of a
linear weight), and its fused ``c_attn`` columns are ``[q | k | v]`` over all heads, while our
fused ``query_key_value`` rows are ``[heads, 3, head_dim]``. The output layer is tied to ``wte``.

GPT (rope, SwiGLU, RMSNorm, any number of query groups, biases or not, tied or untied) <->
``LlamaForCausalLM``: see the Llama section below.

BERT <-> ``MegatronBertForPreTraining``: the pre-LayerNorm BERT Megatron trains (no LayerNorm on the
embeddings; ``attention.ln`` before attention, ``ln`` before the MLP, ``encoder.ln`` at the end).
The original post-LayerNorm ``BertForPreTraining`` normalises the embeddings and each residual sum,
which no configuration of our pre-LN model computes, so it is refused rather than converted wrongly.

The activation must be one function everywhere: our MLP uses the tanh GeLU when ``bias_gelu_fusion``
or ``openai_gelu`` is on (HF ``gelu_new``) and the exact erf GeLU otherwise (HF ``gelu``).
"""
import argparse
from typing import Dict, Tuple

import torch

Tensors = Dict[str, torch.Tensor]

_GPT_LAYER = {  # ours (under language_model.encoder.layers.N.) -> GPT-2 (under transformer.h.N.), transposed?
    "input_layernorm.weight": ("ln_1.weight", False),
    "input_layernorm.bias": ("ln_1.bias", False),
    "self_attention.dense.weight": ("attn.c_proj.weight", True),
    "self_attention.dense.bias": ("attn.c_proj.bias", False),
    "post_attention_layernorm.weight": ("ln_2.weight", False),
    "post_attention_layernorm.bias": ("ln_2.bias", False),
    "mlp.dense_h_to_4h.weight": ("mlp.c_fc.weight", True),
    "mlp.dense_h_to_4h.bias": ("mlp.c_fc.bias", False),
    "mlp.dense_4h_to_h.weight": ("mlp.c_proj.weight", True),
    "mlp.dense_4h_to_h.bias": ("mlp.c_proj.bias", False),
}
_BERT_LAYER = {  # ours -> MegatronBert (under bert.encoder.layer.N.); linear weights keep their layout
    "input_layernorm.weight": "attention.ln.weight",
    "input_layernorm.bias": "attention.ln.bias",
    "self_attention.dense.weight": "attention.output.dense.weight",
    "self_attention.dense.bias": "attention.output.dense.bias",
    "post_attention_layernorm.weight": "ln.weight",
    "post_attention_layernorm.bias": "ln.bias",
    "mlp.dense_h_to_4h.weight": "intermediate.dense.weight",
    "mlp.dense_h_to_4h.bias": "intermediate.dense.bias",
    "mlp.dense_4h_to_h.weight": "output.dense.weight",
    "mlp.dense_4h_to_h.bias": "output.dense.bias",
}
_BERT_OTHER = {
    "language_model.embedding.word_embeddings.weight": "bert.embeddings.word_embeddings.weight",
    "language_model.embedding.position_embeddings.weight": "bert.embeddings.position_embeddings.weight",
    "language_model.embedding.tokentype_embeddings.weight": "bert.embeddings.token_type_embeddings.weight",
    "language_model.encoder.final_layernorm.weight": "bert.encoder.ln.weight",
    "language_model.encoder.final_layernorm.bias": "bert.encoder.ln.bias",
    "language_model.pooler.dense.weight": "bert.pooler.dense.weight",
    "language_model.pooler.dense.bias": "bert.pooler.dense.bias",
    "lm_head.dense.weight": "cls.predictions.transform.dense.weight",
    "lm_head.dense.bias": "cls.predictions.transform.dense.bias",
    "lm_head.layernorm.weight": "cls.predictions.transform.LayerNorm.weight",
    "lm_head.layernorm.bias": "cls.predictions.transform.LayerNorm.bias",
    "lm_head.bias": "cls.predictions.bias",
    "binary_head.weight": "cls.seq_relationship.weight",
    "binary_head.bias": "cls.seq_relationship.bias",
}
_LAYERS = "language_model.encoder.layers"


class ConversionError(ValueError):
    pass


def _arg(args, name, default=None):
    value = getattr(args, name, None)
    return default if value is None else value


def _heads_qkv_to_split(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    """Rows ``[heads, 3, head_dim]`` -> ``[3, heads, head_dim]`` (q, k, v blocks)."""
    rest = tuple(tensor.shape[1:])
    return tensor.reshape(heads, 3, -1, *rest).transpose(0, 1).reshape(tensor.shape[0], *rest).contiguous()


def _split_qkv_to_heads(tensor: torch.Tensor, heads: int) -> torch.Tensor:
    rest = tuple(tensor.shape[1:])
    return tensor.reshape(3, heads, -1, *rest).transpose(0, 1).reshape(tensor.shape[0], *rest).contiguous()


def mlp_activation(args) -> str:
    """The HF ``hidden_act`` our transformer MLP computes under ``args``."""
    return "gelu_new" if _arg(args, "openai_gelu", False) or _arg(args, "bias_gelu_fusion", True) else "gelu"


def _check_not_mup(args) -> None:
    if getattr(args, "use_mup", False):
        raise ConversionError("the checkpoint is a muP model (--use-mup): its logit and attention-score multipliers "
                              "have no Hugging Face equivalent, so the exported model would compute other logits")


def _check_plain_transformer(args) -> None:
    _check_not_mup(args)
    for name, wanted in (("position_embedding_type", "learned_absolute"), ("add_bias_linear", True),
                         ("untie_embeddings_and_output_weights", False),
                         ("apply_residual_connection_post_layernorm", False), ("swiglu", False),
                         ("normalization", "LayerNorm")):
        value = getattr(args, name, None)
        if value is not None and value != wanted:
            raise ConversionError(f"the checkpoint has {name} {value}; this Hugging Face model needs {wanted} "
                                  f"(a rope/SwiGLU/RMSNorm GPT converts with --model-type llama)")
    groups = getattr(args, "num_query_groups", None)
    if groups is not None and groups != args.num_attention_heads:
        raise ConversionError(f"the checkpoint has num_query_groups {groups} (grouped-query attention); this Hugging "
                              f"Face model needs one group per head (--model-type llama converts it)")


# -- GPT ----------------------------------------------------------------------------------------
def gpt_to_hf(full: Tensors, args) -> Tuple[dict, Tensors]:
    """``(config.json dict, GPT2LMHeadModel tensors)`` from our full GPT state dict."""
    _check_plain_transformer(args)
    heads, layers = args.num_attention_heads, args.num_layers
    vocab, hidden = full["language_model.embedding.word_embeddings.weight"].shape
    out = {"transformer.wte.weight": full["language_model.embedding.word_embeddings.weight"],
           "transformer.wpe.weight": full["language_model.embedding.position_embeddings.weight"],
           "transformer.ln_f.weight": full["language_model.encoder.final_layernorm.weight"],
           "transformer.ln_f.bias": full["language_model.encoder.final_layernorm.bias"]}
    for i in range(layers):
        ours, theirs = f"{_LAYERS}.{i}.", f"transformer.h.{i}."
        for name, (hf_name, transpose) in _GPT_LAYER.items():
            tensor = full[ours + name]
            out[theirs + hf_name] = tensor.t() if transpose else tensor
        out[theirs + "attn.c_attn.weight"] = _heads_qkv_to_split(
            full[ours + "self_attention.query_key_value.weight"], heads).t()
        out[theirs + "attn.c_attn.bias"] = _heads_qkv_to_split(
            full[ours + "self_attention.query_key_value.bias"], heads)
    config = {
        "architectures": ["GPT2LMHeadModel"], "model_type": "gpt2", "vocab_size": int(vocab),
        "n_positions": int(full["language_model.embedding.position_embeddings.weight"].shape[0]),
        "n_embd": int(hidden), "n_layer": layers, "n_head": heads,
        "n_inner": int(_arg(args, "ffn_hidden_size", 4 * hidden)),
        "activation_function": mlp_activation(args),
        "layer_norm_epsilon": float(_arg(args, "layernorm_epsilon", 1e-5)),
        "resid_pdrop": float(_arg(args, "hidden_dropout", 0.1)), "embd_pdrop": float(_arg(args, "hidden_dropout", 0.1)),
        "attn_pdrop": float(_arg(args, "attention_dropout", 0.1)), "tie_word_embeddings": True,
        "scale_attn_weights": True, "torch_dtype": "float32",
    }
    if _arg(args, "kv_channels", hidden // heads) * heads != hidden:
        raise ConversionError(f"kv_channels x heads != hidden size {hidden}: GPT-2 cannot express it")
    return config, {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in out.items()}


def gpt_from_hf(config: dict, tensors: Tensors) -> Tuple[Tensors, argparse.Namespace]:
    """Our full GPT state dict and the model arguments from a ``GPT2LMHeadModel``'s config and tensors."""
    tensors = {name[len("transformer."):] if name.startswith("transformer.") else name: t
               for name, t in tensors.items()}
    if config.get("scale_attn_by_inverse_layer_idx") or config.get("reorder_and_upcast_attn"):
        raise ConversionError("config.json: scale_attn_by_inverse_layer_idx / reorder_and_upcast_attn have no "
                              "Megatron equivalent")
    activation = config.get("activation_function", "gelu_new")
    if activation not in ("gelu_new", "gelu", "gelu_pytorch_tanh"):
        raise ConversionError(f"config.json: activation_function {activation!r} is neither gelu nor gelu_new")
    heads, layers, hidden = config["n_head"], config["n_layer"], config["n_embd"]
    full = {"language_model.embedding.word_embeddings.weight": tensors["wte.weight"],
            "language_model.embedding.position_embeddings.weight": tensors["wpe.weight"],
            "language_model.encoder.final_layernorm.weight": tensors["ln_f.weight"],
            "language_model.encoder.final_layernorm.bias": tensors["ln_f.bias"]}
    for i in range(layers):
        ours, theirs = f"{_LAYERS}.{i}.", f"h.{i}."
        for name, (hf_name, transpose) in _GPT_LAYER.items():
            tensor = tensors[theirs + hf_name]
            full[ours + name] = tensor.t() if transpose else tensor
        full[ours + "self_attention.query_key_value.weight"] = _split_qkv_to_heads(
            tensors[theirs + "attn.c_attn.weight"].t(), heads)
        full[ours + "self_attention.query_key_value.bias"] = _split_qkv_to_heads(tensors[theirs + "attn.c_attn.bias"],
                                                                                heads)
    tanh = activation != "gelu"
    args = argparse.Namespace(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, kv_channels=hidden // heads,
        ffn_hidden_size=config.get("n_inner") or 4 * hidden, max_position_embeddings=config["n_positions"],
        seq_length=config["n_positions"], layernorm_epsilon=config.get("layer_norm_epsilon", 1e-5),
        openai_gelu=tanh, bias_gelu_fusion=tanh, vocab_size=config["vocab_size"], vocab_extra_ids=0,
        hidden_dropout=config.get("resid_pdrop", 0.1), attention_dropout=config.get("attn_pdrop", 0.1),
        tokenizer_type=None)
    return _contiguous(full), args


# -- BERT ---------------------------------------------------------------------------------------
def _check_bert_activation(args) -> str:
    mlp = mlp_activation(args)
    head = "gelu_new" if _arg(args, "openai_gelu", False) else "gelu"
    if mlp != head:
        raise ConversionError(
            "this BERT uses the tanh GeLU in its MLP (bias-GeLU fusion) but the erf GeLU in its LM head; "
            "MegatronBert has one activation: train with --openai-gelu or --no-bias-gelu-fusion to export exactly")
    return mlp


def bert_to_hf(full: Tensors, args, post_layernorm: bool = False) -> Tuple[dict, Tensors]:
    """``(config.json dict, MegatronBertForPreTraining tensors)`` from our full BERT state dict."""
    if post_layernorm or _arg(args, "apply_residual_connection_post_layernorm", False):
        raise ConversionError(
            "BertForPreTraining (post-LayerNorm, with an embedding LayerNorm) computes a different function from "
            "Megatron's pre-LayerNorm BERT; export to MegatronBertForPreTraining instead")
    _check_plain_transformer(args)
    activation = _check_bert_activation(args)
    heads, layers = args.num_attention_heads, args.num_layers
    if "binary_head.weight" not in full:
        raise ConversionError("the checkpoint has no binary head; MegatronBertForPreTraining needs one "
                              "(trained without --bert-no-binary-head)")
    out = {hf: full[ours] for ours, hf in _BERT_OTHER.items()}
    for i in range(layers):
        ours, theirs = f"{_LAYERS}.{i}.", f"bert.encoder.layer.{i}."
        for name, hf_name in _BERT_LAYER.items():
            out[theirs + hf_name] = full[ours + name]
        for suffix in ("weight", "bias"):
            q, k, v = _heads_qkv_to_split(full[f"{ours}self_attention.query_key_value.{suffix}"], heads).chunk(3, dim=0)
            for part, tensor in zip(("query", "key", "value"), (q, k, v)):
                out[f"{theirs}attention.self.{part}.{suffix}"] = tensor
    vocab, hidden = full["language_model.embedding.word_embeddings.weight"].shape
    config = {
        "architectures": ["MegatronBertForPreTraining"], "model_type": "megatron-bert", "vocab_size": int(vocab),
        "hidden_size": int(hidden), "num_hidden_layers": layers, "num_attention_heads": heads,
        "intermediate_size": int(_arg(args, "ffn_hidden_size", 4 * hidden)), "hidden_act": activation,
        "max_position_embeddings": int(full["language_model.embedding.position_embeddings.weight"].shape[0]),
        "type_vocab_size": int(full["language_model.embedding.tokentype_embeddings.weight"].shape[0]),
        "layer_norm_eps": float(_arg(args, "layernorm_epsilon", 1e-5)),
        "hidden_dropout_prob": float(_arg(args, "hidden_dropout", 0.1)),
        "attention_probs_dropout_prob": float(_arg(args, "attention_dropout", 0.1)),
        "position_embedding_type": "absolute", "tie_word_embeddings": True, "torch_dtype": "float32",
    }
    return config, {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in out.items()}


def bert_from_hf(config: dict, tensors: Tensors) -> Tuple[Tensors, argparse.Namespace]:
    """Our full BERT state dict and model arguments from a ``MegatronBertForPreTraining``."""
    model_type = config.get("model_type")
    if model_type == "bert":
        raise ConversionError("config.json: model_type 'bert' is the post-LayerNorm BertForPreTraining, which "
                              "Megatron's pre-LayerNorm BERT cannot compute; only megatron-bert imports")
    if model_type != "megatron-bert":
        raise ConversionError(f"config.json: model_type {model_type!r} is not megatron-bert")
    if config.get("position_embedding_type", "absolute") != "absolute":
        raise ConversionError("config.json: only absolute position embeddings convert")
    activation = config.get("hidden_act", "gelu")
    if activation not in ("gelu", "gelu_new"):
        raise ConversionError(f"config.json: hidden_act {activation!r} is neither gelu nor gelu_new")
    heads, layers = config["num_attention_heads"], config["num_hidden_layers"]
    full = {ours: tensors[hf] for ours, hf in _BERT_OTHER.items()}
    for i in range(layers):
        ours, theirs = f"{_LAYERS}.{i}.", f"bert.encoder.layer.{i}."
        for name, hf_name in _BERT_LAYER.items():
            full[ours + name] = tensors[theirs + hf_name]
        for suffix in ("weight", "bias"):
            stacked = torch.cat([tensors[f"{theirs}attention.self.{part}.{suffix}"]
                                 for part in ("query", "key", "value")], dim=0)
            full[f"{ours}self_attention.query_key_value.{suffix}"] = _split_qkv_to_heads(stacked, heads)
    tanh = activation == "gelu_new"
    hidden = config["hidden_size"]
    args = argparse.Namespace(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, kv_channels=hidden // heads,
        ffn_hidden_size=config["intermediate_size"], max_position_embeddings=config["max_position_embeddings"],
        seq_length=config["max_position_embeddings"], layernorm_epsilon=config.get("layer_norm_eps", 1e-12),
        openai_gelu=tanh, bias_gelu_fusion=tanh, vocab_size=config["vocab_size"], vocab_extra_ids=0,
        num_tokentypes=config.get("type_vocab_size", 2), bert_binary_head=True,
        hidden_dropout=config.get("hidden_dropout_prob", 0.1),
        attention_dropout=config.get("attention_probs_dropout_prob", 0.1), tokenizer_type=None)
    return _contiguous(full), args


def _contiguous(tensors: Tensors) -> Tensors:
    return {name: tensor.detach().clone().contiguous() for name, tensor in tensors.items()}


# -- Llama --------------------------------------------------------------------------------------
# ``LlamaForCausalLM``: separate q/k/v/o and gate/up/down projections (nn.Linear layout, no
# transposes), RMSNorm, rotary embeddings with the half-split rotation our RotaryEmbedding uses
# (so q and k rows need no permutation), grouped-query attention with ``num_key_value_heads``
# groups. Our fused QKV rows are ``[groups, heads_per_group + 2, head_dim]`` and our SwiGLU input
# projection is ``[gate; up]``.
_LLAMA_LAYER = {  # ours (under language_model.encoder.layers.N.) -> Llama (under model.layers.N.)
    "input_layernorm.weight": "input_layernorm.weight",
    "post_attention_layernorm.weight": "post_attention_layernorm.weight",
    "self_attention.dense.weight": "self_attn.o_proj.weight",
    "self_attention.dense.bias": "self_attn.o_proj.bias",
    "mlp.dense_4h_to_h.weight": "mlp.down_proj.weight",
    "mlp.dense_4h_to_h.bias": "mlp.down_proj.bias",
}
_OUTPUT_LAYER = "language_model.output_layer.weight"


def _qkv_to_llama(tensor: torch.Tensor, heads: int, groups: int) -> Tuple[torch.Tensor, ...]:
    """Fused rows ``[groups, heads / groups + 2, head_dim]`` -> (q, k, v) rows."""
    per_group = heads // groups
    rest = tuple(tensor.shape[1:])
    grouped = tensor.reshape(groups, per_group + 2, -1, *rest)
    head_dim = grouped.shape[2]
    q = grouped[:, :per_group].reshape(heads * head_dim, *rest)
    k = grouped[:, per_group].reshape(groups * head_dim, *rest)
    v = grouped[:, per_group + 1].reshape(groups * head_dim, *rest)
    return q, k, v


def _llama_to_qkv(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, heads: int, groups: int) -> torch.Tensor:
    per_group = heads // groups
    rest = tuple(q.shape[1:])
    head_dim = q.shape[0] // heads
    grouped = torch.cat([q.reshape(groups, per_group, head_dim, *rest), k.reshape(groups, 1, head_dim, *rest),
                         v.reshape(groups, 1, head_dim, *rest)], dim=1)
    return grouped.reshape(-1, *rest)


def _check_llama_args(args) -> None:
    _check_not_mup(args)
    for name, wanted, flag in (("position_embedding_type", "rope", "--position-embedding-type rope"),
                               ("swiglu", True, "--swiglu"), ("normalization", "RMSNorm", "--normalization RMSNorm"),
                               ("rotary_percent", 1.0, "--rotary-percent 1.0"),
                               ("apply_residual_connection_post_layernorm", False,
                                "no --apply-residual-connection-post-layernorm")):
        value = _arg(args, name, {"swiglu": False, "normalization": "LayerNorm", "rotary_percent": 1.0,
                                  "apply_residual_connection_post_layernorm": False}.get(name))
        if value != wanted:
            raise ConversionError(f"the checkpoint has {name} {value}; LlamaForCausalLM needs {flag}")


def llama_to_hf(full: Tensors, args) -> Tuple[dict, Tensors]:
    """``(config.json dict, LlamaForCausalLM tensors)`` from our full GPT state dict of a Llama-style model."""
    _check_llama_args(args)
    heads, layers = args.num_attention_heads, args.num_layers
    groups = _arg(args, "num_query_groups", heads)
    vocab, hidden = full["language_model.embedding.word_embeddings.weight"].shape
    head_dim = _arg(args, "kv_channels", hidden // heads)
    ffn = full[f"{_LAYERS}.0.mlp.dense_4h_to_h.weight"].shape[1]
    bias = f"{_LAYERS}.0.self_attention.query_key_value.bias" in full
    untied = _OUTPUT_LAYER in full
    out = {"model.embed_tokens.weight": full["language_model.embedding.word_embeddings.weight"],
           "model.norm.weight": full["language_model.encoder.final_layernorm.weight"]}
    if untied:
        out["lm_head.weight"] = full[_OUTPUT_LAYER]
    for i in range(layers):
        ours, theirs = f"{_LAYERS}.{i}.", f"model.layers.{i}."
        for name, hf_name in _LLAMA_LAYER.items():
            if ours + name in full:
                out[theirs + hf_name] = full[ours + name]
        suffixes = ("weight", "bias") if bias else ("weight",)
        for suffix in suffixes:
            q, k, v = _qkv_to_llama(full[f"{ours}self_attention.query_key_value.{suffix}"], heads, groups)
            for part, tensor in zip(("q_proj", "k_proj", "v_proj"), (q, k, v)):
                out[f"{theirs}self_attn.{part}.{suffix}"] = tensor
            gate, up = full[f"{ours}mlp.dense_h_to_4h.{suffix}"].chunk(2, dim=0)
            out[f"{theirs}mlp.gate_proj.{suffix}"], out[f"{theirs}mlp.up_proj.{suffix}"] = gate, up
    max_positions = _arg(args, "max_position_embeddings", _arg(args, "seq_length", 2048))
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": int(vocab),
        "hidden_size": int(hidden), "intermediate_size": int(ffn), "num_hidden_layers": layers,
        "num_attention_heads": heads, "num_key_value_heads": int(groups), "head_dim": int(head_dim),
        "hidden_act": "silu", "max_position_embeddings": int(max_positions),
        "rms_norm_eps": float(_arg(args, "layernorm_epsilon", 1e-5)),
        "rope_theta": float(_arg(args, "rotary_base", 10000.0)), "rope_scaling": None,
        "attention_bias": bool(bias), "mlp_bias": bool(bias),
        "attention_dropout": float(_arg(args, "attention_dropout", 0.0)),
        "tie_word_embeddings": not untied, "bos_token_id": None, "eos_token_id": None, "torch_dtype": "float32",
    }
    return config, {name: tensor.detach().to(torch.float32).contiguous() for name, tensor in out.items()}


def llama_from_hf(config: dict, tensors: Tensors) -> Tuple[Tensors, argparse.Namespace]:
    """Our full GPT state dict and model arguments (rope, SwiGLU, RMSNorm, GQA) from a ``LlamaForCausalLM``."""
    if config.get("model_type") != "llama":
        raise ConversionError(f"config.json: model_type {config.get('model_type')!r} is not llama")
    if config.get("hidden_act", "silu") != "silu":
        raise ConversionError(f"config.json: hidden_act {config.get('hidden_act')!r} is not silu (SwiGLU)")
    if config.get("rope_scaling"):
        raise ConversionError(f"config.json: rope_scaling {config['rope_scaling']} has no Megatron equivalent here")
    if bool(config.get("attention_bias", False)) != bool(config.get("mlp_bias", False)):
        raise ConversionError("config.json: attention_bias and mlp_bias differ; Megatron's --disable-bias-linear "
                              "sets both")
    heads, layers, hidden = config["num_attention_heads"], config["num_hidden_layers"], config["hidden_size"]
    groups = config.get("num_key_value_heads") or heads
    head_dim = config.get("head_dim") or hidden // heads
    bias = bool(config.get("attention_bias", False))
    tied = bool(config.get("tie_word_embeddings", False))
    embed = tensors["model.embed_tokens.weight"]
    full = {"language_model.embedding.word_embeddings.weight": embed,
            "language_model.encoder.final_layernorm.weight": tensors["model.norm.weight"]}
    if not tied:
        full[_OUTPUT_LAYER] = tensors["lm_head.weight"]
    for i in range(layers):
        ours, theirs = f"{_LAYERS}.{i}.", f"model.layers.{i}."
        for name, hf_name in _LLAMA_LAYER.items():
            if name.endswith(".bias") and not bias:
                continue
            full[ours + name] = tensors[theirs + hf_name]
        for suffix in (("weight", "bias") if bias else ("weight",)):
            full[f"{ours}self_attention.query_key_value.{suffix}"] = _llama_to_qkv(
                *(tensors[f"{theirs}self_attn.{p}.{suffix}"] for p in ("q_proj", "k_proj", "v_proj")), heads, groups)
            full[f"{ours}mlp.dense_h_to_4h.{suffix}"] = torch.cat(
                [tensors[f"{theirs}mlp.gate_proj.{suffix}"], tensors[f"{theirs}mlp.up_proj.{suffix}"]], dim=0)
    max_positions = config.get("max_position_embeddings", 2048)
    args = argparse.Namespace(
        num_layers=layers, hidden_size=hidden, num_attention_heads=heads, num_query_groups=groups,
        group_query_attention=groups != heads, kv_channels=head_dim, ffn_hidden_size=config["intermediate_size"],
        max_position_embeddings=max_positions, seq_length=max_positions, position_embedding_type="rope",
        rotary_percent=1.0, rotary_base=float(config.get("rope_theta", 10000.0)), swiglu=True,
        normalization="RMSNorm", layernorm_epsilon=config.get("rms_norm_eps", 1e-6), add_bias_linear=bias,
        untie_embeddings_and_output_weights=not tied, vocab_size=config["vocab_size"], vocab_extra_ids=0,
        hidden_dropout=0.0, attention_dropout=config.get("attention_dropout", 0.0), tokenizer_type=None)
    return _contiguous(full), args
