"""MLPerf BERT metrics (``pretrain_bert.py --data-impl tfrecord``) at TP=2 equal those at TP=1.

The masked-LM accuracy takes an argmax over vocab-parallel logits: each TP rank holds a
contiguous slice of the (padded) vocabulary. The argmax must be the one-process argmax over the
real vocabulary: the global maximum across shards, the lowest id on ties (as ``torch.argmax``),
and never a row padded for tensor parallelism (TP=1 pads 100 ids to 104 rows, TP=2 to 112, so
those rows differ between layouts). Counts of correct predictions are compared exactly.
"""
import torch

from megatron.core.models import BertModel
from megatron.core.parallel_state import ProcessGroups
from megatron.core.transformer import TransformerConfig
from pretrain_bert import mlperf_loss_func, vocab_parallel_argmax
from tests.distributed.equivalence import load_from_reference
from tests.distributed.spawn import run_ranks

VOCAB = 100  # the tokenizer's ids
PADDED = {1: 104, 2: 112}  # --make-vocab-size-divisible-by 8 at TP=1 and TP=2
SHARD = PADDED[2] // 2  # first id of TP rank 1: 56
SEQ, BATCH = 16, 8
TIE_LOW, TIE_HIGH = 20, 20 + SHARD  # the same output row on both TP shards: a tie argmax breaks to 20
EMBEDDING = "language_model.embedding.word_embeddings.weight"
BIAS = "lm_head.bias"


def _config():
    return TransformerConfig(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0,
                             attention_dropout=0.0)


def _bert(vocab, pg):
    return BertModel(_config(), vocab, SEQ, num_tokentypes=2, add_binary_head=True, parallel_output=True, pg=pg)


def _batch():
    gen = torch.Generator().manual_seed(1234)
    tokens = torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen)
    types = (torch.arange(SEQ) >= SEQ // 2).long().expand(BATCH, SEQ).contiguous()
    padding = torch.ones(BATCH, SEQ, dtype=torch.long)
    padding[1, -4:] = 0
    loss_mask = (torch.rand(BATCH, SEQ, generator=gen) < 0.6).float() * padding
    return tokens, types, padding, loss_mask, gen


def _reference_weights():
    """The TP=1 model's weights, with two identical output rows (ids 20 and 76, one per TP=2 shard)
    that win at some positions, so the tie must break to the lower id."""
    torch.manual_seed(7)
    state = {k: v.clone() for k, v in _bert(PADDED[1], ProcessGroups()).state_dict().items()}
    state[EMBEDDING][TIE_HIGH] = state[EMBEDDING][TIE_LOW]
    state[BIAS][TIE_LOW] = state[BIAS][TIE_HIGH] = 0.25  # wins at about a third of the positions
    return state


def _tp2_weights(state):
    """The same model with TP=2's padding: rows 104..111 are new and, as padding rows may, score
    higher than every real token (a layout-dependent argmax unless padding is left out)."""
    state = dict(state)
    gen = torch.Generator().manual_seed(99)
    extra = PADDED[2] - PADDED[1]
    state[EMBEDDING] = torch.cat([state[EMBEDDING], torch.randn(extra, state[EMBEDDING].shape[1], generator=gen)])
    state[BIAS] = torch.cat([state[BIAS], torch.full((extra,), 1e4)])
    return state


def _metrics(model, batch, labels, next_sentence, vocab_size):
    tokens, types, padding, loss_mask, _ = batch
    with torch.no_grad():
        logits, nsp_logits = model(tokens, padding, tokentype_ids=types)
    _, stats = mlperf_loss_func(loss_mask, labels, next_sentence, (logits, nsp_logits), vocab_size=vocab_size)
    return logits, nsp_logits, stats


def _counts(stats, loss_mask):
    return (round(stats["mlm acc"].item() * loss_mask.sum().item()), round(stats["nsp acc"].item() * BATCH))


def _bert_worker(rank, world_size):
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel import model_parallel_manual_seed

    batch = _batch()
    tokens, types, padding, loss_mask, gen = batch
    state = _reference_weights()
    reference = _bert(PADDED[1], ProcessGroups())
    reference.load_state_dict(state)
    reference.eval()
    with torch.no_grad():
        full_logits, nsp_logits = reference(tokens, padding, tokentype_ids=types)
    # The definition: torch.argmax over the real vocabulary of the whole logits.
    predicted = full_logits[..., :VOCAB].argmax(-1)
    masked = loss_mask > 0
    # Labels: the prediction at every other masked position and wherever the tie token wins, else random.
    labels = torch.where(torch.arange(SEQ).expand(BATCH, SEQ) % 2 == 0, predicted,
                         torch.randint(0, VOCAB, (BATCH, SEQ), generator=gen))
    labels = torch.where(predicted == TIE_LOW, predicted, labels)
    labels = torch.where(masked, labels, torch.full_like(labels, -1))
    want_mlm = int(((predicted == labels) & masked).sum())
    nsp_predicted = nsp_logits.argmax(-1)
    next_sentence = torch.where(torch.arange(BATCH) < BATCH // 2, nsp_predicted, 1 - nsp_predicted)
    want_nsp = int((nsp_predicted == next_sentence).sum())

    # The batch exercises what it must: winners on TP=2's second shard, exact ties across shards.
    tie = masked & (predicted == TIE_LOW)
    assert bool(torch.equal(full_logits[..., TIE_LOW][tie], full_logits[..., TIE_HIGH][tie])) and tie.any()
    assert (masked & (predicted >= SHARD)).any() and (masked & (predicted < SHARD) & ~tie).any()
    assert 0 < want_mlm < int(masked.sum()) and 0 < want_nsp < BATCH

    report = {"want": (want_mlm, want_nsp), "tie_positions": int(tie.sum()),
              "second_shard_positions": int((masked & (predicted >= SHARD)).sum())}
    for tp in (1, 2):
        pg = parallel_state.initialize_model_parallel(tp)
        try:
            model = reference
            if tp == 2:
                model_parallel_manual_seed(7, pg.tp_rank)
                model = _bert(PADDED[2], pg)
                load_from_reference([model], _tp2_weights(state), pg)
                model.eval()
            logits, _, stats = _metrics(model, batch, labels, next_sentence, VOCAB)
            report[f"tp{tp}"] = _counts(stats, loss_mask)
            got = vocab_parallel_argmax(logits, pg, VOCAB)
            report[f"tp{tp}_same_predictions"] = bool(torch.equal(got[masked], predicted[masked]))
            # Without the real vocabulary size the padding rows would be predicted (at TP=2 everywhere).
            report[f"tp{tp}_with_padding"] = _counts(_metrics(model, batch, labels, next_sentence, None)[2],
                                                     loss_mask)
            if tp == 2:  # the tie is exact at TP=2 too (the two rows' logits are computed on different ranks)
                shards = [torch.empty_like(logits) for _ in range(tp)]
                torch.distributed.all_gather(shards, logits.contiguous(), group=pg.tp)
                report["tp2_tie_exact"] = bool(torch.equal(shards[0][..., TIE_LOW][tie], shards[1][..., TIE_LOW][tie]))
        finally:
            parallel_state.destroy_model_parallel()
    return report  # plain Python values: tensors would travel through shared memory the rank may free


def test_mlm_and_nsp_accuracy_tp2_equal_tp1():
    for rank, report in enumerate(run_ranks(_bert_worker, 2, timeout=120)):
        want = report["want"]
        assert report["tp1"] == want, (rank, report["tp1"], want)
        assert report["tp2"] == want, (rank, report["tp2"], want)
        assert report["tp1_same_predictions"] and report["tp2_same_predictions"], (rank, report)
        assert report["tie_positions"] > 0 and report["second_shard_positions"] > 0 and report["tp2_tie_exact"]
        # What the padding rows would have done: TP=2's new rows win everywhere, so the accuracy
        # would depend on the layout.
        assert report["tp2_with_padding"][0] == 0 and report["tp1_with_padding"][0] > 0


def _argmax_worker(rank, world_size):
    """Hand-made logits over TP=2's 112 rows (TP=1 sees the first 104): ties within and across
    shards, maxima on either side of the shard boundary, padding rows above or equal to the best."""
    from megatron.core import parallel_state

    rows = []

    def row(**values):
        logits = torch.zeros(PADDED[2])
        for index, value in values.items():
            logits[int(index[1:])] = value
        rows.append(logits)

    row(i70=5.0)  # the maximum on the second shard
    row(i60=5.0, i90=5.0)  # a tie within the second shard
    row(i10=5.0, i66=5.0)  # a tie across shards: the first shard's id wins
    row(i66=5.0, i10=4.0)  # the second shard wins outright
    row()  # every logit equal: id 0
    row(i55=3.0, i56=3.0)  # a tie across the shard boundary
    row(i56=3.0)
    row(i99=3.0, i100=9.0, i111=9.0)  # the last real id; padding rows on TP=1 and TP=2 score higher
    row(i3=2.0, i101=2.0, i108=2.0)  # padding rows tied with the best real id
    gen = torch.Generator().manual_seed(5)
    # Few distinct values: many ties, on both shards.
    full = torch.cat([torch.stack(rows), torch.randint(0, 4, (200, PADDED[2]), generator=gen).float()])
    full = full.view(-1, 19, PADDED[2])  # a batch dimension, as [b, s, v]
    want = full[..., :VOCAB].argmax(-1)

    results = {}
    for tp in (1, 2):
        pg = parallel_state.initialize_model_parallel(tp)
        try:
            for dtype in (torch.float32, torch.bfloat16, torch.float16):
                logits = full[..., :PADDED[tp]].to(dtype)
                shard = logits.shape[-1] // tp
                local = logits[..., pg.tp_rank * shard:(pg.tp_rank + 1) * shard]
                results[(tp, str(dtype))] = bool(torch.equal(vocab_parallel_argmax(local, pg, VOCAB), want))
        finally:
            parallel_state.destroy_model_parallel()
    return results


def test_vocab_parallel_argmax_matches_torch_argmax_on_ties_and_padding():
    for rank, results in enumerate(run_ranks(_argmax_worker, 2, timeout=120)):
        assert all(results.values()), (rank, results)
