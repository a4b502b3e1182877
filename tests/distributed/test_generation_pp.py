"""Text generation under pipeline (and tensor x pipeline) parallelism on gloo ranks equals the
one-process model token for token, with the KV cache and with recomputation."""
import torch

from megatron.core.models import GPTModel
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import TransformerConfig
from megatron.text_generation import SamplingParams, generate_tokens
from tests.distributed.equivalence import build_chunks, load_from_reference
from tests.distributed.spawn import run_ranks

VOCAB, MAX_LENGTH, EOD = 96, 32, 95
PROMPTS = [[3, 4, 5], [7], [9, 10, 11, 12, 13, 14], [20, 21]]


def tiny_config(**overrides):
    base = dict(num_layers=4, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def _generate(model, pg, use_cache, params=SamplingParams(greedy=True), seed=None):
    generator = torch.Generator().manual_seed(seed) if seed is not None else None
    return generate_tokens(model, PROMPTS, 10, params, EOD, MAX_LENGTH, vocab_size=VOCAB, use_cache=use_cache,
                           generator=generator, pg=pg)


def _layouts_worker(rank, world_size, layouts):
    from megatron.core import parallel_state

    results = {}
    for label, tp, pp, overrides in layouts:
        config = tiny_config(**overrides)
        torch.manual_seed(11)
        reference = GPTModel(config, VOCAB, MAX_LENGTH, parallel_output=False, pg=ProcessGroups()).eval()
        want = _generate(reference, ProcessGroups(), use_cache=True)
        pg = parallel_state.initialize_model_parallel(tp, pp)
        try:
            chunks = build_chunks(lambda pre, post: GPTModel(config, VOCAB, MAX_LENGTH, pre_process=pre,
                                                             post_process=post, parallel_output=False, pg=pg), pg)
            load_from_reference(chunks, reference.state_dict(), pg)
            stage = chunks[0].eval()
            sampled = _generate(stage, pg, True, SamplingParams(temperature=0.8, top_k=10), seed=rank % tp + 5)
            results[label] = {"want": want, "cached": _generate(stage, pg, True),
                              "recompute": _generate(stage, pg, False), "sampled": sampled}
        finally:
            parallel_state.destroy_model_parallel()
    return results


def _check(results, layouts):
    for label, *_ in layouts:
        want = results[0][label]["want"]
        assert len({str(w) for w in (r[label]["want"] for r in results)}) == 1
        assert len({tuple(row["tokens"]) for row in want}) > 1  # continuations depend on the prompt
        for rank, per_rank in enumerate(results):
            assert per_rank[label]["cached"] == want, (label, rank)
            assert per_rank[label]["recompute"] == want, (label, rank)
            # Only the last stage samples; its tokens reach every stage, so all ranks agree.
            assert per_rank[label]["sampled"] == results[0][label]["sampled"], (label, rank)


def test_pipeline_parallel_generation_equals_one_process():
    layouts = [("PP2", 1, 2, {}), ("TP2xPP2", 2, 2, {}), ("PP4", 1, 4, {}),
               ("PP2-unfused", 1, 2, {"attention_backend": "unfused"}),
               ("TP2xPP2-rope", 2, 2, {"position_embedding_type": "rope"})]
    _check(run_ranks(_layouts_worker, 4, layouts), layouts)
