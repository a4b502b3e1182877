"""Point-to-point exchange of activations and gradients between adjacent pipeline stages.

Every exchange is one ``batch_isend_irecv`` (supported by NCCL and gloo). Shapes are known in
advance (from the sequence length, micro-batch size and hidden size), so receivers allocate
their buffers without a handshake. Activations travel with tag ``ACTIVATION_TAG + i`` and
gradients with ``GRADIENT_TAG + i``: with two stages the previous and the next rank are the
same peer, and the tags (gloo) and a fixed posting order, activations before gradients on both
sides (NCCL, which ignores tags), keep the two streams from being confused.

Functions take and return lists of tensors, because an encoder-decoder stage sends two
(decoder hidden states and the encoder output). ``None`` means nothing to send or receive.
"""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.distributed as dist

from megatron.core.parallel_state import ProcessGroups

ACTIVATION_TAG = 0
GRADIENT_TAG = 100

Shapes = Sequence[Tuple[int, ...]]
Tensors = Optional[List[Optional[torch.Tensor]]]


def communicate(*, tensors_send_next: Tensors, tensors_send_prev: Tensors,
                recv_prev_shapes: Optional[Shapes], recv_next_shapes: Optional[Shapes],
                dtype: torch.dtype, device, pg: ProcessGroups):
    """Post every send and receive of one step around the pipeline ring and wait for them.

    Returns ``(received from the previous stage, received from the next stage)``; activations
    received from the previous stage require grad, so backward can produce their gradient.
    """
    recv_prev = None
    recv_next = None
    if recv_prev_shapes is not None:
        recv_prev = [torch.empty(shape, dtype=dtype, device=device, requires_grad=True) for shape in recv_prev_shapes]
    if recv_next_shapes is not None:
        recv_next = [torch.empty(shape, dtype=dtype, device=device) for shape in recv_next_shapes]
    ops = []
    prev_rank, next_rank, group = pg.prev_pipeline_rank, pg.next_pipeline_rank, pg.pp
    for i, tensor in enumerate(tensors_send_next or []):
        if tensor is not None:
            ops.append(dist.P2POp(dist.isend, tensor.contiguous(), next_rank, group, ACTIVATION_TAG + i))
    for i, tensor in enumerate(recv_prev or []):
        ops.append(dist.P2POp(dist.irecv, tensor, prev_rank, group, ACTIVATION_TAG + i))
    for i, tensor in enumerate(tensors_send_prev or []):
        if tensor is not None:
            ops.append(dist.P2POp(dist.isend, tensor.contiguous(), prev_rank, group, GRADIENT_TAG + i))
    for i, tensor in enumerate(recv_next or []):
        ops.append(dist.P2POp(dist.irecv, tensor, next_rank, group, GRADIENT_TAG + i))
    if ops:
        for request in dist.batch_isend_irecv(ops):
            request.wait()
    return recv_prev, recv_next


class P2PCommunicator:
    """The schedules' view of ``communicate``: fixed dtype/device/groups, stage-aware helpers.

    The plain helpers (``recv_forward`` ...) do nothing on the first/last stage; the
    interleaved schedule uses ``ring`` helpers, where the last stage feeds the first.
    """

    def __init__(self, pg: ProcessGroups, dtype: torch.dtype, device):
        self.pg = pg
        self.dtype = dtype
        self.device = device

    def _run(self, send_next=None, send_prev=None, recv_prev_shapes=None, recv_next_shapes=None):
        return communicate(tensors_send_next=send_next, tensors_send_prev=send_prev,
                           recv_prev_shapes=recv_prev_shapes, recv_next_shapes=recv_next_shapes,
                           dtype=self.dtype, device=self.device, pg=self.pg)

    def _first(self):
        return self.pg.is_pipeline_first_stage(ignore_virtual=True)

    def _last(self):
        return self.pg.is_pipeline_last_stage(ignore_virtual=True)

    def recv_forward(self, shapes: Shapes) -> Tensors:
        if self._first():
            return None
        return self._run(recv_prev_shapes=shapes)[0]

    def recv_backward(self, shapes: Shapes) -> Tensors:
        if self._last():
            return None
        return self._run(recv_next_shapes=shapes)[1]

    def send_forward(self, outputs: Tensors) -> None:
        if not self._last():
            self._run(send_next=outputs)

    def send_backward(self, input_grads: Tensors) -> None:
        if not self._first():
            self._run(send_prev=input_grads)

    def send_forward_recv_backward(self, outputs: Tensors, shapes: Shapes) -> Tensors:
        if self._last():
            return None
        return self._run(send_next=outputs, recv_next_shapes=shapes)[1]

    def send_backward_recv_forward(self, input_grads: Tensors, shapes: Shapes) -> Tensors:
        if self._first():
            return None
        return self._run(send_prev=input_grads, recv_prev_shapes=shapes)[0]

    # -- ring exchanges for the interleaved schedule -------------------------------------
    def ring_send_forward_recv_forward(self, outputs: Tensors, recv_prev: bool, shapes: Shapes) -> Tensors:
        return self._run(send_next=outputs, recv_prev_shapes=shapes if recv_prev else None)[0]

    def ring_send_backward_recv_backward(self, input_grads: Tensors, recv_next: bool, shapes: Shapes) -> Tensors:
        return self._run(send_prev=input_grads, recv_next_shapes=shapes if recv_next else None)[1]

    def ring_send_forward_backward_recv_forward_backward(self, outputs: Tensors, input_grads: Tensors,
                                                        recv_prev: bool, recv_next: bool, shapes: Shapes):
        return self._run(send_next=outputs, send_prev=input_grads,
                         recv_prev_shapes=shapes if recv_prev else None,
                         recv_next_shapes=shapes if recv_next else None)
