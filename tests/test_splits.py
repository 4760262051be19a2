"""Train / validation / test splits: sizes, partition, reproducibility, edge cases."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from mdnlab.data.splits import split_rows
from mdnlab.errors import ConfigError, DataError

torch.set_num_threads(1)


def assert_partition(splits, n):
    parts = [splits.train, splits.val, splits.test]
    joined = np.concatenate(parts)
    assert joined.size == n
    np.testing.assert_array_equal(np.sort(joined), np.arange(n))
    for part in parts:
        assert np.issubdtype(part.dtype, np.integer)


@pytest.mark.parametrize("kind", ["random", "chronological"])
@pytest.mark.parametrize(
    ("n", "val", "test"), [(103, 0.15, 0.2), (10, 0.1, 0.1), (57, 0.33, 0.25), (1000, 0.05, 0.0)]
)
def test_sizes_and_partition(kind, n, val, test):
    splits = split_rows(n, val, test, kind, seed=3)
    assert splits.val.size == round(val * n)
    assert splits.test.size == round(test * n)
    assert splits.train.size == n - round(val * n) - round(test * n)
    assert_partition(splits, n)


def test_sizes_by_hand():
    splits = split_rows(103, 0.15, 0.2, "random", seed=0)
    # 0.15 * 103 = 15.45 -> 15, 0.2 * 103 = 20.6 -> 21, leaving 67
    assert (splits.train.size, splits.val.size, splits.test.size) == (67, 15, 21)


def test_same_seed_same_split_different_seed_different():
    a = split_rows(200, 0.2, 0.2, "random", seed=11)
    b = split_rows(200, 0.2, 0.2, "random", seed=11)
    c = split_rows(200, 0.2, 0.2, "random", seed=12)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)
    assert not np.array_equal(a.train, c.train)


def test_random_split_shuffles():
    splits = split_rows(200, 0.2, 0.2, "random", seed=0)
    # Not simply the first rows: the test rows are spread over the whole range.
    assert splits.test.min() < 40 and splits.test.max() >= 160
    assert not np.array_equal(splits.train, np.arange(splits.train.size))


def test_chronological_keeps_order():
    n = 50
    splits = split_rows(n, 0.2, 0.1, "chronological", seed=123)
    np.testing.assert_array_equal(splits.train, np.arange(0, 35))
    np.testing.assert_array_equal(splits.val, np.arange(35, 45))
    np.testing.assert_array_equal(splits.test, np.arange(45, 50))
    assert splits.train.max() < splits.val.min() and splits.val.max() < splits.test.min()
    # The seed plays no part.
    other = split_rows(n, 0.2, 0.1, "chronological", seed=7)
    np.testing.assert_array_equal(other.train, splits.train)


@pytest.mark.parametrize("kind", ["random", "chronological"])
def test_zero_fractions(kind):
    splits = split_rows(40, 0.0, 0.25, kind, seed=1)
    assert splits.val.size == 0 and splits.test.size == 10 and splits.train.size == 30
    assert_partition(splits, 40)
    splits = split_rows(40, 0.0, 0.0, kind, seed=1)
    assert splits.val.size == 0 and splits.test.size == 0
    np.testing.assert_array_equal(splits.train, np.arange(40))


@pytest.mark.parametrize(
    ("val", "test"), [(0.5, 0.5), (0.6, 0.5), (0.0, 1.0), (1.0, 0.0), (-0.1, 0.2), (0.2, -0.01)]
)
def test_bad_fractions_are_config_errors(val, test):
    with pytest.raises(ConfigError, match="data\\.(val|test)_fraction"):
        split_rows(100, val, test, "random", seed=0)


def test_unknown_kind_is_a_config_error():
    with pytest.raises(ConfigError, match="data.split"):
        split_rows(100, 0.1, 0.1, "stratified", seed=0)


def test_too_few_rows_for_training():
    with pytest.raises(DataError, match="leave 1 for training") as info:
        split_rows(3, 0.3, 0.3, "random", seed=0, source="tiny.csv")
    assert "tiny.csv" in str(info.value)
    splits = split_rows(4, 0.25, 0.25, "random", seed=0)  # exactly 2 left: accepted
    assert splits.train.size == 2


# --------------------------------------------------------------------------------------------
# stratified random splits
# --------------------------------------------------------------------------------------------


def make_strata(sizes, seed=0):
    """Labels with the given stratum sizes, in shuffled row order."""
    labels = np.repeat(np.arange(len(sizes)), sizes)
    return np.random.default_rng(seed).permutation(labels)


@pytest.mark.parametrize(
    ("sizes", "val", "test"),
    [
        ([50, 30, 20], 0.15, 0.15),
        ([7, 40, 13, 3, 100], 0.2, 0.1),
        ([12, 12], 0.25, 0.25),
        ([9, 31, 60], 0.0, 0.3),
    ],
)
def test_stratified_sizes_proportions_and_partition(sizes, val, test):
    strata = make_strata(sizes)
    n = strata.size
    splits = split_rows(n, val, test, "random", seed=5, strata=strata)
    assert_partition(splits, n)
    # overall counts are the unstratified ones
    assert splits.val.size == round(val * n) and splits.test.size == round(test * n)
    for part in (splits.train, splits.val, splits.test):
        np.testing.assert_array_equal(part, np.sort(part))
    for s, size in enumerate(sizes):
        for part, fraction in ((splits.val, val), (splits.test, test)):
            count = np.sum(strata[part] == s)
            assert abs(count - fraction * size) < 1.0 + 1e-9, (s, count, fraction * size)
        assert np.sum(strata[splits.train] == s) >= 1


def test_stratified_split_is_deterministic_and_seed_dependent():
    strata = make_strata([60, 25, 15], seed=1)
    a = split_rows(100, 0.2, 0.2, "random", seed=11, strata=strata)
    b = split_rows(100, 0.2, 0.2, "random", seed=11, strata=strata)
    c = split_rows(100, 0.2, 0.2, "random", seed=12, strata=strata)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(a, part), getattr(b, part))
    assert not np.array_equal(a.test, c.test)


def test_stratified_rare_strata_stay_in_training():
    # one stratum of a single row, one of two rows: both keep a row in training
    strata = make_strata([1, 2, 47, 50], seed=2)
    single = int(np.flatnonzero(strata == 0)[0])
    for seed in range(20):
        splits = split_rows(100, 0.3, 0.3, "random", seed=seed, strata=strata)
        assert_partition(splits, 100)
        assert single in splits.train
        for s in range(4):
            assert np.sum(strata[splits.train] == s) >= 1
        # the rows the rare strata cannot give are taken from the others
        assert splits.val.size == 30 and splits.test.size == 30


def test_stratified_labels_may_be_any_values():
    strata = np.array(["b", "a", "b", "c", "a", "b", "c", "a", "b", "c"] * 4)
    splits = split_rows(40, 0.25, 0.25, "random", seed=0, strata=strata)
    assert_partition(splits, 40)
    for level in "abc":
        assert 2 <= np.sum(strata[splits.val] == level) <= 4


def test_chronological_split_ignores_strata():
    strata = make_strata([30, 20])
    plain = split_rows(50, 0.2, 0.1, "chronological", seed=0)
    stratified = split_rows(50, 0.2, 0.1, "chronological", seed=0, strata=strata)
    for part in ("train", "val", "test"):
        np.testing.assert_array_equal(getattr(plain, part), getattr(stratified, part))
