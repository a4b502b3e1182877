"""``pretrain()``: build, load, train, evaluate, log and save, as Megatron-LM's training loop.

One iteration consumes one global batch: ``get_num_microbatches()`` micro-batches per
data-parallel rank through the pipeline schedule, one optimizer step, and a scheduler step of
``global batch`` samples. Every iteration ends with one small all-reduce (MAX over all ranks)
of three stop flags -- NaN loss, SIGTERM received, time budget used -- so that every rank
leaves the loop at the same iteration and a save (which is collective) never deadlocks.
"""
import signal
import sys
import time
import traceback
from typing import Callable, Dict, List, Optional

import torch
import torch.distributed as dist

from megatron.core import parallel_state
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.errors import debug_enabled, input_errors_in_one_line, is_distributed_error
from megatron.initialize import distributed_failure, get_device, initialize_megatron
from megatron.model_setup import build_train_valid_test_data_iterators, data_parallel_group, setup_model_and_optimizer
from megatron.startup_checks import check_inputs_at_startup
from megatron.training_log import TrainingLogger, validation_line, write_json_record, write_validation
from megatron.utils import calc_params_l2_norm, print_rank_0, print_rank_last

_START_TIME = time.time()
_SIGNAL_RECEIVED = False
# What the loop is doing, named in the message when a collective fails.
_PHASE = "start-up"

def _set_phase(text: str) -> None:
    global _PHASE
    _PHASE = text


def _on_sigterm(signum, frame):
    global _SIGNAL_RECEIVED
    _SIGNAL_RECEIVED = True


def pretrain(train_valid_test_dataset_provider: Callable, model_provider: Callable, model_type,
             forward_step_func: Callable, extra_args_provider=None, args_defaults={}, argv=None):
    """Run Megatron-style pretraining; returns the final iteration (None after a dry run).

    ``train_valid_test_dataset_provider(num_samples)`` returns (train, valid, test) datasets;
    ``model_provider(pre_process, post_process[, add_encoder, add_decoder])`` builds one stage;
    ``forward_step_func(data_iterator, model)`` returns ``(output, loss_func)``.
    """
    global _START_TIME
    _START_TIME = time.time()
    with input_errors_in_one_line():
        args = initialize_megatron(extra_args_provider, args_defaults, argv=argv)
        if getattr(args, "dry_run", False):
            from megatron.dry_run import run_dry_run

            run_dry_run(args, model_type)
            return None
        try:
            return _pretrain(args, train_valid_test_dataset_provider, model_provider, model_type, forward_step_func)
        except Exception as exc:  # noqa: BLE001 -- only distributed failures are turned into a clean exit
            if dist.is_initialized() and dist.get_world_size() > 1 and is_distributed_error(exc):
                if debug_enabled():
                    traceback.print_exc(file=sys.stderr)
                distributed_failure(exc, _PHASE)
            raise


def _pretrain(args, train_valid_test_dataset_provider, model_provider, model_type, forward_step_func):
    from megatron.config_from_args import core_transformer_config_from_args
    from megatron.global_vars import get_tensorboard_writer, get_timers

    pg = parallel_state.get_process_groups()
    timers = get_timers()
    if args.exit_signal_handler:
        signal.signal(signal.SIGTERM, _on_sigterm)
    config = core_transformer_config_from_args(args)
    print_rank_0(f"time to initialize megatron (seconds): {time.time() - _START_TIME:.3f}")

    check_inputs_at_startup(args)  # data files, --split, a writable --save: before the model is built

    _set_phase("model and optimizer setup")
    timers("model-and-optimizer-setup", log_level=0).start()
    model, optimizer, scheduler = setup_model_and_optimizer(model_provider, model_type, args, pg)
    timers("model-and-optimizer-setup", log_level=0).stop()

    _set_phase("data iterator setup")
    timers("train/valid/test-data-iterators-setup", log_level=0).start()
    train_iters, valid_iters, test_iters = build_train_valid_test_data_iterators(
        train_valid_test_dataset_provider, args, pg, num_chunks=len(model))
    timers("train/valid/test-data-iterators-setup", log_level=0).stop()
    timers.log(["model-and-optimizer-setup", "train/valid/test-data-iterators-setup"], rank=0)
    print_rank_0("done with setup ...\ntraining ...")

    ctx = TrainingContext(args, config, pg, model, optimizer, scheduler, forward_step_func, timers,
                          get_tensorboard_writer())
    iteration = args.iteration
    if args.load is not None and iteration > 0:
        ctx.last_saved_iteration = iteration  # already on disk: a run with nothing left to train re-saves nothing
    if train_iters[0] is not None and (args.train_iters or args.train_samples):
        iteration, exit_reason = train(ctx, _unlist(train_iters), _unlist(valid_iters))
        if exit_reason is not None:
            print_rank_0(f"exiting program at iteration {iteration}: {exit_reason}")
            _finish()
            return iteration
    if valid_iters[0] is not None and args.eval_iters > 0:
        evaluate_and_print_results(ctx, f"validation loss at the end of training (iteration {iteration})",
                                   _unlist(valid_iters), iteration)
    if args.save and iteration != 0 and ctx.last_saved_iteration != iteration:
        save_checkpoint_and_time(ctx, iteration)
    if test_iters[0] is not None and args.eval_iters > 0:
        evaluate_and_print_results(ctx, f"test loss at the end of training (iteration {iteration})",
                                   _unlist(test_iters), iteration, advance_consumed=False, split="test")
    _finish()
    return iteration


def _finish() -> None:
    from megatron.global_vars import get_tensorboard_writer

    writer = get_tensorboard_writer()
    if writer is not None:
        writer.flush()
    if dist.is_initialized():
        dist.barrier()


def _unlist(iterators: list):
    """The schedules take one iterator, or a list of them (one per chunk) when interleaving."""
    return iterators if len(iterators) > 1 else iterators[0]


class TrainingContext:
    """What one training run holds; passed around instead of module globals.

    ``micro_batch_rows``: the batch dimension of the activations a micro-batch sends between
    pipeline stages, when it is not ``--micro-batch-size`` (multiple choice flattens each
    question's choices into rows of their own).
    """

    def __init__(self, args, config, pg, model, optimizer, scheduler, forward_step_func, timers, writer,
                 micro_batch_rows: Optional[int] = None):
        self.args, self.config, self.pg = args, config, pg
        self.micro_batch_rows = micro_batch_rows if micro_batch_rows is not None else args.micro_batch_size
        self.model, self.optimizer, self.scheduler = model, optimizer, scheduler
        self.forward_step_func, self.timers, self.writer = forward_step_func, timers, writer
        self.forward_backward_func = get_forward_backward_func(pg)
        self.last_saved_iteration: Optional[int] = None
        # torch DDP decides at forward time whether the coming backward reduces, and expects one
        # backward per forward; the pipeline schedules run several forwards before their backwards
        # (the last ones inside no_sync), so its reduction is incomplete there. Under pipelining
        # the gradients are therefore averaged over data-parallel ranks before the pipeline's own
        # reductions (idempotent where DDP did reduce: the ranks' gradients are then equal).
        self.average_torch_ddp_grads = args.DDP_impl == "torch" and pg.pipeline_model_parallel_size > 1

    def finalize_model_grads(self, chunks):
        if self.args.DDP_impl == "local":
            from megatron.core.distributed import finalize_model_grads

            finalize_model_grads(chunks, self.pg)  # data-parallel, then model-parallel reductions
            return
        # Without pipelining torch DDP has reduced over data-parallel ranks during backward.
        from megatron.core.pipeline_parallel.finalize import reduce_model_parallel_grads

        if self.average_torch_ddp_grads:
            _average_grads_over_data_parallel(chunks, self.pg)
        reduce_model_parallel_grads(chunks, self.pg)


def _average_grads_over_data_parallel(chunks, pg) -> None:
    if pg.data_parallel_size == 1:
        return
    grads = [p.grad for chunk in chunks for p in chunk.parameters() if p.grad is not None]
    flat = torch._utils._flatten_dense_tensors(grads)
    dist.all_reduce(flat, group=pg.dp)
    flat /= pg.data_parallel_size
    for grad, averaged in zip(grads, torch._utils._unflatten_dense_tensors(flat, grads)):
        grad.copy_(averaged)


def _reduce_losses(losses_reduced: List[Dict[str, torch.Tensor]], pg, to_host: bool = True) -> Dict[str, float]:
    """Mean over micro-batches, then over data-parallel ranks (last pipeline stage only); with
    ``to_host=False`` the values stay 0-d device tensors (read back only when logged)."""
    if not losses_reduced:
        return {}
    keys = sorted(losses_reduced[0])
    means = torch.stack([torch.stack([d[key].detach().float().reshape(()) for d in losses_reduced]).mean()
                         for key in keys]).to(get_device())
    group = data_parallel_group(pg)
    if group is not None:
        dist.all_reduce(means, group=group)
        means /= pg.data_parallel_size
    if not to_host:
        return dict(zip(keys, means.unbind(0)))
    return {key: float(value) for key, value in zip(keys, means.cpu().tolist())}


def train_step(ctx: TrainingContext, data_iterator):
    """One global batch: forward/backward over micro-batches, then the optimizer step.

    Returns (loss_dict, skipped_iter, grad_norm, num_zeros_in_grad); loss_dict is empty off the
    last pipeline stage. Losses, norm, zero count and, under fp16, the skip flag are device
    tensors: the step itself never waits for the device (the loop reads them at --log-interval).
    """
    from megatron.global_vars import get_num_microbatches

    args, timers = ctx.args, ctx.timers
    if args.DDP_impl == "local":
        for chunk in ctx.model:
            chunk.zero_grad_buffer()
    ctx.optimizer.zero_grad()
    timers("forward-backward", log_level=1).start()
    losses_reduced = ctx.forward_backward_func(
        forward_step_func=ctx.forward_step_func, data_iterator=data_iterator,
        model=ctx.model if len(ctx.model) > 1 else ctx.model[0], num_microbatches=get_num_microbatches(),
        seq_length=args.seq_length or args.encoder_seq_length, micro_batch_size=ctx.micro_batch_rows,
        decoder_seq_length=getattr(args, "decoder_seq_length", None), config=ctx.config, forward_only=False,
        pg=ctx.pg, grad_scale_func=ctx.optimizer.scale_loss, finalize_model_grads_func=ctx.finalize_model_grads)
    timers("forward-backward", log_level=1).stop()
    timers("optimizer", log_level=1).start()
    update_successful, grad_norm, num_zeros_in_grad = ctx.optimizer.step(sync=False)
    timers("optimizer", log_level=1).stop()
    increment = get_num_microbatches() * args.micro_batch_size * args.data_parallel_size
    if torch.is_tensor(update_successful):
        # fp16: whether the step overflowed is known on the device only; the scheduler and the
        # logger take the flag as it is and read it back at --log-interval.
        skipped_iter = (~update_successful).to(torch.int64)
        ctx.scheduler.step(increment=increment, skipped=skipped_iter)
    else:
        skipped_iter = 0 if update_successful else 1
        if update_successful:
            ctx.scheduler.step(increment=increment)
    return _reduce_losses(losses_reduced, ctx.pg, to_host=False), skipped_iter, grad_norm, num_zeros_in_grad


def _stop_flags(ctx: TrainingContext, nan_seen: bool) -> List[bool]:
    """[nan loss (bf16/fp32), SIGTERM received, time budget used], agreed by every rank."""
    args = ctx.args
    nan = (not args.fp16) and nan_seen
    time_up = bool(args.exit_duration_in_mins) and (time.time() - _START_TIME) / 60.0 > args.exit_duration_in_mins
    flags = torch.tensor([float(nan), float(_SIGNAL_RECEIVED), float(time_up)], device=get_device())
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    return [bool(f) for f in flags.cpu().tolist()]


def save_checkpoint_and_time(ctx: TrainingContext, iteration: int) -> None:
    from megatron.checkpointing import save_checkpoint

    _set_phase(f"checkpoint save at iteration {iteration}")
    ctx.timers("save-checkpoint", log_level=0).start(barrier=True)
    save_checkpoint(iteration, ctx.model, ctx.optimizer, ctx.scheduler, ctx.args, ctx.pg)
    ctx.timers("save-checkpoint", log_level=0).stop(barrier=True)
    ctx.timers.log(["save-checkpoint"])
    ctx.last_saved_iteration = iteration


def train(ctx: TrainingContext, train_data_iterator, valid_data_iterator):
    """The loop; returns (iteration, exit reason or None when --train-iters/--train-samples ran out)."""
    from megatron.global_vars import get_current_global_batch_size, update_num_microbatches

    args, timers = ctx.args, ctx.timers
    for chunk in ctx.model:
        chunk.train()
    logger = TrainingLogger(args, timers, ctx.writer)
    iteration = args.iteration
    first_iteration = iteration + 1
    interval_start = time.time()
    update_num_microbatches(args.consumed_train_samples, consistency_check=False)

    def done() -> bool:
        if args.train_iters:
            return iteration >= args.train_iters
        return args.consumed_train_samples >= args.train_samples

    while not done():
        update_num_microbatches(args.consumed_train_samples)
        _set_phase(f"training iteration {iteration + 1}")
        loss_dict, skipped_iter, grad_norm, num_zeros = train_step(ctx, train_data_iterator)
        iteration += 1
        args.iteration = iteration
        batch_size = get_current_global_batch_size()
        args.consumed_train_samples += batch_size
        logger.add(loss_dict, skipped_iter)
        # The parameter norm reads back a value: only on iterations that log it (a collective, so the
        # condition depends on arguments every rank shares).
        wanted = iteration % args.log_interval == 0 or (bool(getattr(args, "tensorboard_dir", None))
                                                        and iteration % args.tensorboard_log_interval == 0)
        params_norm = calc_params_l2_norm(ctx.model, ctx.pg) if args.log_params_norm and wanted else None
        line = logger.log(iteration, args.consumed_train_samples, ctx.scheduler.current_lr(), batch_size,
                          ctx.optimizer.get_loss_scale(), grad_norm, num_zeros, params_norm,
                          time.time() - interval_start, loss_dict)
        if iteration == first_iteration and getattr(args, "torch_compile", False):
            print_rank_0(f"torch.compile: first iteration took {time.time() - interval_start:.1f} s "
                         f"(compilation of the transformer layers included)")
        logged = iteration % args.log_interval == 0
        if logged:
            print_rank_last(line)
            timers.log(["forward-backward", "optimizer"], normalizer=args.log_interval)
            interval_start = time.time()

        # The stop flags are agreed at logged iterations (the NaN check reads the losses, which
        # stay on the device in between), and every iteration only when a SIGTERM handler or a
        # time budget is configured.
        nan = signalled = time_up = False
        if logged or args.exit_signal_handler or args.exit_duration_in_mins:
            nan, signalled, time_up = _stop_flags(ctx, logged and logger.nan_in_last_interval)
        if nan:
            print_rank_last(f"ERROR: loss is NaN or infinite at iteration {iteration} or in the "
                            f"--log-interval {args.log_interval} iterations before it "
                            f"({', '.join(f'{k}={float(v)}' for k, v in sorted(loss_dict.items()))}); "
                            f"stopping the run")
            _finish_abnormally(2)
        if args.eval_interval and iteration % args.eval_interval == 0 and valid_data_iterator is not None \
                and args.eval_iters > 0:
            evaluate_and_print_results(ctx, f"validation loss at iteration {iteration}", valid_data_iterator,
                                       iteration)
        if signalled:
            if args.save:
                save_checkpoint_and_time(ctx, iteration)
            return iteration, "received SIGTERM (--exit-signal-handler)"
        if args.save and args.save_interval and iteration % args.save_interval == 0:
            save_checkpoint_and_time(ctx, iteration)
        if time_up:
            if args.save and ctx.last_saved_iteration != iteration:
                save_checkpoint_and_time(ctx, iteration)
            return iteration, f"--exit-duration-in-mins {args.exit_duration_in_mins} reached"
        if args.exit_interval and iteration % args.exit_interval == 0:
            if args.save and ctx.last_saved_iteration != iteration:
                save_checkpoint_and_time(ctx, iteration)
            return iteration, f"--exit-interval {args.exit_interval} reached"
    return iteration, None


def _is_last_rank() -> bool:
    return not dist.is_initialized() or dist.get_rank() == dist.get_world_size() - 1


def _finish_abnormally(code: int) -> None:
    sys.stdout.flush()
    sys.stderr.flush()
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
    sys.exit(code)


def evaluate(ctx: TrainingContext, data_iterator, advance_consumed: bool = True) -> Dict[str, float]:
    """Mean losses over --eval-iters global batches (last pipeline stage; empty elsewhere)."""
    from megatron.global_vars import get_num_microbatches

    args = ctx.args
    for chunk in ctx.model:
        chunk.eval()
    totals: Dict[str, float] = {}
    with torch.no_grad():
        for step in range(args.eval_iters):
            _set_phase(f"evaluation step {step + 1} of {args.eval_iters}")
            losses = ctx.forward_backward_func(
                forward_step_func=ctx.forward_step_func, data_iterator=data_iterator,
                model=ctx.model if len(ctx.model) > 1 else ctx.model[0],
                num_microbatches=get_num_microbatches(),
                seq_length=args.seq_length or args.encoder_seq_length, micro_batch_size=ctx.micro_batch_rows,
                decoder_seq_length=getattr(args, "decoder_seq_length", None), config=ctx.config,
                forward_only=True, pg=ctx.pg)
            for key, value in _reduce_losses(losses, ctx.pg).items():
                totals[key] = totals.get(key, 0.0) + value
            if advance_consumed:
                args.consumed_valid_samples += args.data_parallel_size * args.micro_batch_size * get_num_microbatches()
    for chunk in ctx.model:
        chunk.train()
    return {key: value / args.eval_iters for key, value in totals.items()}


def evaluate_and_print_results(ctx: TrainingContext, label: str, data_iterator, iteration: int,
                               advance_consumed: bool = True, split: str = "validation") -> Dict[str, float]:
    loss_dict = evaluate(ctx, data_iterator, advance_consumed)
    if _is_last_rank():
        write_validation(ctx.writer, split, loss_dict, iteration, ctx.args.consumed_train_samples,
                         ctx.args.log_validation_ppl_to_tensorboard)
    print_rank_last(validation_line(label, loss_dict))
    write_json_record(ctx.args, {"kind": split, "label": label, "iteration": iteration, "losses": loss_dict})
    return loss_dict
