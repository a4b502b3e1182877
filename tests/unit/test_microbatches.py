"""Batch arithmetic: constant micro-batch counts and the ramp-up schedule."""
import pytest

from megatron.microbatches import (
    ConstantNumMicroBatches,
    RampupBatchsizeNumMicroBatches,
    build_num_microbatches_calculator,
)


def test_constant():
    calculator = ConstantNumMicroBatches(global_batch_size=64, micro_batch_size=4, data_parallel_size=2)
    assert calculator.get() == 8 and calculator.get_current_global_batch_size() == 64
    calculator.update(10_000, True)
    assert calculator.get() == 8


def test_constant_rejects_indivisible_global_batch():
    with pytest.raises(ValueError, match="--global-batch-size 10 is not divisible by --micro-batch-size 4 x "
                                         "data-parallel size 1"):
        ConstantNumMicroBatches(10, 4, 1)


def test_rampup_schedule():
    # 16 -> 64 in steps of 16: 3 increments over 300 samples, one every 100 samples.
    calculator = RampupBatchsizeNumMicroBatches(16, 16, 300, 64, micro_batch_size=2, data_parallel_size=4)
    expected = {0: 16, 99: 16, 100: 32, 199: 32, 200: 48, 299: 48, 300: 64, 301: 64, 10 ** 6: 64}
    for consumed, batch in expected.items():
        calculator.update(consumed, True)
        assert calculator.get_current_global_batch_size() == batch, consumed
        assert calculator.get() == batch // 8


def test_rampup_consumed_samples_as_the_loop_advances():
    calculator = RampupBatchsizeNumMicroBatches(4, 4, 40, 12, micro_batch_size=1, data_parallel_size=2)
    consumed, batches = 0, []
    while consumed < 80:
        calculator.update(consumed, True)
        batch = calculator.get_current_global_batch_size()
        batches.append(batch)
        consumed += batch
    # 40 samples / 2 increments = one increment every 20 samples.
    assert batches[:8] == [4, 4, 4, 4, 4, 8, 8, 8]
    assert batches[-1] == 12


def test_rampup_without_increments_is_constant():
    calculator = RampupBatchsizeNumMicroBatches(32, 8, 1000, 32, micro_batch_size=4, data_parallel_size=1)
    assert calculator.get_current_global_batch_size() == 32 and calculator.get() == 8


@pytest.mark.parametrize("start,increment,samples,glob,message", [
    (0, 8, 100, 32, "--rampup-batch-size start 0 must be at least 1"),
    (8, 0, 100, 32, "--rampup-batch-size increment 0 must be at least 1"),
    (8, 8, -1, 32, "--rampup-batch-size ramp-up samples -1 must be >= 0"),
    (64, 8, 100, 32, "--rampup-batch-size start 64 exceeds --global-batch-size 32"),
    (8, 16, 100, 32, "--global-batch-size 32 minus --rampup-batch-size start 8 = 24 is not divisible by the "
                     "increment 16"),
    (6, 2, 100, 32, "--rampup-batch-size start 6 is not divisible by --micro-batch-size 4 x data-parallel size 1"),
    (8, 6, 100, 32, "--rampup-batch-size increment 6 is not divisible by --micro-batch-size 4"),
])
def test_rampup_errors(start, increment, samples, glob, message):
    with pytest.raises(ValueError, match=message):
        RampupBatchsizeNumMicroBatches(start, increment, samples, glob, micro_batch_size=4, data_parallel_size=1)


def test_builder(capsys):
    assert isinstance(build_num_microbatches_calculator(0, None, 8, 2, 2), ConstantNumMicroBatches)
    assert "constant 2" in capsys.readouterr().out
    calculator = build_num_microbatches_calculator(0, [4, 4, 100], 8, 2, 2)
    assert isinstance(calculator, RampupBatchsizeNumMicroBatches)
    assert "from global batch size 4 to global batch size 8 with batch size increments 4 over 100 samples" in \
        capsys.readouterr().out
    build_num_microbatches_calculator(1, None, 8, 2, 2)
    assert capsys.readouterr().out == ""
    with pytest.raises(ValueError, match="--rampup-batch-size takes 3 values"):
        build_num_microbatches_calculator(0, [4, 4], 8, 2, 2)
