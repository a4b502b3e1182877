"""Asynchronous REALM index refresh over torch.distributed: a job of two trainers and one refresh rank,
launched as torchrun does (the launcher's store, RANK/WORLD_SIZE per process). The refresh rank is
slow; the trainers keep training, switch to each finished index at the same iteration, and receive
exactly the embeddings of the weights they sent; the job ends without a hang."""
import argparse
import datetime
import os
import time

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from spawn import find_free_port

ITERATIONS = 24
INTERVAL = 2


class FakeCorpus:
    def __init__(self, num_blocks=40):
        self.num_blocks = num_blocks

    def __len__(self):
        return self.num_blocks

    def __getitem__(self, p):
        return {"tokens": np.array([1, 5 + p, 2, 0]), "pad_mask": np.array([1, 1, 1, 0])}


def _tower():
    return torch.nn.Linear(4, 3, bias=False)


def _weights_at(iteration: int) -> torch.Tensor:
    # "Training": the weights change every iteration, deterministically.
    return torch.arange(12, dtype=torch.float32).view(3, 4) * 0.01 + iteration * 0.1


def _embed(tower):
    def embed(tokens, pad_mask):
        return tower(tokens.float())
    return embed


def _process(rank, world, port, delay, results):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      TORCHELASTIC_USE_AGENT_STORE="True")
    os.environ["MEGATRON_REALM_REFRESH_DELAY_S"] = str(delay)
    torch.set_num_threads(1)
    from megatron.retrieval.realm_async import AsyncRefreshClient, run_refresher, split_job
    from megatron.retrieval.realm_index import fp16_rounded

    try:
        corpus = FakeCorpus()
        refresher = split_job(1)
        if refresher is not None:
            args = argparse.Namespace(index_refresh_ranks=1, indexer_batch_size=16)
            tower = _tower()
            served = run_refresher(args, refresher, corpus, tower, _embed(tower), log=lambda _: None)
            results.put((rank, "refresher", served))
            return
        dist.init_process_group("gloo", rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]),
                                timeout=datetime.timedelta(seconds=60))
        client = AsyncRefreshClient(1, len(corpus), 3, dist.get_rank() == 0)
        tower = _tower()
        switches, wrong, last = [], 0, 0
        iteration = 0
        # At least ITERATIONS steps, and on until a refreshed index arrived (a loaded machine may be slow);
        # every trainer sees the same switches, so all stop together.
        while iteration < ITERATIONS or (not switches and iteration < 50 * ITERATIONS):
            iteration += 1
            with torch.no_grad():
                tower.weight.copy_(_weights_at(iteration))
            requested_at = client.in_flight
            embeddings = client.poll(torch.device("cpu"))
            if embeddings is not None:
                tokens = torch.from_numpy(np.stack([corpus[p]["tokens"] for p in range(len(corpus))]))
                want = fp16_rounded((tokens.float() @ _weights_at(requested_at).t()).numpy())
                wrong += int(not np.array_equal(embeddings, want))
                switches.append((iteration, requested_at))
            if client.in_flight is None and iteration - last >= INTERVAL:
                client.request(tower, iteration)
                last = iteration
            time.sleep(0.05)  # a training step
        client.shutdown()
        dist.destroy_process_group()
        results.put((rank, switches, wrong))
    except BaseException as error:  # noqa: BLE001 - reported to the parent
        results.put((rank, "error", repr(error)))


@pytest.mark.parametrize("delay", [0.0, 0.6])
def test_trainers_switch_together_to_the_embeddings_of_the_weights_sent(delay):
    port = find_free_port()
    # The launcher's store, as torchrun's agent keeps it; every process is a client.
    store = dist.TCPStore("127.0.0.1", port, is_master=True, timeout=datetime.timedelta(seconds=60),
                          wait_for_workers=False)
    ctx = mp.get_context("fork")
    results = ctx.Queue()
    processes = [ctx.Process(target=_process, args=(rank, 3, port, delay, results)) for rank in range(3)]
    for process in processes:
        process.start()
    deadline = time.time() + 120
    for process in processes:
        process.join(max(1.0, deadline - time.time()))
    hung = [p.pid for p in processes if p.is_alive()]
    for process in processes:
        if process.is_alive():
            process.kill()
    assert not hung, "a rank hung"
    by_rank = {}
    while not results.empty():
        rank, *rest = results.get()
        by_rank[rank] = rest
    assert sorted(by_rank) == [0, 1, 2], by_rank
    assert by_rank[2][0] == "refresher"
    switches0, wrong0 = by_rank[0]
    switches1, wrong1 = by_rank[1]
    assert switches0 == switches1 and wrong0 == wrong1 == 0
    assert switches0, "no refreshed index arrived"
    served = by_rank[2][1]
    assert served >= len(switches0)
    for at, built in switches0:
        assert built < at  # trained on the previous index meanwhile
    if delay:
        # A slow refresh rank: fewer refreshes than intervals, and staler indexes; training went on.
        assert len(switches0) < ITERATIONS // INTERVAL
        assert max(at - built for at, built in switches0) > INTERVAL
    del store
