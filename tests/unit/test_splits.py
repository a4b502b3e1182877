"""--split rounding, per-split sample counts and --data-path parsing."""
import pytest

from megatron.core.datasets.splits import (
    blended_num_samples,
    parse_data_path,
    parse_split,
    split_boundaries,
    train_valid_test_num_samples,
)


def test_split_boundaries_documented_example():
    assert split_boundaries("949,50,1", 1000) == [0, 949, 999, 1000]


@pytest.mark.parametrize("split,size,expected", [
    ("969,30,1", 100, [0, 97, 100, 100]),        # round(0.3) is 0, round(96.9) is 97
    ("0.8,0.1,0.1", 10, [0, 8, 9, 10]),
    ("8/1/1", 10, [0, 8, 9, 10]),
    ("1", 7, [0, 7, 7, 7]),
    ("98,2", 50, [0, 49, 50, 50]),
    ("1,1,1", 2, [0, 0, 1, 2]),                  # 1 + 1 + 1 overshoots by 1, taken off every boundary
    ("949,50,1", 0, [0, 0, 0, 0]),
])
def test_split_boundaries_megatron_2021_rounding(split, size, expected):
    assert split_boundaries(split, size) == expected


@pytest.mark.parametrize("bad", ["a,b", "1,2,3,4", "0,0,0", "-1,2"])
def test_bad_split_strings_are_rejected(bad):
    with pytest.raises(ValueError, match="--split"):
        parse_split(bad)


def test_parse_split_normalises():
    assert parse_split("2,1,1") == [0.5, 0.25, 0.25]


def test_num_samples_per_split():
    # 100 iterations of 8 samples, eval every 10 iterations for 5 iterations.
    assert train_valid_test_num_samples(8, 5, 10, train_iters=100) == (800, (10 + 1) * 5 * 8, 40)
    assert train_valid_test_num_samples(8, 5, 10, train_samples=805) == (805, 11 * 5 * 8, 40)
    with pytest.raises(ValueError, match="exactly one"):
        train_valid_test_num_samples(8, 5, 10)


def test_parse_data_path_forms():
    assert parse_data_path(["data/a"]) == (["data/a"], None)
    assert parse_data_path(["data/a", "data/b"]) == (["data/a", "data/b"], None)
    prefixes, weights = parse_data_path(["0.3", "data/a", "0.9", "data/b"])
    assert prefixes == ["data/a", "data/b"]
    assert weights == pytest.approx([0.25, 0.75])
    with pytest.raises(ValueError, match="odd count"):
        parse_data_path(["0.3", "data/a", "0.7"])
    with pytest.raises(ValueError, match="not a non-negative weight"):
        parse_data_path(["0.3", "data/a", "x", "data/b"])


def test_blend_surplus():
    assert blended_num_samples(1000, [0.3, 0.7]) == [302, 704]
