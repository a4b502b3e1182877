"""Pipeline mechanics on gloo ranks: tied-embedding initialisation, gradient-sync deferral, encoder-decoder groups."""
import contextlib

import torch

from megatron.core import parallel_state
from megatron.core.models import GPTModel, T5Model
from megatron.core.pipeline_parallel import get_forward_backward_func
from megatron.core.tensor_parallel.mappings import all_gather_dim
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import build_chunks
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS = 64, 8, 2


def tiny(**overrides):
    base = dict(num_layers=4, hidden_size=16, num_attention_heads=2, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def _tied_init_worker(rank, world_size):
    """Every copy of a shared embedding starts equal to the first stage's, whatever each rank drew."""
    pg = parallel_state.initialize_model_parallel(1, world_size)
    try:
        torch.manual_seed(100 + rank)  # different draws per rank: only the broadcast can make them equal
        model = GPTModel(tiny(), VOCAB, SEQ, pre_process=pg.is_pipeline_first_stage(),
                         post_process=pg.is_pipeline_last_stage(), pg=pg)
        weight = model.word_embeddings_weight()
        copies = None
        if weight is not None:
            gathered = [torch.empty_like(weight) for _ in pg.embd_ranks]
            torch.distributed.all_gather(gathered, weight.detach(), group=pg.embd)
            copies = all(torch.equal(g, gathered[0]) for g in gathered) and bool(weight.abs().sum() > 0)
            assert getattr(weight, "shared", False)
        return copies
    finally:
        parallel_state.destroy_model_parallel()


def test_tied_embedding_copies_start_equal():
    results = run_ranks(_tied_init_worker, 4)
    assert results[0] is True and results[3] is True and results[1] is None and results[2] is None


def _t5_split_init_worker(rank, world_size):
    pg = parallel_state.initialize_model_parallel(1, 4, None, 2)
    try:
        torch.manual_seed(10 + rank)
        split = 2
        model = T5Model(tiny(), VOCAB, SEQ, pre_process=rank in (0, split), post_process=rank in (split - 1, 3),
                        add_encoder=rank < split, add_decoder=rank >= split, pg=pg)
        out = {"embd": pg.embd_ranks, "pos": pg.pos_embd_ranks}
        weight = model.word_embeddings_weight()
        if weight is not None:
            gathered = [torch.empty_like(weight) for _ in pg.embd_ranks]
            torch.distributed.all_gather(gathered, weight.detach(), group=pg.embd)
            out["word_equal"] = all(torch.equal(g, gathered[0]) for g in gathered)
        if rank in pg.pos_embd_ranks:
            position = model.language_model.embedding.position_embeddings.weight.detach()
            gathered = [torch.empty_like(position) for _ in pg.pos_embd_ranks]
            torch.distributed.all_gather(gathered, position, group=pg.pos_embd)
            out["pos_equal"] = all(torch.equal(g, gathered[0]) for g in gathered)
        return out
    finally:
        parallel_state.destroy_model_parallel()


def test_t5_split_shares_word_and_position_embeddings():
    results = run_ranks(_t5_split_init_worker, 4)
    assert results[0]["embd"] == [0, 2, 3] and results[0]["pos"] == [0, 2]
    assert all(results[r]["word_equal"] for r in (0, 2, 3)) and "word_equal" not in results[1]
    assert results[0]["pos_equal"] and results[2]["pos_equal"]


def _grad_sync_worker(rank, world_size, virtual):
    """Gradient sync stays off until the step's last backward (the one a DDP wrapper must sync in)."""
    pg = parallel_state.initialize_model_parallel(1, 2, virtual)
    try:
        torch.manual_seed(0)
        config = tiny()
        chunks = build_chunks(lambda pre, post: GPTModel(config, VOCAB, SEQ, pre_process=pre, post_process=post,
                                                         pg=pg), pg)
        state = {"sync": True, "entered": 0}

        @contextlib.contextmanager
        def no_sync():
            state["entered"] += 1
            state["sync"] = False
            try:
                yield
            finally:
                state["sync"] = True

        log = []
        first_param = next(chunks[0].parameters())
        first_param.register_hook(lambda grad: log.append(state["sync"]))
        gen = torch.Generator().manual_seed(1)
        batches = [torch.randint(0, VOCAB, (MBS, SEQ + 1), generator=gen) for _ in range(4)]

        def forward_step(data_iterator, model):
            batch = next(data_iterator)
            return model(batch[:, :-1], labels=batch[:, 1:]), lambda out: (out.mean(), {})

        iterators = [iter(batches) for _ in chunks]
        get_forward_backward_func(pg)(
            forward_step_func=forward_step, data_iterator=iterators if virtual else iterators[0],
            model=chunks if virtual else chunks[0], num_microbatches=4, seq_length=SEQ, micro_batch_size=MBS,
            config=config, pg=pg, no_sync_func=no_sync)
        return log, state["entered"]
    finally:
        parallel_state.destroy_model_parallel()


def test_gradient_sync_is_deferred_to_the_last_backward():
    for virtual in (None, 2):
        for log, entered in run_ranks(_grad_sync_worker, 2, virtual):
            assert entered == 1
            assert log == [False, False, False, True], (virtual, log)


def _sequence_parallel_shapes_worker(rank, world_size):
    """Under sequence parallelism stages exchange [s / tp, b, h] slices, and the whole sequence is intact."""
    pg = parallel_state.initialize_model_parallel(2, 2)
    try:
        torch.manual_seed(0)
        config = tiny(sequence_parallel=True)
        model = GPTModel(config, VOCAB, SEQ, pre_process=pg.is_pipeline_first_stage(),
                         post_process=pg.is_pipeline_last_stage(), pg=pg)
        tokens = torch.randint(0, VOCAB, (MBS, SEQ), generator=torch.Generator().manual_seed(2))
        if pg.is_pipeline_first_stage():
            hidden = model(tokens)
            full = all_gather_dim(hidden.detach(), 0, pg.tp)
            return tuple(hidden.shape), tuple(full.shape)
        return None
    finally:
        parallel_state.destroy_model_parallel()


def test_sequence_parallel_stage_output_is_a_sequence_slice():
    results = run_ranks(_sequence_parallel_shapes_worker, 4)
    assert results[0] == ((SEQ // 2, MBS, 16), (SEQ, MBS, 16))
