"""Forward-backward schedules over micro-batches: no pipelining, 1F1B, interleaved 1F1B.

Every schedule has the same signature (``get_forward_backward_func`` picks one)::

    losses = schedule(forward_step_func=..., data_iterator=..., model=..., num_microbatches=...,
                      seq_length=..., micro_batch_size=..., config=..., pg=...)

``forward_step_func(data_iterator, model)`` runs the model on the next micro-batch and returns
``(output_tensor, loss_func)``; on the last stage ``loss_func(output_tensor)`` returns
``(loss, reported)``. Each micro-batch's loss is divided by ``num_microbatches`` before
backward, so gradients are the mean over the batch. The returned list holds ``reported`` for
every micro-batch on the last stage, and is empty elsewhere.

Within a stage, a model's ``set_input_tensor`` receives the activations from the previous
stage; after a stage has sent its output, the output's storage is freed (only its autograd
graph is needed), and backward is run through the engine directly because the freed tensor no
longer has the gradient's shape.
"""
import contextlib
from typing import Callable, Iterator, List, Optional, Union

import torch
from torch.autograd.variable import Variable

from megatron.core.parallel_state import ProcessGroups, get_process_groups
from megatron.core.pipeline_parallel.finalize import unwrap_model
from megatron.core.pipeline_parallel.p2p import P2PCommunicator
from megatron.core.transformer import ModelType, TransformerConfig


def get_forward_backward_func(pg: Optional[ProcessGroups] = None) -> Callable:
    pg = pg if pg is not None else get_process_groups()
    if pg.pipeline_model_parallel_size == 1:
        return forward_backward_no_pipelining
    if pg.virtual_pipeline_model_parallel_size is not None:
        return forward_backward_pipelining_with_interleaving
    return forward_backward_pipelining_without_interleaving


def deallocate_output_tensor(out: Optional[torch.Tensor], deallocate: bool) -> None:
    """Replace the tensor's storage by one element; its ``grad_fn`` (what backward needs) survives."""
    if out is None or not deallocate or out._base is not None:
        return
    out.data = torch.empty((1,), device=out.device, dtype=out.dtype)


def custom_backward(output: torch.Tensor, grad_output: Optional[torch.Tensor]) -> None:
    """Backward from ``output`` without torch's check that ``grad_output`` has its (freed) shape."""
    if grad_output is None:
        if output.numel() != 1:
            raise ValueError(f"implicit backward needs a scalar output, got shape {tuple(output.shape)}")
        grad_output = torch.ones_like(output, memory_format=torch.preserve_format)
    Variable._execution_engine.run_backward(
        tensors=(output,), grad_tensors=(grad_output,), keep_graph=False, create_graph=False,
        inputs=tuple(), allow_unreachable=True, accumulate_grad=True)


def _model_type(model) -> ModelType:
    return getattr(unwrap_model(model), "model_type", ModelType.encoder_or_decoder)


def forward_step(forward_step_func, data_iterator, model, num_microbatches: int, input_tensor: List,
                 forward_data_store: list, pg: ProcessGroups, collect_non_loss_data: bool = False) -> List:
    """Run one micro-batch through this stage; returns the stage's outputs as a list."""
    unwrap_model(model).set_input_tensor(input_tensor)
    output_tensor, loss_func = forward_step_func(data_iterator, model)
    if pg.is_pipeline_last_stage():
        if collect_non_loss_data:
            forward_data_store.append(loss_func(output_tensor, non_loss_data=True))
        else:
            loss, reported = loss_func(output_tensor)
            output_tensor = loss / num_microbatches
            forward_data_store.append(reported)
    if _model_type(model) == ModelType.encoder_and_decoder and pg.is_pipeline_stage_after_split():
        # Decoder stages forward the encoder output they received to the next decoder stage.
        return [output_tensor, input_tensor[-1]]
    return [output_tensor]


def backward_step(input_tensor: List, output_tensor: List, output_tensor_grad: List, model_type: ModelType,
                  config: TransformerConfig, pg: ProcessGroups, grad_scale_func: Optional[Callable] = None) -> List:
    """Backward through one micro-batch of this stage; returns the gradients of its inputs."""
    for tensor in input_tensor:
        if tensor is not None:
            tensor.retain_grad()
    output, grad = output_tensor[0], output_tensor_grad[0]
    if grad is None and grad_scale_func is not None:
        output = grad_scale_func(output)
    if config.deallocate_pipeline_outputs:
        custom_backward(output, grad)
    else:
        torch.autograd.backward(output, grad_tensors=grad)
    input_tensor_grad = [t.grad if t is not None else None for t in input_tensor]
    if (pg.pipeline_model_parallel_size > 1 and model_type == ModelType.encoder_and_decoder
            and pg.is_pipeline_stage_after_split() and len(output_tensor_grad) > 1
            and output_tensor_grad[1] is not None):
        # The encoder output passed straight through this stage: its gradient from the next
        # stage adds to what this stage's cross-attention contributed.
        if input_tensor_grad[-1] is None:
            input_tensor_grad[-1] = output_tensor_grad[1].clone()
        else:
            input_tensor_grad[-1].add_(output_tensor_grad[1])
    return input_tensor_grad


def get_tensor_shapes(pp_rank: int, model_type: ModelType, seq_length: int, micro_batch_size: int,
                      decoder_seq_length: Optional[int], config: TransformerConfig, pg: ProcessGroups):
    """Shapes a stage sends: ``[(s, b, h)]``, or ``[(s_dec, b, h), (s_enc, b, h)]`` after an encoder-decoder split."""
    divisor = pg.tensor_model_parallel_size if config.sequence_parallel else 1

    def shape(length, what):
        if length % divisor != 0:
            raise ValueError(f"{what} {length} is not divisible by tensor_model_parallel_size {divisor} (sequence_parallel)")
        return (length // divisor, micro_batch_size, config.hidden_size)

    if model_type == ModelType.encoder_and_decoder:
        if decoder_seq_length is None:
            raise ValueError("an encoder-decoder model needs decoder_seq_length")
        if pg.is_pipeline_stage_before_split(pp_rank):
            return [shape(seq_length, "seq_length")]
        return [shape(decoder_seq_length, "decoder_seq_length"), shape(seq_length, "seq_length")]
    return [shape(seq_length, "seq_length")]


def _device_of(model) -> torch.device:
    for param in unwrap_model(model).parameters():
        return param.device
    return torch.device("cpu")


def _no_sync(models, no_sync_func):
    """A context factory that defers data-parallel gradient sync (the wrappers' ``no_sync``) for every chunk."""
    if no_sync_func is not None:
        return no_sync_func
    models = models if isinstance(models, list) else [models]

    @contextlib.contextmanager
    def all_chunks():
        with contextlib.ExitStack() as stack:
            for model in models:
                if hasattr(model, "no_sync"):
                    stack.enter_context(model.no_sync())
            yield

    return all_chunks


class _GradSync:
    """Keeps gradient sync off until ``enable`` is called before the step's last backward."""

    def __init__(self, no_sync_func, active: bool):
        self.context = no_sync_func() if active else None
        if self.context is not None:
            self.context.__enter__()

    def enable(self) -> None:
        if self.context is not None:
            self.context.__exit__(None, None, None)
            self.context = None


def forward_backward_no_pipelining(*, forward_step_func: Callable, data_iterator: Union[Iterator, List[Iterator]],
                                   model: Union[torch.nn.Module, List[torch.nn.Module]], num_microbatches: int,
                                   seq_length: int, micro_batch_size: int, config: TransformerConfig,
                                   decoder_seq_length: Optional[int] = None, forward_only: bool = False,
                                   collect_non_loss_data: bool = False, pg: Optional[ProcessGroups] = None,
                                   grad_scale_func: Optional[Callable] = None, no_sync_func: Optional[Callable] = None,
                                   finalize_model_grads_func: Optional[Callable] = None) -> list:
    """Gradient accumulation over micro-batches; data-parallel gradient sync only on the last one."""
    pg = pg if pg is not None else get_process_groups()
    if isinstance(model, list):
        if len(model) != 1:
            raise ValueError(f"no pipelining runs one model chunk, got {len(model)}")
        model = model[0]
    if isinstance(data_iterator, list):
        data_iterator = data_iterator[0]
    model_type = _model_type(model)
    forward_data_store = []

    def step():
        output = forward_step(forward_step_func, data_iterator, model, num_microbatches, [None],
                              forward_data_store, pg, collect_non_loss_data)
        if not forward_only:
            backward_step([None], output, [None], model_type, config, pg, grad_scale_func)

    with _no_sync(model, no_sync_func)():
        for _ in range(num_microbatches - 1):
            step()
    step()
    if finalize_model_grads_func is not None and not forward_only:
        finalize_model_grads_func([model])
    return forward_data_store


def forward_backward_pipelining_without_interleaving(
        *, forward_step_func: Callable, data_iterator: Union[Iterator, List[Iterator]],
        model: Union[torch.nn.Module, List[torch.nn.Module]], num_microbatches: int, seq_length: int,
        micro_batch_size: int, config: TransformerConfig, decoder_seq_length: Optional[int] = None,
        forward_only: bool = False, collect_non_loss_data: bool = False, pg: Optional[ProcessGroups] = None,
        grad_scale_func: Optional[Callable] = None, no_sync_func: Optional[Callable] = None,
        finalize_model_grads_func: Optional[Callable] = None) -> list:
    """1F1B: warm-up forwards, then one forward and one backward in turn, then cool-down backwards.

    Stage ``r`` of ``p`` runs ``p - r - 1`` warm-up forwards, so at most ``p - r`` micro-batches'
    activations are alive on it at once, whatever the number of micro-batches.
    """
    pg = pg if pg is not None else get_process_groups()
    if isinstance(model, list):
        if len(model) != 1:
            raise ValueError(f"1F1B without interleaving runs one model chunk, got {len(model)}")
        model = model[0]
    if isinstance(data_iterator, list):
        data_iterator = data_iterator[0]
    model_type = _model_type(model)
    comm = P2PCommunicator(pg, config.pipeline_dtype, _device_of(model))
    pp, rank = pg.pipeline_model_parallel_size, pg.pp_rank
    recv_shapes = get_tensor_shapes(rank - 1, model_type, seq_length, micro_batch_size, decoder_seq_length, config, pg)
    send_shapes = get_tensor_shapes(rank, model_type, seq_length, micro_batch_size, decoder_seq_length, config, pg)
    num_warmup = min(pp - rank - 1, num_microbatches)
    num_remaining = num_microbatches - num_warmup
    last_stage = pg.is_pipeline_last_stage()
    deallocate = config.deallocate_pipeline_outputs and not last_stage
    forward_data_store = []
    input_tensors, output_tensors = [], []
    grad_sync = _GradSync(_no_sync(model, no_sync_func), not forward_only)

    def run_forward(input_tensor):
        return forward_step(forward_step_func, data_iterator, model, num_microbatches,
                            input_tensor if input_tensor is not None else [None], forward_data_store, pg,
                            collect_non_loss_data)

    def run_backward(input_tensor, output_tensor, output_tensor_grad):
        return backward_step(input_tensor if input_tensor is not None else [None], output_tensor,
                             output_tensor_grad if output_tensor_grad is not None else [None],
                             model_type, config, pg, grad_scale_func)

    for _ in range(num_warmup):
        input_tensor = comm.recv_forward(recv_shapes)
        output_tensor = run_forward(input_tensor)
        comm.send_forward(output_tensor)
        if not forward_only:
            input_tensors.append(input_tensor)
            output_tensors.append(output_tensor)
            deallocate_output_tensor(output_tensor[0], deallocate)

    input_tensor = comm.recv_forward(recv_shapes) if num_remaining > 0 else None
    for i in range(num_remaining):
        last_iteration = i == num_remaining - 1
        output_tensor = run_forward(input_tensor)
        if forward_only:
            comm.send_forward(output_tensor)
            if not last_iteration:
                input_tensor = comm.recv_forward(recv_shapes)
            continue
        output_tensor_grad = comm.send_forward_recv_backward(output_tensor, send_shapes)
        input_tensors.append(input_tensor)
        output_tensors.append(output_tensor)
        deallocate_output_tensor(output_tensor[0], deallocate)
        if last_iteration and num_warmup == 0:
            grad_sync.enable()
        # Backward the oldest micro-batch in flight.
        input_tensor_grad = run_backward(input_tensors.pop(0), output_tensors.pop(0), output_tensor_grad)
        if last_iteration:
            input_tensor = None
            comm.send_backward(input_tensor_grad)
        else:
            input_tensor = comm.send_backward_recv_forward(input_tensor_grad, recv_shapes)

    if not forward_only:
        for i in range(num_warmup):
            if i == num_warmup - 1:
                grad_sync.enable()
            output_tensor_grad = comm.recv_backward(send_shapes)
            input_tensor_grad = run_backward(input_tensors.pop(0), output_tensors.pop(0), output_tensor_grad)
            comm.send_backward(input_tensor_grad)
    grad_sync.enable()
    if finalize_model_grads_func is not None and not forward_only:
        finalize_model_grads_func([model])
    return forward_data_store


def forward_backward_pipelining_with_interleaving(
        *, forward_step_func: Callable, data_iterator: List[Iterator], model: List[torch.nn.Module],
        num_microbatches: int, seq_length: int, micro_batch_size: int, config: TransformerConfig,
        decoder_seq_length: Optional[int] = None, forward_only: bool = False, collect_non_loss_data: bool = False,
        pg: Optional[ProcessGroups] = None, grad_scale_func: Optional[Callable] = None,
        no_sync_func: Optional[Callable] = None, finalize_model_grads_func: Optional[Callable] = None) -> list:
    """Interleaved 1F1B: each rank holds ``v`` model chunks (virtual stages) and cycles through them.

    Micro-batches go through the chunks in groups of ``p`` (the pipeline size), so the bubble
    shrinks from ``(p - 1) / m`` to ``(p - 1) / (v * m)`` of the step, at the price of ``v``
    times more point-to-point messages.
    """
    pg = pg if pg is not None else get_process_groups()
    if not isinstance(model, list) or not isinstance(data_iterator, list):
        raise ValueError("the interleaved schedule needs a list of model chunks and a list of data iterators")
    num_chunks = len(model)
    if num_chunks != pg.virtual_pipeline_model_parallel_size:
        raise ValueError(f"got {num_chunks} model chunks for virtual_pipeline_model_parallel_size "
                         f"{pg.virtual_pipeline_model_parallel_size}")
    if len(data_iterator) != num_chunks:
        raise ValueError(f"got {len(data_iterator)} data iterators for {num_chunks} model chunks")
    if _model_type(model[0]) == ModelType.encoder_and_decoder:
        raise ValueError("the interleaved schedule does not support encoder-decoder models")
    pp, rank = pg.pipeline_model_parallel_size, pg.pp_rank
    if num_microbatches % pp != 0:
        raise ValueError(f"num_microbatches {num_microbatches} is not divisible by pipeline_model_parallel_size {pp} "
                         "(required by the interleaved schedule)")
    comm = P2PCommunicator(pg, config.pipeline_dtype, _device_of(model[0]))
    shapes = get_tensor_shapes(rank, ModelType.encoder_or_decoder, seq_length, micro_batch_size, None, config, pg)
    model_type = ModelType.encoder_or_decoder
    total = num_microbatches * num_chunks
    all_warmup = False
    if forward_only:
        num_warmup = total
    elif num_microbatches == pp:
        num_warmup, all_warmup = total, True
    else:
        num_warmup = min((pp - rank - 1) * 2 + (num_chunks - 1) * pp, total)
    num_remaining = total - num_warmup

    input_tensors = [[] for _ in range(num_chunks)]
    output_tensors = [[] for _ in range(num_chunks)]
    output_tensor_grads = [[] for _ in range(num_chunks)]
    forward_data_store = []
    grad_sync = _GradSync(_no_sync(model, no_sync_func), not forward_only)

    def chunk_id(k: int, forward: bool) -> int:
        # Micro-batches visit the chunks in groups of `pp`; backward visits them in reverse order.
        index = (k % (pp * num_chunks)) // pp
        return index if forward else num_chunks - index - 1

    def set_chunk(chunk: int) -> None:
        pg.virtual_pipeline_model_parallel_rank = chunk

    def forward_helper(k: int):
        chunk = chunk_id(k, True)
        set_chunk(chunk)
        if pg.is_pipeline_first_stage() and len(input_tensors[chunk]) == len(output_tensors[chunk]):
            input_tensors[chunk].append(None)
        input_tensor = input_tensors[chunk][-1]
        output_tensor = forward_step(forward_step_func, data_iterator[chunk], model[chunk], num_microbatches,
                                     input_tensor if input_tensor is not None else [None], forward_data_store,
                                     pg, collect_non_loss_data)
        output_tensors[chunk].append(output_tensor)
        if forward_only:
            input_tensors[chunk].pop()
            output_tensors[chunk].pop()
        return output_tensor

    def backward_helper(k: int):
        if k == total - 1:
            grad_sync.enable()
        chunk = chunk_id(k, False)
        set_chunk(chunk)
        if pg.is_pipeline_last_stage() and len(output_tensor_grads[chunk]) == 0:
            output_tensor_grads[chunk].append(None)
        input_tensor = input_tensors[chunk].pop(0)
        output_tensor = output_tensors[chunk].pop(0)
        output_tensor_grad = output_tensor_grads[chunk].pop(0)
        return backward_step(input_tensor if input_tensor is not None else [None], output_tensor,
                             output_tensor_grad if output_tensor_grad is not None else [None],
                             model_type, config, pg, grad_scale_func)

    def free(output_tensor, chunk):
        set_chunk(chunk)
        if output_tensor is not None and not pg.is_pipeline_last_stage():
            deallocate_output_tensor(output_tensor[0], config.deallocate_pipeline_outputs)

    set_chunk(0)
    input_tensors[0].append(comm.recv_forward(shapes))
    for k in range(num_warmup):
        output_tensor = forward_helper(k)
        current = chunk_id(k, True)
        next_chunk = chunk_id(k + 1, True)
        recv_prev = not (pg.is_pipeline_first_stage(ignore_virtual=True) and next_chunk == 0)
        if k == total - 1:
            recv_prev = False
        to_send = None if pg.is_pipeline_last_stage() else output_tensor
        if k == num_warmup - 1 and not forward_only and not all_warmup:
            recv_next = not pg.is_pipeline_last_stage(ignore_virtual=True)
            input_tensor, output_tensor_grad = comm.ring_send_forward_backward_recv_forward_backward(
                to_send, None, recv_prev, recv_next, shapes)
            output_tensor_grads[num_chunks - 1].append(output_tensor_grad)
        else:
            input_tensor = comm.ring_send_forward_recv_forward(to_send, recv_prev, shapes)
        if recv_prev:
            input_tensors[next_chunk].append(input_tensor)
        if not forward_only:
            free(output_tensor, current)

    for k in range(num_remaining):
        forward_k = k + num_warmup
        output_tensor = forward_helper(forward_k)
        backward_k = k
        input_tensor_grad = backward_helper(backward_k)

        forward_chunk = chunk_id(forward_k, True)
        set_chunk(forward_chunk)
        to_send = None if pg.is_pipeline_last_stage() else output_tensor
        set_chunk(chunk_id(backward_k, False))
        grad_to_send = None if pg.is_pipeline_first_stage() else input_tensor_grad

        # Which chunk the incoming tensors belong to. The first stage runs p - 1 forwards ahead
        # of the last, and the last p - 1 backwards ahead of the first.
        recv_prev = True
        if pg.is_pipeline_first_stage(ignore_virtual=True):
            next_forward_chunk = chunk_id(forward_k - (pp - 1), True)
            if next_forward_chunk == num_chunks - 1:
                recv_prev = False
            next_forward_chunk += 1
        else:
            next_forward_chunk = chunk_id(forward_k + 1, True)
        recv_next = True
        if pg.is_pipeline_last_stage(ignore_virtual=True):
            next_backward_chunk = chunk_id(backward_k - (pp - 1), False)
            if next_backward_chunk == 0:
                recv_next = False
            next_backward_chunk -= 1
        else:
            next_backward_chunk = chunk_id(backward_k + 1, False)
        if k == num_remaining - 1:
            recv_prev = False
        input_tensor, output_tensor_grad = comm.ring_send_forward_backward_recv_forward_backward(
            to_send, grad_to_send, recv_prev, recv_next, shapes)
        free(output_tensor, forward_chunk)
        if recv_prev:
            input_tensors[next_forward_chunk].append(input_tensor)
        if recv_next:
            output_tensor_grads[next_backward_chunk].append(output_tensor_grad)

    if not forward_only:
        if all_warmup:
            set_chunk(num_chunks - 1)
            output_tensor_grads[num_chunks - 1].append(comm.recv_backward(shapes))
        for k in range(num_remaining, total):
            input_tensor_grad = backward_helper(k)
            grad_to_send = None if pg.is_pipeline_first_stage() else input_tensor_grad
            next_backward_chunk = chunk_id(k + 1, False)
            recv_next = not (pg.is_pipeline_last_stage(ignore_virtual=True) and next_backward_chunk == num_chunks - 1)
            if k == total - 1:
                recv_next = False
            output_tensor_grad = comm.ring_send_backward_recv_backward(grad_to_send, recv_next, shapes)
            if recv_next:
                output_tensor_grads[next_backward_chunk].append(output_tensor_grad)
    grad_sync.enable()
    if finalize_model_grads_func is not None and not forward_only:
        finalize_model_grads_func(model)
    set_chunk(0)
    return forward_data_store
