"""BERT (padding mask, token types, MLM + NSP heads) at TP/SP/PP/VPP layouts equals the one-process model."""
import torch
import torch.nn.functional as F

from megatron.core.models import BertModel
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import check_layout
from tests.distributed.spawn import run_ranks

VOCAB, SEQ, MBS, NUM_MICROBATCHES = 128, 16, 2, 4


def tiny_config(**overrides):
    base = dict(num_layers=4, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def make_batches(seed=4321):
    gen = torch.Generator().manual_seed(seed)
    batches = []
    for _ in range(NUM_MICROBATCHES):
        tokens = torch.randint(0, VOCAB, (MBS, SEQ), generator=gen)
        types = (torch.arange(SEQ) >= SEQ // 2).long().expand(MBS, SEQ).contiguous()
        padding = torch.ones(MBS, SEQ, dtype=torch.long)
        padding[0, -3:] = 0  # the first sample is padded, so the padding mask matters
        labels = torch.randint(0, VOCAB, (MBS, SEQ), generator=gen)
        loss_mask = (torch.rand(MBS, SEQ, generator=gen) < 0.3).float() * padding
        nsp = torch.randint(0, 2, (MBS,), generator=gen)
        batches.append((tokens, types, padding, labels, loss_mask, nsp))
    return batches


def build_bert(config, pre_process, post_process, add_encoder, add_decoder, pg, add_binary_head=True):
    return BertModel(config, VOCAB, SEQ, add_binary_head=add_binary_head, pre_process=pre_process,
                     post_process=post_process, pg=pg)


def bert_forward(model, batch):
    tokens, types, padding, labels, loss_mask, nsp = batch
    output = model(tokens, padding, tokentype_ids=types, lm_labels=labels)
    if not isinstance(output, tuple):
        return output  # hidden states of an intermediate stage
    lm_loss, binary_logits = output
    loss = (lm_loss.float() * loss_mask).sum() / loss_mask.sum().clamp(min=1)
    if binary_logits is not None:
        loss = loss + F.cross_entropy(binary_logits.float(), nsp)
    return loss


def build_bert_no_binary_head(config, pre_process, post_process, add_encoder, add_decoder, pg):
    return build_bert(config, pre_process, post_process, add_encoder, add_decoder, pg, add_binary_head=False)


DEFAULT_LAYOUTS = [
    (("TP2", 2, 1, None, None), {}, build_bert),
    (("TP2-SP", 2, 1, None, None), {"sequence_parallel": True}, build_bert),
    (("PP2", 1, 2, None, None), {}, build_bert),
    (("VPP2x2", 1, 2, 2, None), {}, build_bert),
    (("TP2xPP2-SP", 2, 2, None, None), {"sequence_parallel": True}, build_bert),
    (("TP2-unfused-no-binary-head", 2, 1, None, None), {"attention_backend": "unfused"}, build_bert_no_binary_head),
    (("TP2-recompute-block", 2, 1, None, None),
     {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 2}, build_bert),
    (("TP4-SP", 4, 1, None, None), {"sequence_parallel": True}, build_bert),
    (("TP4-hidden-dropout", 4, 1, None, None), {"hidden_dropout": 0.2}, build_bert),
    (("PP4", 1, 4, None, None), {}, build_bert),
    (("TP2xPP2", 2, 2, None, None), {}, build_bert),
    # muP (issue 20): LM-head and binary-head readout multipliers, pooler, 1/d_head attention.
    (("TP2-SP-mup", 2, 1, None, None), {"sequence_parallel": True, "use_mup": True, "mup_base_hidden_size": 16},
     build_bert),
]


def _worker(rank, world_size, layouts):
    batches = make_batches()
    return {layout[0]: check_layout(build, bert_forward, tiny_config, overrides, layout, batches, SEQ, MBS)
            for layout, overrides, build in layouts}


def _assert(reports, layouts):
    for layout, _, _ in layouts:
        worst = max(max(r[layout[0]]) for r in reports)
        assert worst < 1e-5, (layout[0], worst)


def test_bert_layouts_match_single_process():
    _assert(run_ranks(_worker, 4, DEFAULT_LAYOUTS, timeout=300), DEFAULT_LAYOUTS)
