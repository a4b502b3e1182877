"""The ICT biencoder (separate and shared towers, with a projection) at TP/SP layouts equals one process."""
import torch
import torch.nn.functional as F

from megatron.core.models import BiEncoderModel
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import check_layout
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS, NUM_MICROBATCHES, PROJECTION = 128, 16, 4, 2, 16


def tiny_config(**overrides):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def make_batches(seed=5):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(NUM_MICROBATCHES):
        query = torch.randint(0, VOCAB, (MBS, SEQ), generator=gen)
        context = torch.randint(0, VOCAB, (MBS, SEQ), generator=gen)
        query_mask = torch.ones(MBS, SEQ)
        query_mask[:, SEQ // 2:] = 0  # queries are short, contexts full
        context_mask = torch.ones(MBS, SEQ)
        batches.append((query, query_mask, context, context_mask))
    return batches


def build_separate(config, pre_process, post_process, add_encoder, add_decoder, pg):
    return BiEncoderModel(config, VOCAB, SEQ, projection_dim=PROJECTION, pg=pg)


def build_shared(config, pre_process, post_process, add_encoder, add_decoder, pg):
    return BiEncoderModel(config, VOCAB, SEQ, projection_dim=0, shared_query_context_model=True, pg=pg)


def ict_forward(model, batch):
    query, query_mask, context, context_mask = batch
    zeros = torch.zeros_like(query)
    query_logits, context_logits = model(query, query_mask, zeros, context, context_mask, zeros)
    # In-batch softmax retrieval loss: each query's positive is its own context.
    scores = query_logits.float() @ context_logits.float().t()
    return F.cross_entropy(scores, torch.arange(scores.shape[0]))


DEFAULT_LAYOUTS = [
    (("TP2-separate", 2, 1, None, None), {}, build_separate),
    (("TP2-SP-separate", 2, 1, None, None), {"sequence_parallel": True}, build_separate),
    (("TP2-shared", 2, 1, None, None), {}, build_shared),
    (("TP4-SP-separate", 4, 1, None, None), {"sequence_parallel": True}, build_separate),
]


def _worker(rank, world_size, layouts):
    batches = make_batches()
    return {layout[0]: check_layout(build, ict_forward, tiny_config, overrides, layout, batches, SEQ, MBS)
            for layout, overrides, build in layouts}


def _assert(reports, layouts):
    for layout, _, _ in layouts:
        worst = max(max(r[layout[0]]) for r in reports)
        assert worst < 1e-5, (layout[0], worst)


def test_biencoder_layouts_match_single_process():
    _assert(run_ranks(_worker, 4, DEFAULT_LAYOUTS, timeout=300), DEFAULT_LAYOUTS)


def _pipeline_refused(rank, world_size):
    from megatron.core import parallel_state

    pg = parallel_state.initialize_model_parallel(1, 2)
    try:
        BiEncoderModel(tiny_config(), VOCAB, SEQ, pg=pg)
    except ValueError as err:
        return str(err)
    finally:
        parallel_state.destroy_model_parallel()
    return None


def test_biencoder_refuses_pipeline_parallelism():
    messages = run_ranks(_pipeline_refused, 2)
    assert all(m is not None and "pipeline_model_parallel_size 2" in m for m in messages), messages
