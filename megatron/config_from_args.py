"""The library's config objects from validated Megatron flags: TransformerConfig, OptimizerConfig and
DistributedDataParallelConfig. megatron/arguments.py parses and validates the flags; this module is
the one place that maps them onto ``megatron.core``'s dataclasses."""
import torch


def core_transformer_config_from_args(args):
    """The core's TransformerConfig from validated ``args``."""
    from megatron.core.transformer import TransformerConfig

    init = {}
    if args.init_method_xavier_uniform:
        init = {"init_method": torch.nn.init.xavier_uniform_, "output_layer_init_method": torch.nn.init.xavier_uniform_}
    return TransformerConfig(
        num_layers=args.num_layers, hidden_size=args.hidden_size, num_attention_heads=args.num_attention_heads,
        kv_channels=args.kv_channels, ffn_hidden_size=args.ffn_hidden_size,
        hidden_dropout=args.hidden_dropout, attention_dropout=args.attention_dropout,
        layernorm_epsilon=args.layernorm_epsilon, init_method_std=args.init_method_std,
        apply_query_key_layer_scaling=args.apply_query_key_layer_scaling,
        attention_softmax_in_fp32=args.attention_softmax_in_fp32,
        apply_residual_connection_post_layernorm=args.apply_residual_connection_post_layernorm,
        openai_gelu=args.openai_gelu, bias_gelu_fusion=args.bias_gelu_fusion,
        bias_dropout_fusion=args.bias_dropout_fusion, masked_softmax_fusion=args.masked_softmax_fusion,
        persist_layer_norm=args.persist_layer_norm,
        position_embedding_type=args.position_embedding_type, rotary_percent=args.rotary_percent,
        rotary_base=args.rotary_base, num_query_groups=args.num_query_groups, swiglu=args.swiglu,
        normalization=args.normalization, add_bias_linear=args.add_bias_linear,
        untie_embeddings_and_output_weights=args.untie_embeddings_and_output_weights,
        params_dtype=args.params_dtype, fp32_residual_connection=args.fp32_residual_connection,
        sequence_parallel=args.sequence_parallel, recompute_granularity=args.recompute_granularity,
        recompute_method=args.recompute_method, recompute_num_layers=args.recompute_num_layers,
        use_cpu_initialization=args.use_cpu_initialization,
        use_mup=getattr(args, "use_mup", False), mup_base_hidden_size=getattr(args, "mup_base_hidden_size", None),
        mup_base_num_attention_heads=getattr(args, "mup_base_num_attention_heads", None),
        mup_base_ffn_hidden_size=getattr(args, "mup_base_ffn_hidden_size", None),
        # Per-component initial weights: every layout starts from the one-process weights.
        init_seed=args.seed if args.use_cpu_initialization else None,
        **init)


def optimizer_config_from_args(args):
    """The core's OptimizerConfig from validated ``args``."""
    from megatron.core.optimizer.config import OptimizerConfig

    return OptimizerConfig(
        optimizer=args.optimizer, lr=args.lr, min_lr=args.min_lr, weight_decay=args.weight_decay,
        adam_beta1=args.adam_beta1, adam_beta2=args.adam_beta2, adam_eps=args.adam_eps,
        sgd_momentum=args.sgd_momentum, clip_grad=args.clip_grad, fp16=args.fp16, bf16=args.bf16,
        params_dtype=args.params_dtype, loss_scale=args.loss_scale, initial_loss_scale=args.initial_loss_scale,
        min_loss_scale=args.min_loss_scale, loss_scale_window=args.loss_scale_window, hysteresis=args.hysteresis,
        use_distributed_optimizer=args.use_distributed_optimizer, log_num_zeros_in_grad=args.log_num_zeros_in_grad)


def ddp_config_from_args(args):
    """The core's DistributedDataParallelConfig (for ``--DDP-impl local``) from validated ``args``."""
    from megatron.core.distributed.config import DistributedDataParallelConfig

    return DistributedDataParallelConfig(
        grad_reduce_in_fp32=args.accumulate_allreduce_grads_in_fp32,
        use_distributed_optimizer=args.use_distributed_optimizer)
