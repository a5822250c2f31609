"""make_splits and take_fraction: partition, stratification, determinism, nesting, small classes."""

from __future__ import annotations

import numpy as np
import pytest

from ajuste.data.sources import LabelledData
from ajuste.data.splits import make_splits, take_fraction
from ajuste.errors import DataError


def _data(counts: list[int], splits: dict | None = None) -> LabelledData:
    labels = np.repeat(np.arange(len(counts)), counts)
    labels = np.random.default_rng(123).permutation(labels)  # classes interleaved, as in real files
    return LabelledData(
        modality="text",
        inputs=[f"x{i}" for i in range(len(labels))],
        labels=labels,
        classes=[f"c{k}" for k in range(len(counts))],
        splits=splits or {},
        source="synthetic",
        warnings=[],
    )


def _assert_partition(s: dict[str, np.ndarray], n: int) -> None:
    assert set(s) == {"train", "val", "test"}
    for v in s.values():
        assert v.dtype == np.int64 and np.all(np.diff(v) > 0)  # sorted, no duplicates
    every = np.concatenate(list(s.values()))
    assert len(every) == n and len(np.unique(every)) == n


# --------------------------------------------------------------------------------------------- make_splits


def test_three_way_split_is_a_stratified_partition():
    d = _data([400, 200, 100, 60, 3, 2])
    s = make_splits(d, seed=0)
    _assert_partition(s, len(d))
    n = len(d)
    assert abs(len(s["val"]) - 0.15 * n) <= 2 and abs(len(s["test"]) - 0.15 * n) <= 2
    for k, c in enumerate([400, 200, 100, 60]):
        for part in ("val", "test"):
            got = int((d.labels[s[part]] == k).sum())
            assert abs(got - 0.15 * c) <= 1.5, (k, part, got)


def test_small_classes():
    d = _data([50, 3, 2, 1])
    s = make_splits(d, seed=0)
    _assert_partition(s, len(d))
    for k in range(4):
        assert (d.labels[s["train"]] == k).sum() >= 1  # every class trains
    assert (d.labels[s["val"]] == 1).sum() == 1 and (d.labels[s["test"]] == 1).sum() == 1  # 3 -> 1/1/1
    assert (d.labels[s["val"]] == 3).sum() == 0 and (d.labels[s["test"]] == 3).sum() == 0


def test_deterministic_and_seed_dependent():
    d = _data([100, 80, 20])
    a, b, c = make_splits(d, seed=7), make_splits(d, seed=7), make_splits(d, seed=8)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])
    assert any(not np.array_equal(a[k], c[k]) for k in a)


def test_custom_sizes():
    d = _data([500, 500])
    s = make_splits(d, seed=0, val_size=0.1, test_size=0.3)
    assert (len(s["val"]), len(s["test"])) == (100, 300)


def test_predefined_three_splits_used_as_is():
    d = _data([10, 10], splits={"train": np.arange(12), "val": np.arange(12, 16), "test": np.arange(16, 20)})
    s = make_splits(d, seed=3)
    np.testing.assert_array_equal(s["train"], np.arange(12))
    np.testing.assert_array_equal(s["val"], np.arange(12, 16))
    np.testing.assert_array_equal(s["test"], np.arange(16, 20))


def test_predefined_train_test_carves_val_from_train():
    train, test = np.arange(0, 160), np.arange(160, 200)
    d = _data([100, 100], splits={"train": train, "test": test})
    s = make_splits(d, seed=0, val_size=0.25)
    _assert_partition(s, 200)
    np.testing.assert_array_equal(s["test"], test)
    assert len(s["val"]) == 40 and set(s["val"]) <= set(train)
    counts = np.bincount(d.labels[s["val"]], minlength=2)
    expected = 0.25 * np.bincount(d.labels[train], minlength=2)
    assert np.all(np.abs(counts - expected) <= 1)


def test_predefined_train_val_turns_val_into_test():
    train, val = np.arange(0, 170), np.arange(170, 200)
    d = _data([100, 100], splits={"train": train, "val": val})
    s = make_splits(d, seed=0)
    _assert_partition(s, 200)
    np.testing.assert_array_equal(s["test"], val)  # the source's val is never used for model selection
    assert set(s["val"]) <= set(train) and len(s["val"]) == round(0.15 * 170)


def test_predefined_train_only_is_split_three_ways():
    d = _data([30, 30], splits={"train": np.arange(60)})
    _assert_partition(make_splits(d, seed=0), 60)


def test_predefined_train_missing_a_class():
    labels_sorted = _data([10, 10])
    y = labels_sorted.labels
    d = _data([10, 10], splits={"train": np.flatnonzero(y == 0), "test": np.flatnonzero(y == 1)})
    with pytest.raises(DataError, match="no training examples"):
        make_splits(d)


@pytest.mark.parametrize(
    "kwargs, name",
    [({"val_size": 0}, "val_size"), ({"val_size": 1.0}, "val_size"), ({"test_size": -0.1}, "test_size"),
     ({"test_size": 1.5}, "test_size"), ({"val_size": 0.5, "test_size": 0.5}, "val_size \\+ test_size")],
)
def test_invalid_fractions(kwargs, name):
    with pytest.raises(ValueError, match=name):
        make_splits(_data([10, 10]), **kwargs)


# ------------------------------------------------------------------------------------------- take_fraction

FRACTIONS = [0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_fractions_are_nested(seed):
    d = _data([300, 120, 40, 7, 1])
    pool = make_splits(d, seed=seed)["train"]
    subsets = [take_fraction(pool, d.labels, f, seed=seed) for f in FRACTIONS]
    for small, big in zip(subsets, subsets[1:]):
        assert np.isin(small, big).all() and len(small) <= len(big)
    np.testing.assert_array_equal(subsets[-1], pool)
    # absolute counts continue the same nested order
    counts = [take_fraction(pool, d.labels, k, seed=seed) for k in (10, 25, 60)]
    for small, big in zip(counts, counts[1:]):
        assert np.isin(small, big).all()


def test_fraction_is_stratified_and_keeps_every_class():
    d = _data([1000, 300, 50, 2])
    pool = np.arange(len(d))
    sub = take_fraction(pool, d.labels, 0.1, seed=0)
    assert len(sub) == round(0.1 * len(d))
    got = np.bincount(d.labels[sub], minlength=4)
    assert got[3] >= 1  # the tiny class is still present
    assert np.all(np.abs(got[:3] - 0.1 * np.array([1000, 300, 50])) <= 1.5)
    assert sub.dtype == np.int64 and np.all(np.diff(sub) > 0) and np.isin(sub, pool).all()


def test_tiny_fraction_still_one_per_class():
    d = _data([500, 20, 5])
    sub = take_fraction(np.arange(len(d)), d.labels, 0.001, seed=0)
    assert sorted(d.labels[sub].tolist()) == [0, 1, 2]


def test_fraction_deterministic_seeded_and_order_independent():
    d = _data([200, 100])
    pool = np.arange(0, 300, 2)
    a = take_fraction(pool, d.labels, 0.3, seed=5)
    np.testing.assert_array_equal(a, take_fraction(pool[::-1].copy(), d.labels, 0.3, seed=5))
    assert not np.array_equal(a, take_fraction(pool, d.labels, 0.3, seed=6))


def test_absolute_count():
    d = _data([60, 40])
    pool = np.arange(100)
    sub = take_fraction(pool, d.labels, 20, seed=0)
    assert len(sub) == 20 and np.bincount(d.labels[sub]).tolist() == [12, 8]
    assert len(take_fraction(pool, d.labels, 100, seed=0)) == 100
    assert len(take_fraction(pool, d.labels, 20.0, seed=0)) == 20


@pytest.mark.parametrize("bad", [0, -0.5, float("nan"), 2.5, 101, True])
def test_invalid_fraction(bad):
    d = _data([60, 40])
    with pytest.raises(ValueError, match="fraction"):
        take_fraction(np.arange(100), d.labels, bad)


def test_indices_out_of_range():
    with pytest.raises(ValueError, match="full label array"):
        take_fraction(np.array([0, 5]), np.array([0, 1]), 0.5)
