"""Building what the loop trains: model chunks (per virtual pipeline stage), mixed-precision and
data-parallel wrappers, the optimizer and its LR/WD scheduler, and the data iterators."""
from typing import Callable, List, Optional, Tuple

import torch
import torch.distributed as dist

from megatron.core.datasets.samplers import build_pretraining_data_loader, cyclic_iter
from megatron.core.datasets.splits import train_valid_test_num_samples
from megatron.core.pipeline_parallel.finalize import unwrap_model
from megatron.core.transformer import ModelType
from megatron.initialize import get_device
from megatron.utils import print_rank_0


def _build_chunks(model_provider: Callable, model_type, pg) -> List[torch.nn.Module]:
    """This rank's chunks: one per virtual pipeline stage, or the encoder/decoder part of a split.

    With CPU initialisation (the default) the core draws each component's weights from a seed of
    its own (``TransformerConfig.init_seed``), so the weights equal the one-process model's
    whatever the layout."""
    size = pg.pipeline_model_parallel_size
    virtual = pg.virtual_pipeline_model_parallel_size
    if size > 1 and model_type != ModelType.encoder_and_decoder:
        num_chunks = virtual or 1
        chunks = []
        for chunk_index in range(num_chunks):
            if virtual is not None:
                pg.virtual_pipeline_model_parallel_rank = chunk_index
            chunks.append(model_provider(pre_process=pg.is_pipeline_first_stage(),
                                         post_process=pg.is_pipeline_last_stage()))
        if virtual is not None:
            pg.virtual_pipeline_model_parallel_rank = 0
        return chunks
    pre_process, post_process = pg.is_pipeline_first_stage(), pg.is_pipeline_last_stage()
    if model_type == ModelType.encoder_and_decoder:
        add_encoder = add_decoder = True
        if pg.pipeline_model_parallel_size > 1:
            if pg.pipeline_model_parallel_split_rank is None:
                raise ValueError("an encoder-decoder model under pipeline parallelism needs "
                                 "--pipeline-model-parallel-split-rank")
            add_encoder = pg.is_pipeline_stage_before_split()
            add_decoder = pg.is_pipeline_stage_after_split()
            split = pg.pipeline_model_parallel_split_rank
            pre_process = pg.pp_rank in (0, split)
            post_process = pg.pp_rank in (split - 1, pg.pipeline_model_parallel_size - 1)
        return [model_provider(pre_process=pre_process, post_process=post_process,
                               add_encoder=add_encoder, add_decoder=add_decoder)]
    return [model_provider(pre_process=pre_process, post_process=post_process)]


def compile_transformer_layers(module: torch.nn.Module, backend: str = "inductor") -> int:
    """``torch.compile`` every transformer layer of ``module`` in place (``nn.Module.compile``: parameter
    names, state dicts and hooks stay as they are); returns how many were compiled.

    Layers rather than the whole chunk: pipeline stages, recompute (``--recompute-granularity``
    wraps whole layers in a checkpoint that calls the compiled forward) and the schedules stay
    eager Python, and every layer of a model shares one compiled graph. Under tensor parallelism the
    collectives of the parallel linears are the graph's only break points."""
    from megatron.core.transformer.layer import TransformerLayer

    count = 0
    for layer in module.modules():
        if isinstance(layer, TransformerLayer):
            layer.compile(backend=backend)
            count += 1
    return count


def get_model(model_provider: Callable, model_type, args, pg, wrap_with_ddp: bool = True) -> List[torch.nn.Module]:
    """This rank's model chunks, on the initialised device, wrapped for fp16/bf16 and data parallelism."""
    chunks = _build_chunks(model_provider, model_type, pg)
    for chunk in chunks:
        if not hasattr(unwrap_model(chunk), "model_type"):
            unwrap_model(chunk).model_type = model_type
    if pg.dp_rank == 0:
        count = sum(p.numel() for chunk in chunks for p in chunk.parameters())
        print(f" > number of parameters on (tensor, pipeline) model parallel rank "
              f"({pg.tp_rank}, {pg.pp_rank}): {count}", flush=True)
    device = get_device()
    chunks = [chunk.to(device) for chunk in chunks]
    if getattr(args, "torch_compile", False):
        from megatron.core.fusions import set_cpu_fusion_mode

        # Fused ops outside the compiled layers (e.g. the final layer norm) use their compiled form.
        set_cpu_fusion_mode("compiled", args.torch_compile_backend)
        count = sum(compile_transformer_layers(chunk, args.torch_compile_backend) for chunk in chunks)
        print_rank_0(f"> torch.compile (backend {args.torch_compile_backend}): {count} transformer layers per "
                     f"rank compile at their first forward; the compile time is logged after the first iteration")
    if args.fp16 or args.bf16:
        from megatron.core.distributed import Float16Module

        chunks = [Float16Module(args.params_dtype, chunk) for chunk in chunks]
    if not wrap_with_ddp:
        return chunks
    if args.DDP_impl == "local":
        from megatron.config_from_args import ddp_config_from_args
        from megatron.core.distributed import DistributedDataParallel

        ddp_config = ddp_config_from_args(args)
        return [DistributedDataParallel(ddp_config, chunk, pg) for chunk in chunks]
    if args.DDP_impl == "torch":
        device_ids = [device.index] if device.type == "cuda" else None
        # Pipeline stages run forward several times before backward: buffers are not broadcast then.
        return [torch.nn.parallel.DistributedDataParallel(chunk, device_ids=device_ids, output_device=None,
                                                          process_group=pg.dp, **_no_forward_buffer_sync())
                for chunk in chunks]
    raise ValueError(f"--DDP-impl must be local or torch, got {args.DDP_impl!r}")


def _no_forward_buffer_sync() -> dict:
    """torch >= 2.13 names it ``forward_sync_buffers`` (``broadcast_buffers`` warns once per wrapped
    module, on every rank). The buffers are still broadcast once at construction, which changes
    nothing: every data-parallel rank builds the same buffers (rotary frequencies, masks)."""
    import inspect

    if "forward_sync_buffers" in inspect.signature(torch.nn.parallel.DistributedDataParallel.__init__).parameters:
        return {"forward_sync_buffers": False}
    return {"broadcast_buffers": False}


def _no_weight_decay(name: str, param: torch.nn.Parameter) -> bool:
    # Megatron's groups: biases and LayerNorm weights (1-D tensors) take no weight decay.
    return name.endswith(".bias") or param.dim() == 1


def get_optimizer_param_scheduler(optimizer, args):
    """Megatron's scheduler, counted in samples; ``validate_args`` has turned the iteration or
    sample flags into ``lr_warmup_steps`` / ``lr_decay_steps`` / ``wd_incr_steps`` (samples)."""
    from megatron.core.optimizer.opt_param_scheduler import OptimizerParamScheduler

    start_wd = getattr(args, "start_weight_decay", None)
    end_wd = getattr(args, "end_weight_decay", None)
    return OptimizerParamScheduler(
        optimizer, init_lr=getattr(args, "lr_warmup_init", None) or 0.0, max_lr=args.lr, min_lr=args.min_lr,
        lr_warmup_steps=args.lr_warmup_steps, lr_decay_steps=args.lr_decay_steps,
        lr_decay_style=args.lr_decay_style,
        start_wd=args.weight_decay if start_wd is None else start_wd,
        end_wd=args.weight_decay if end_wd is None else end_wd,
        wd_incr_steps=args.wd_incr_steps, wd_incr_style=args.weight_decay_incr_style,
        use_checkpoint_opt_param_scheduler=args.use_checkpoint_lr_scheduler,
        override_opt_param_scheduler=args.override_lr_scheduler)


def setup_model_and_optimizer(model_provider: Callable, model_type, args, pg,
                              scale_lr_cond: Optional[Callable] = None, lr_mult: float = 1.0):
    """Chunks, optimizer and scheduler; loads ``--load`` when given (sets ``args.iteration``).

    ``scale_lr_cond(name, param)`` selects parameters whose learning rate is multiplied by
    ``lr_mult`` (as Megatron-LM's argument of the same name; e.g. ORQA's query tower)."""
    from megatron.config_from_args import optimizer_config_from_args
    from megatron.core.optimizer import get_megatron_optimizer

    model = get_model(model_provider, model_type, args, pg)
    optimizer = get_megatron_optimizer(optimizer_config_from_args(args), model, pg,
                                       no_weight_decay_cond=_no_weight_decay, scale_lr_cond=scale_lr_cond,
                                       lr_mult=lr_mult)
    scheduler = get_optimizer_param_scheduler(optimizer, args)
    args.iteration = 0
    if args.load is not None:
        from megatron.checkpointing import load_checkpoint

        args.iteration = load_checkpoint(model, optimizer, scheduler, args)
    elif getattr(args, "bert_load", None):
        print_rank_0(f"> no --load given: training from the towers initialised from --bert-load {args.bert_load}")
    elif not getattr(args, "pretrained_checkpoint", None):
        # A task given --pretrained-checkpoint loads those weights next, and says so.
        print_rank_0("> no --load given: training from randomly initialised weights")
    return model, optimizer, scheduler


# -- data ---------------------------------------------------------------------------------

def _iterator(loader, dataloader_type: str):
    if loader is None:
        return None
    return iter(cyclic_iter(loader)) if dataloader_type == "cyclic" else iter(loader)


def build_train_valid_test_data_iterators(train_valid_test_dataset_provider: Callable, args, pg,
                                          num_chunks: int = 1) -> Tuple[list, list, list]:
    """One iterator per model chunk for each split (every chunk of an interleaved pipeline pulls
    one micro-batch per step, so each needs its own cursor over the same samples).

    The train loader starts at ``args.consumed_train_samples``, so a resumed run reads on
    from where the checkpointed one stopped.
    """
    num_samples = train_valid_test_num_samples(
        args.global_batch_size, args.eval_iters, args.eval_interval,
        train_iters=args.train_iters if args.train_iters else None,
        train_samples=None if args.train_iters else args.train_samples)
    print_rank_0(f"> building train, validation, and test datasets ...\n"
                 f"    train:      {num_samples[0]}\n    validation: {num_samples[1]}\n    test:       {num_samples[2]}")
    train_ds, valid_ds, test_ds = train_valid_test_dataset_provider(num_samples)
    print_rank_0("> finished creating datasets ...")
    dataloader_type = args.dataloader_type or "single"

    def loaders(dataset, consumed):
        return [build_pretraining_data_loader(dataset, consumed, args.micro_batch_size, pg.dp_rank,
                                              pg.data_parallel_size, dataloader_type, args.num_workers,
                                              args.seed) for _ in range(num_chunks)]

    # Validation reads on from consumed_valid_samples (each evaluation sees new held-out batches,
    # as in Megatron); the test set is read once, from its start.
    train = [_iterator(l, dataloader_type) for l in loaders(train_ds, args.consumed_train_samples)]
    valid = [_iterator(l, dataloader_type) for l in loaders(valid_ds, args.consumed_valid_samples)]
    test = [_iterator(l, dataloader_type) for l in loaders(test_ds, 0)]
    return train, valid, test


def device_batch(batch: dict) -> dict:
    """Move a collated batch to the initialised device."""
    device = get_device()
    return {key: value.to(device, non_blocking=True) if torch.is_tensor(value) else value
            for key, value in batch.items()}


def data_parallel_group(pg) -> Optional[dist.ProcessGroup]:
    return pg.dp if pg.data_parallel_size > 1 else None
