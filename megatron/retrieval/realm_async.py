"""Asynchronous index refresh: ``--index-refresh-ranks N`` ranks of the job only embed blocks.

A job of W ranks (``torchrun --nproc_per_node W``) splits into T = W - N **trainers** (global ranks
0..T-1, which train exactly as without refresh ranks: their torch.distributed world is the T
trainers) and N **refreshers** (ranks T..W-1, a world of their own). Everything goes through
torch.distributed on the launcher's store (``MASTER_ADDR:MASTER_PORT``), each world under its own
key prefix:

* trainer rank 0 and the refreshers share a gloo *bridge* group (bridge rank 0 = trainer 0,
  bridge rank 1 + i = refresher i);
* to start a refresh, trainer 0 writes the request (the iteration of the weights) to the store,
  broadcasts the context tower's weights over the bridge and posts a non-blocking receive for the
  embeddings, then goes on training on the current index;
* the refreshers load the weights, embed a contiguous share of the blocks each, all-gather them in
  their world, and refresher 0 sends the ``[blocks, dim]`` matrix to trainer 0;
* at the start of every training iteration trainer 0 tells all trainers (one small broadcast)
  whether the new embeddings are complete; when they are, it broadcasts them and every trainer
  switches to the new index at that same iteration. The next refresh starts once
  ``--index-refresh-interval`` iterations have passed since the previous one started and none is in
  flight, so a slow refresher makes the index staler (logged as ``index staleness``), never a hang;
* at the end trainer 0 waits for a refresh still in flight, then writes ``stop``.

The refreshers use tensor-parallel size 1 and the trainers must too (the weights sent are one
rank's whole tower). ``MEGATRON_REALM_REFRESH_DELAY_S`` makes every refresher sleep that many
seconds before each refresh: a slow refresher on demand, for tests.
"""
import datetime
import os
import time
from typing import Optional

import numpy as np
import torch
import torch.distributed as dist

REFRESH_DELAY_ENV = "MEGATRON_REALM_REFRESH_DELAY_S"
_STORE_PREFIX = "megatron_realm_refresh"
_POLL_SECONDS = 0.05


class AsyncRefreshError(ValueError):
    """A job layout that cannot run asynchronous refresh; the message names the flag."""


def split_job(num_refresh_ranks: int) -> Optional[int]:
    """Decide this process's role from the launcher's RANK/WORLD_SIZE before Megatron starts.

    Trainers see WORLD_SIZE = T afterwards (their world); refreshers get their own world
    (RANK - T of N), initialised here. Returns None for a trainer, the refresher index otherwise."""
    world, rank = int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))
    trainers = world - num_refresh_ranks
    if trainers < 1:
        raise AsyncRefreshError(f"--index-refresh-ranks {num_refresh_ranks} leaves no trainer in a job of "
                                f"{world} rank(s)")
    os.environ["MEGATRON_REALM_TRAINERS"] = str(trainers)
    if rank < trainers:
        os.environ["WORLD_SIZE"] = str(trainers)
        return None
    index = rank - trainers
    os.environ["RANK"], os.environ["WORLD_SIZE"] = str(index), str(num_refresh_ranks)
    store = dist.PrefixStore(f"{_STORE_PREFIX}/refreshers", _client_store())
    dist.init_process_group("gloo", store=store, rank=index, world_size=num_refresh_ranks,
                            timeout=datetime.timedelta(minutes=30))
    return index


def _client_store() -> dist.Store:
    return dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                         timeout=datetime.timedelta(minutes=30), wait_for_workers=False)


def _bridge(store: dist.Store, bridge_rank: int, num_refresh_ranks: int) -> dist.ProcessGroupGloo:
    return dist.ProcessGroupGloo(dist.PrefixStore(f"{_STORE_PREFIX}/bridge", store), bridge_rank,
                                 num_refresh_ranks + 1, datetime.timedelta(minutes=30))


def tower_vector(tower: torch.nn.Module) -> torch.Tensor:
    """The tower's state (parameters and buffers, by name) as one float32 vector."""
    state = tower.state_dict()
    return torch.cat([state[name].detach().float().reshape(-1).cpu() for name in sorted(state)])


def load_tower_vector(tower: torch.nn.Module, vector: torch.Tensor) -> None:
    state = tower.state_dict()
    offset = 0
    with torch.no_grad():
        for name in sorted(state):
            count = state[name].numel()
            state[name].copy_(vector[offset:offset + count].view_as(state[name]))
            offset += count
    if offset != vector.numel():
        raise AsyncRefreshError(f"the weights sent hold {vector.numel()} values, the refresher's tower {offset}")


class AsyncRefreshClient:
    """The trainers' side (module docstring). Every trainer calls ``poll`` once per iteration."""

    def __init__(self, num_refresh_ranks: int, num_blocks: int, dim: int, is_global_rank_0: bool):
        self.num_refresh_ranks = num_refresh_ranks
        self.num_blocks, self.dim = num_blocks, dim
        self.is_root = is_global_rank_0
        self.store = _client_store() if self.is_root else None
        self.bridge = _bridge(self.store, 0, num_refresh_ranks) if self.is_root else None
        self.requests = 0
        self.in_flight: Optional[int] = None  # iteration of the weights being embedded
        self.last_request: Optional[int] = None
        self._recv_work = None
        self._buffer: Optional[torch.Tensor] = None

    def request(self, tower: torch.nn.Module, iteration: int) -> None:
        """Start a refresh with ``tower``'s current weights (every trainer calls it; rank 0 acts)."""
        self.last_request = iteration
        self.in_flight = iteration
        if not self.is_root:
            return
        weights = tower_vector(tower)
        self.store.set(f"{_STORE_PREFIX}/request/{self.requests}", f"{iteration} {weights.numel()}")
        self.bridge.broadcast([weights], dist.BroadcastOptions()).wait()
        self._buffer = torch.empty((self.num_blocks, self.dim), dtype=torch.float32)
        self._recv_work = self.bridge.recv([self._buffer], 1, self.requests)
        self.requests += 1

    def poll(self, device: torch.device) -> Optional[np.ndarray]:
        """The new embeddings when the refresh in flight completed (the same iteration on every trainer)."""
        if self.in_flight is None:
            return None
        # Gloo marks a receive complete only in wait(): refresher 0 writes "done" once its send went out.
        arrived = self.is_root and self.store.check([f"{_STORE_PREFIX}/done/{self.requests - 1}"])
        done = torch.tensor([1 if arrived else 0], device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(done, src=0)
        if not int(done.item()):
            return None
        if self.is_root:
            self._recv_work.wait()
            embeddings = self._buffer.to(device)
        else:
            embeddings = torch.empty((self.num_blocks, self.dim), dtype=torch.float32, device=device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.broadcast(embeddings, src=0)
        self.in_flight = None
        self._recv_work = self._buffer = None
        return embeddings.cpu().numpy()

    def shutdown(self) -> None:
        """Wait for a refresh in flight, then tell the refreshers to stop (trainer rank 0)."""
        if not self.is_root:
            return
        if self._recv_work is not None:
            self._recv_work.wait()
        self.store.set(f"{_STORE_PREFIX}/stop", "1")


def run_refresher(args, index: int, corpus, tower: torch.nn.Module, embed_fn, log=print) -> int:
    """The refresher loop; returns the number of refreshes served."""
    from megatron.retrieval.realm_index import embed_corpus_sync

    store = _client_store()
    bridge = _bridge(store, 1 + index, args.index_refresh_ranks)
    delay = float(os.environ.get(REFRESH_DELAY_ENV, "0") or 0)
    served = 0
    stop_key = f"{_STORE_PREFIX}/stop"
    while True:
        request_key = f"{_STORE_PREFIX}/request/{served}"
        while not store.check([request_key]):
            if store.check([stop_key]):
                if index == 0:
                    log(f"> refresher: stopping after {served} refresh(es)")
                return served
            time.sleep(_POLL_SECONDS)
        iteration, size = (int(v) for v in store.get(request_key).decode().split())
        weights = torch.empty(size, dtype=torch.float32)
        bridge.broadcast([weights], dist.BroadcastOptions()).wait()
        load_tower_vector(tower, weights)
        if delay:
            time.sleep(delay)
        start = time.time()
        embeddings = embed_corpus_sync(embed_fn, corpus, index, args.index_refresh_ranks,
                                       None if args.index_refresh_ranks == 1 else dist.group.WORLD,
                                       args.indexer_batch_size, torch.device("cpu"))
        if index == 0:
            bridge.send([torch.from_numpy(np.ascontiguousarray(embeddings))], 0, served).wait()
            store.set(f"{_STORE_PREFIX}/done/{served}", "1")
            log(f"> refresher: {len(embeddings)} blocks embedded with the weights of iteration {iteration} in "
                f"{time.time() - start:.1f} s on {args.index_refresh_ranks} refresh rank(s)")
        served += 1
