"""RETRO at TP2 and TP2 with sequence parallelism equals the one-process model: per-micro-batch
loss and every gradient (decoder, CCA, retrieval encoder, shared embedding). One spawn of 2 gloo
ranks runs every layout."""
import torch

from megatron.core.models.retro import RetroConfig, RetroModel
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import check_layout
from tests.distributed.spawn import run_ranks

VOCAB, CHUNK, K, CHUNKS, MBS, MICRO = 64, 4, 2, 3, 2, 2
SEQ = CHUNK * CHUNKS


def retro_config(**overrides):
    base = dict(num_layers=3, hidden_size=16, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0,
                position_embedding_type="rope")
    base.update(overrides)
    return TransformerConfig(**base)


def build_retro(config, pre_process, post_process, add_encoder, add_decoder, pg):
    retro = RetroConfig(chunk_size=CHUNK, num_neighbors=K, encoder_num_layers=2, encoder_cca_layers=(1,),
                        decoder_cca_layers=(1, 2), pad_id=0)
    return RetroModel(config, retro, VOCAB, SEQ, pre_process=pre_process, post_process=post_process, pg=pg)


def make_batches():
    gen = torch.Generator().manual_seed(11)
    batches = []
    for _ in range(MICRO):
        tokens = torch.randint(1, VOCAB, (MBS, SEQ + 1), generator=gen)
        retrieved = torch.randint(0, VOCAB, (MBS, CHUNKS, K, 2 * CHUNK), generator=gen)
        retrieved[0, 1, 1] = 0  # a blank neighbour (-1 in the KNN map)
        retrieved[1, 2, 0, CHUNK:] = 0  # a neighbour at the end of its document
        batches.append((tokens, retrieved))
    return batches


def retro_forward(model, batch):
    tokens, retrieved = batch
    return model(tokens[:, :-1], retrieved_ids=retrieved, labels=tokens[:, 1:])


UNIFORM = {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 2}
LAYOUTS = [
    (("TP2", 2, 1, None, None), {}),
    (("TP2-SP", 2, 1, None, None), {"sequence_parallel": True}),
    (("TP2-learned-positions", 2, 1, None, None), {"position_embedding_type": "learned_absolute"}),
    (("TP2-SP-recompute-uniform", 2, 1, None, None), {"sequence_parallel": True, **UNIFORM}),
    (("TP2-SP-recompute-selective", 2, 1, None, None), {"sequence_parallel": True, "recompute_granularity": "selective"}),
]


def _worker(rank, world_size):
    batches = make_batches()
    return {layout[0]: check_layout(build_retro, retro_forward, retro_config, overrides, layout, batches, SEQ, MBS)
            for layout, overrides in LAYOUTS}


def _pipeline_refused(rank, world_size):
    from megatron.core import parallel_state

    pg = parallel_state.initialize_model_parallel(1, 2)
    try:
        build_retro(retro_config(), pg.is_pipeline_first_stage(), pg.is_pipeline_last_stage(), True, True, pg)
    except ValueError as e:
        return str(e)
    finally:
        parallel_state.destroy_model_parallel()
    return None


def test_retro_tp_layouts_match_single_process():
    reports = run_ranks(_worker, 2, timeout=300)
    for layout, _ in LAYOUTS:
        label = layout[0]
        loss_err = max(r[label][0] for r in reports)
        grad_err = max(r[label][1] for r in reports)
        assert loss_err < 1e-5 and grad_err < 1e-5, (label, loss_err, grad_err)


def test_retro_refuses_pipeline_parallelism():
    messages = run_ranks(_pipeline_refused, 2, timeout=120)
    assert all(m and "pipeline parallelism" in m for m in messages)


def _generation_worker(rank, world_size):
    """Greedy retrieval-augmented generation at TP2 equals one process (same weights, same retriever)."""
    import numpy as np

    from megatron.core import parallel_state
    from megatron.core.parallel_state import ProcessGroups
    from megatron.text_generation.retro import generate_retro
    from megatron.text_generation.sampling import SamplingParams
    from tests.distributed.equivalence import load_from_reference

    def build(pg):
        retro = RetroConfig(chunk_size=CHUNK, num_neighbors=K, encoder_num_layers=2, encoder_cca_layers=(1,),
                            decoder_cca_layers=(1, 2), pad_id=0)
        return RetroModel(retro_config(), retro, VOCAB, SEQ, parallel_output=False, pg=pg).eval()

    def retriever(chunk):
        gen = np.random.default_rng(sum(int(t) for t in chunk))
        return gen.integers(1, VOCAB, size=(K, 2 * CHUNK))

    torch.manual_seed(7)
    reference = build(ProcessGroups())
    prompt = [5, 9, 3, 17, 2]
    want = generate_retro(reference, prompt, 6, SamplingParams(greedy=True), retriever, SEQ, vocab_size=VOCAB)
    pg = parallel_state.initialize_model_parallel(2, 1)
    try:
        model = build(pg)
        load_from_reference([model], reference.state_dict(), pg)
        got = generate_retro(model, prompt, 6, SamplingParams(greedy=True), retriever, SEQ, vocab_size=VOCAB, pg=pg)
    finally:
        parallel_state.destroy_model_parallel()
    return got, want


def test_retro_generation_at_tp2_matches_single_process():
    for got, want in run_ranks(_generation_worker, 2, timeout=120):
        assert len(want) == 11
        assert got == want
