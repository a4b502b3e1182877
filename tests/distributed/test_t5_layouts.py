"""T5 (encoder-decoder, cross-attention, shared embeddings) at TP/SP and split-pipeline layouts equals one process."""
import torch

from megatron.core.models import T5Model
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import check_layout
from tests.distributed.spawn import run_ranks

VOCAB, ENC_SEQ, DEC_SEQ, MBS, NUM_MICROBATCHES = 128, 16, 8, 2, 4


def tiny_config(**overrides):
    base = dict(num_layers=4, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def make_batches(seed=99):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(NUM_MICROBATCHES):
        enc = torch.randint(0, VOCAB, (MBS, ENC_SEQ), generator=gen)
        dec = torch.randint(0, VOCAB, (MBS, DEC_SEQ), generator=gen)
        labels = torch.randint(0, VOCAB, (MBS, DEC_SEQ), generator=gen)
        enc_pad = torch.ones(MBS, ENC_SEQ)
        enc_pad[1, -4:] = 0
        dec_pad = torch.ones(MBS, DEC_SEQ)
        dec_pad[0, -2:] = 0
        enc_mask = enc_pad[:, None, :] * enc_pad[:, :, None]
        causal = torch.tril(torch.ones(DEC_SEQ, DEC_SEQ))
        dec_mask = dec_pad[:, None, :] * dec_pad[:, :, None] * causal
        enc_dec_mask = enc_pad[:, None, :] * dec_pad[:, :, None]
        batches.append((enc, dec, labels, enc_mask, dec_mask, enc_dec_mask, dec_pad))
    return batches


def build_t5(config, pre_process, post_process, add_encoder, add_decoder, pg):
    return T5Model(config, VOCAB, ENC_SEQ, pre_process=pre_process, post_process=post_process,
                   add_encoder=add_encoder, add_decoder=add_decoder, pg=pg)


def t5_forward(model, batch):
    enc, dec, labels, enc_mask, dec_mask, enc_dec_mask, dec_pad = batch
    output = model(enc, dec, enc_mask, dec_mask, enc_dec_mask, lm_labels=labels)
    if not model.has_output_layer():
        return output
    return (output.float() * dec_pad).sum() / dec_pad.sum()


# (label, tp, pp, vpp, pipeline_model_parallel_split_rank), config overrides
DEFAULT_LAYOUTS = [
    (("TP2", 2, 1, None, None), {}),
    (("TP2-SP", 2, 1, None, None), {"sequence_parallel": True}),
    (("PP2-split1", 1, 2, None, 1), {}),
    (("TP2xPP2-split1", 2, 2, None, 1), {}),
    (("PP4-split2", 1, 4, None, 2), {}),
    (("TP4-SP", 4, 1, None, None), {"sequence_parallel": True}),
    (("TP2-hidden-dropout", 2, 1, None, None), {"hidden_dropout": 0.2}),
    (("TP2xPP2-split1-SP", 2, 2, None, 1), {"sequence_parallel": True}),
    (("PP4-split2-recompute", 1, 4, None, 2),
     {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1}),
]


def _worker(rank, world_size, layouts):
    batches = make_batches()
    return {layout[0]: check_layout(build_t5, t5_forward, tiny_config, overrides, layout, batches,
                                    ENC_SEQ, MBS, decoder_seq_length=DEC_SEQ)
            for layout, overrides in layouts}


def _assert(reports, layouts):
    for layout, _ in layouts:
        worst = max(max(r[layout[0]]) for r in reports)
        assert worst < 1e-5, (layout[0], worst)


def test_t5_layouts_match_single_process():
    _assert(run_ranks(_worker, 4, DEFAULT_LAYOUTS, timeout=300), DEFAULT_LAYOUTS)
