"""Tensor-parallel building blocks on gloo ranks: mappings, cross entropy, RNG streams, initialisation, recompute."""
import torch
import torch.nn.functional as F

from megatron.core import parallel_state
from megatron.core.models import GPTModel
from megatron.core.parallel_state import ProcessGroups
from megatron.core.tensor_parallel import (
    gather_from_sequence_parallel_region,
    gather_from_tensor_model_parallel_region,
    get_rng_tracker,
    model_parallel_manual_seed,
    reduce_from_tensor_model_parallel_region,
    reduce_scatter_to_sequence_parallel_region,
    scatter_to_sequence_parallel_region,
    scatter_to_tensor_model_parallel_region,
    vocab_parallel_cross_entropy,
)
from megatron.core.tensor_parallel.mappings import all_gather_dim
from megatron.core.transformer import TransformerConfig
from tests.distributed.equivalence import gathered_grads
from tests.distributed.spawn import run_ranks


def _mappings_worker(rank, world_size):
    pg = parallel_state.initialize_model_parallel(world_size, 1)
    try:
        group, tp = pg.tp, pg.tensor_model_parallel_size
        full = torch.arange(4 * world_size * 6, dtype=torch.float32).view(4 * world_size, 6 // 3, 3)
        # scatter/gather along the last dimension are inverses, and their backward passes too.
        x = torch.arange(2 * 3 * 4 * tp, dtype=torch.float32).view(2, 3, 4 * tp).requires_grad_()
        part = scatter_to_tensor_model_parallel_region(x, group)
        assert torch.equal(part, x.detach().chunk(tp, dim=-1)[pg.tp_rank])
        back = gather_from_tensor_model_parallel_region(part, group)
        assert torch.equal(back, x.detach())
        back.sum().backward()
        assert torch.equal(x.grad, torch.ones_like(x))
        # reduce sums the ranks' contributions.
        y = torch.full((3,), float(rank + 1), requires_grad=True)
        total = reduce_from_tensor_model_parallel_region(y, group)
        assert torch.equal(total, torch.full((3,), float(sum(range(1, tp + 1)))))
        # sequence-parallel pair: all-gather dim 0 forward, reduce-scatter backward.
        seq = scatter_to_sequence_parallel_region(full, group)
        assert torch.equal(seq, full.chunk(tp, dim=0)[pg.tp_rank])
        z = seq.clone().requires_grad_()
        gathered = gather_from_sequence_parallel_region(z, group)
        assert torch.equal(gathered, full)
        (gathered * (rank + 1)).sum().backward()
        assert torch.equal(z.grad, torch.full_like(z, float(sum(range(1, tp + 1)))))
        w = (full * (rank + 1)).requires_grad_()
        scattered = reduce_scatter_to_sequence_parallel_region(w, group)
        assert torch.equal(scattered, (full * sum(range(1, tp + 1))).chunk(tp, dim=0)[pg.tp_rank])
        return True
    finally:
        parallel_state.destroy_model_parallel()


def test_mappings_forward_and_backward():
    assert all(run_ranks(_mappings_worker, 2))


def _cross_entropy_worker(rank, world_size):
    pg = parallel_state.initialize_model_parallel(world_size, 1)
    try:
        gen = torch.Generator().manual_seed(11)
        vocab = 32
        logits = torch.randn(5, 3, vocab, generator=gen) * 3
        target = torch.randint(0, vocab, (5, 3), generator=gen)
        errors = []
        for smoothing in (0.0, 0.1):
            full = logits.clone().requires_grad_()
            torch_smoothing = smoothing * vocab / (vocab - 1)
            want = F.cross_entropy(full.view(-1, vocab), target.view(-1), reduction="none",
                                   label_smoothing=torch_smoothing).view(5, 3)
            want.sum().backward()
            shard = logits.chunk(world_size, dim=-1)[pg.tp_rank].clone().requires_grad_()
            got = vocab_parallel_cross_entropy(shard, target, smoothing, pg)
            got.sum().backward()
            errors.append((got - want).abs().max().item())
            grad = all_gather_dim(shard.grad, 2, pg.tp)
            errors.append((grad - full.grad).abs().max().item())
        return max(errors)
    finally:
        parallel_state.destroy_model_parallel()


def test_vocab_parallel_cross_entropy_equals_torch_on_gathered_logits():
    for world_size in (2, 4):
        assert max(run_ranks(_cross_entropy_worker, world_size)) < 1e-5


def _rng_worker(rank, world_size):
    pg = parallel_state.initialize_model_parallel(world_size, 1)
    try:
        model_parallel_manual_seed(123, pg.tp_rank)
        outside = torch.rand(8)
        with get_rng_tracker().fork():
            inside = torch.rand(8)
        after = torch.rand(8)
        return outside.tolist(), inside.tolist(), after.tolist()
    finally:
        parallel_state.destroy_model_parallel()


def test_rng_tracker_streams_differ_per_tp_rank_only_inside_regions():
    (out0, in0, after0), (out1, in1, after1) = run_ranks(_rng_worker, 2)
    assert out0 == out1 and after0 == after1, "the default stream must be identical on every TP rank"
    assert in0 != in1, "the model-parallel stream must differ between TP ranks"
    torch.manual_seed(123)
    assert torch.rand(8).tolist() == out0
    # The forked stream does not consume numbers from the default one.
    torch.manual_seed(123)
    torch.rand(8)
    assert torch.rand(8).tolist() == after0


def _tiny(**overrides):
    base = dict(num_layers=2, hidden_size=32, num_attention_heads=4, hidden_dropout=0.0, attention_dropout=0.0)
    base.update(overrides)
    return TransformerConfig(**base)


def _init_worker(rank, world_size):
    """TP=N built from seed s holds, gathered, exactly the weights TP=1 draws from seed s."""
    torch.manual_seed(3)
    reference = GPTModel(_tiny(), 64, 16, pg=ProcessGroups())
    pg = parallel_state.initialize_model_parallel(world_size, 1)
    try:
        torch.manual_seed(3)
        model = GPTModel(_tiny(), 64, 16, pg=pg)
        for param in model.parameters():
            param.grad = param.detach().clone()  # gather the weights with the gradient helper
        weights = gathered_grads([model], pg)
        want = reference.state_dict()
        return all(torch.equal(weights[name], want[name]) for name in weights) and set(weights) == set(want)
    finally:
        parallel_state.destroy_model_parallel()


def test_tensor_parallel_initialisation_equals_single_process():
    assert all(run_ranks(_init_worker, 2))


def _recompute_dropout_worker(rank, world_size, sequence_parallel):
    """With dropout on, uniform/block/selective recompute replay the same masks as storing activations."""
    pg = parallel_state.initialize_model_parallel(world_size, 1)
    try:
        gen = torch.Generator().manual_seed(8)
        tokens = torch.randint(0, 64, (2, 17), generator=gen)
        results = {}
        variants = {
            "none": {},
            "uniform": {"recompute_granularity": "full", "recompute_method": "uniform", "recompute_num_layers": 1},
            "block": {"recompute_granularity": "full", "recompute_method": "block", "recompute_num_layers": 1},
            "selective": {"recompute_granularity": "selective"},
        }
        for name, overrides in variants.items():
            config = _tiny(hidden_dropout=0.2, attention_dropout=0.2, sequence_parallel=sequence_parallel, **overrides)
            torch.manual_seed(5)
            model = GPTModel(config, 64, 16, pg=pg)
            model_parallel_manual_seed(42, pg.tp_rank)
            loss = model(tokens[:, :-1], labels=tokens[:, 1:]).mean()
            loss.backward()
            results[name] = (loss.item(), {n: p.grad.clone() for n, p in model.named_parameters()})
        base_loss, base_grads = results["none"]
        worst = 0.0
        for name, (loss, grads) in results.items():
            assert loss == base_loss, f"{name}: loss {loss} != {base_loss}"
            for pname, grad in grads.items():
                err = (grad - base_grads[pname]).norm().item() / max(base_grads[pname].norm().item(), 1e-12)
                worst = max(worst, err)
                assert err < 1e-6, f"{name}: gradient of {pname} differs by {err:.2e}"
        # Dropout really was on: a different tracker seed changes the loss.
        config = _tiny(hidden_dropout=0.2, attention_dropout=0.2, sequence_parallel=sequence_parallel)
        torch.manual_seed(5)
        model = GPTModel(config, 64, 16, pg=pg)
        model_parallel_manual_seed(43, pg.tp_rank)
        assert model(tokens[:, :-1], labels=tokens[:, 1:]).mean().item() != base_loss
        return worst
    finally:
        parallel_state.destroy_model_parallel()


def test_recompute_with_dropout_matches_no_recompute():
    for sequence_parallel in (False, True):
        assert max(run_ranks(_recompute_dropout_worker, 2, sequence_parallel)) < 1e-6
