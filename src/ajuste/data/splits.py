"""Train/val/test splits and nested training-set fractions, stratified and seeded.

`make_splits` honours the splits a source defines, and never lets a source's test data steer model selection:
when a source has train + val but no test (hymenoptera), its val becomes the test split and a fresh val is carved
from train.

`take_fraction` draws the training subsets of a learning curve. For one seed the subsets are nested (the examples
used at 5 % are among those used at 10 %), so differences between fractions come from the amount of data, not
from which examples happened to be drawn.
"""

from __future__ import annotations

import numbers

import numpy as np

from ajuste.data.sources import LabelledData
from ajuste.errors import ConfigError, DataError

__all__ = ["make_splits", "take_fraction"]


def make_splits(
    data: LabelledData, *, seed: int = 0, val_size: float = 0.15, test_size: float = 0.15
) -> dict[str, np.ndarray]:
    """Return {"train", "val", "test"}: disjoint, sorted int64 index arrays that together cover ``data``.

    Predefined splits in ``data.splits`` are used when present:
    - train + val + test: as they are;
    - train + test: val is carved from train (``val_size`` of train, stratified);
    - train + val: the source's val becomes test, and val is carved from train (``val_size`` of train);
    - train only / none: a stratified 3-way split with ``val_size`` and ``test_size`` of all examples.
    Every class gets at least one training example; a class with enough examples (2 when carving val,
    3 for a 3-way split) gets at least one in each held-out split.
    """
    _check_fraction("val_size", val_size)
    _check_fraction("test_size", test_size)
    if val_size + test_size >= 1:
        raise ValueError(
            f"val_size + test_size must be < 1 (got {val_size} + {test_size}); nothing would be left to train on"
        )
    labels = np.asarray(data.labels, dtype=np.int64)
    rng = np.random.default_rng(seed)
    pre = {k: np.unique(np.asarray(v, dtype=np.int64)) for k, v in data.splits.items() if len(v)}
    unknown = set(pre) - {"train", "val", "test"}
    if unknown:
        raise ValueError(f"data.splits has unknown keys {sorted(unknown)}; expected train/val/test")

    if not pre or set(pre) == {"train"}:
        pool = pre.get("train", np.arange(len(labels), dtype=np.int64))
        train, val, test = _stratified_split(pool, labels, [val_size, test_size], rng, share_of=len(pool))
        out = {"train": train, "val": val, "test": test}
    elif "train" not in pre:
        raise DataError(
            f"{data.source} defines {'/'.join(sorted(pre))} splits but no train split; add a train split"
        )
    elif "val" in pre and "test" in pre:
        out = {"train": pre["train"], "val": pre["val"], "test": pre["test"]}
    else:
        # train + test, or train + val where that val is promoted to test (it is the only untouched held-out data)
        test = pre["test"] if "test" in pre else pre["val"]
        train, val = _stratified_split(pre["train"], labels, [val_size], rng, share_of=len(pre["train"]))
        out = {"train": train, "val": val, "test": test}

    out = {k: np.sort(v).astype(np.int64) for k, v in out.items()}
    _check_partition(out, labels, data)
    return out


def take_fraction(indices: np.ndarray, labels: np.ndarray, fraction: float, *, seed: int = 0) -> np.ndarray:
    """A stratified subsample of ``indices`` (sorted int64); ``labels`` is the full label array they index.

    ``fraction`` in (0, 1] keeps that share (1 keeps everything); an integer > 1 is an absolute number of examples.
    Every class present in ``indices`` keeps at least one example. For a given seed the result is nested:
    the subset for a smaller fraction is contained in the subset for a larger one.
    """
    idx = np.unique(np.asarray(indices, dtype=np.int64).reshape(-1))
    labels = np.asarray(labels).reshape(-1)
    if len(idx) and (idx[0] < 0 or idx[-1] >= len(labels)):
        raise ValueError(f"indices must lie in [0, {len(labels)}) (labels is the full label array they index)")
    n = len(idx)
    valid = isinstance(fraction, numbers.Real) and not isinstance(fraction, bool) and np.isfinite(fraction)
    if not valid or fraction <= 0:
        raise ValueError(f"fraction must be in (0, 1] or an integer count > 1, got {fraction!r}")
    if fraction <= 1:
        if fraction == 1:
            return idx
        count = int(round(fraction * n))
    else:
        if float(fraction) != int(fraction):
            raise ConfigError(f"data.fraction={fraction!r}: above 1 it is a number of training examples and must "
                              f"be whole (0.15 is 15% of the training split)")
        count = int(fraction)
        if count > n:
            raise ConfigError(f"data.fraction={count} asks for {count} training examples but the training split "
                              f"has {n}; ask for at most {n}, or give a share in (0, 1]")
    order = _nested_order(idx, labels[idx], seed)
    n_classes = len(np.unique(labels[idx]))
    if fraction > 1 and count < n_classes:
        # A count is exact or refused: silently raised to one per class, `--fraction 2` trained on 10 examples
        # (and whoever typed 2 may well have meant "all of it, twice"; nothing here means that).
        raise ConfigError(f"data.fraction={count} asks for {count} training examples (above 1 it is a count, not "
                          f"a share), fewer than the {n_classes} classes, each of which needs one; ask for at "
                          f"least {n_classes}, or give a share in (0, 1]")
    count = min(n, max(count, n_classes, 1))
    return np.sort(order[:count])


def fraction_note(fraction: float, n_pool: int, n_taken: int, n_classes: int) -> str | None:
    """The warning for a share that gave fewer examples than there are classes and was raised to one per
    class (a count below that is refused by `take_fraction`); None when the share was taken as asked."""
    if not 0 < fraction < 1:
        return None
    asked = int(round(fraction * n_pool))
    if n_taken <= asked:
        return None
    return (f"data.fraction={fraction:g} gives {asked} of {n_pool} training examples for {n_classes} classes: "
            f"raised to {n_taken}, one per class at least")


# ----------------------------------------------------------------------------------------------------- helpers


def _check_fraction(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, numbers.Real) or not 0 < value < 1:
        raise ValueError(f"{name} must be a fraction in (0, 1), got {value!r}")


def _nested_order(idx: np.ndarray, y: np.ndarray, seed: int) -> np.ndarray:
    """A priority order over ``idx`` whose every prefix is as stratified as possible and holds each class early.

    Within each class the examples are shuffled; the j-th example of a class of size c gets the key (j + 0.5) / c
    (Sainte-Laguë apportionment, which is house-monotone: growing the prefix never removes anyone). The first
    example of every class comes before everything else, so any prefix of length >= #classes covers all classes.
    Ties between classes are broken by a random class priority. Taking prefixes makes the subsets nested.
    """
    rng = np.random.default_rng(seed)
    classes = np.unique(y)
    class_rank = rng.permutation(len(classes))
    members, keys, ranks = [], [], []
    for k, cls in enumerate(classes):
        m = rng.permutation(idx[y == cls])
        c = len(m)
        key = (np.arange(c) + 0.5) / c
        key[0] = -1.0  # one example per class first
        members.append(m)
        keys.append(key)
        ranks.append(np.full(c, class_rank[k]))
    members_a, keys_a, ranks_a = np.concatenate(members), np.concatenate(keys), np.concatenate(ranks)
    order = np.lexsort((ranks_a, keys_a))  # primary key: keys_a, then class rank
    return members_a[order]


def _allocate(counts: np.ndarray, fractions: list[float], totals: list[int], rng: np.random.Generator) -> np.ndarray:
    """Held-out counts per (class, part): (K, P) ints. Rows sum to <= count - 1, so each class keeps a train example.

    Start from the floor of each class's exact share, guarantee one example per part for classes with more than
    P examples, then hand out what each part still lacks to the classes with the largest remainders.
    """
    k, p = len(counts), len(fractions)
    exact = counts[:, None] * np.asarray(fractions)[None, :]  # (K, P)
    alloc = np.floor(exact).astype(np.int64)
    big = counts > p
    alloc[big] = np.maximum(alloc[big], 1)
    # never take a class's last training example (shrink the largest held-out part first)
    for i in range(k):
        while alloc[i].sum() > max(counts[i] - 1, 0):
            alloc[i, int(np.argmax(alloc[i]))] -= 1
    tiebreak = rng.random((k, p))
    for j in range(p):
        missing = totals[j] - int(alloc[:, j].sum())
        while missing > 0:
            room = alloc.sum(axis=1) < counts - 1
            if not room.any():
                break
            remainder = np.where(room, exact[:, j] - alloc[:, j], -np.inf)
            best = int(np.lexsort((tiebreak[:, j], remainder))[-1])
            alloc[best, j] += 1
            missing -= 1
    return alloc


def _stratified_split(
    pool: np.ndarray, labels: np.ndarray, fractions: list[float], rng: np.random.Generator, *, share_of: int
) -> list[np.ndarray]:
    """Split ``pool`` into [rest, part_1, ..., part_P], part_j holding about fractions[j] * share_of examples."""
    pool = np.sort(pool)
    y = labels[pool]
    classes, counts = np.unique(y, return_counts=True)
    totals = [int(round(f * share_of)) for f in fractions]
    alloc = _allocate(counts, fractions, totals, rng)
    parts: list[list[np.ndarray]] = [[] for _ in range(len(fractions) + 1)]
    for i, cls in enumerate(classes):
        members = rng.permutation(pool[y == cls])
        start = 0
        for j, a in enumerate(alloc[i]):
            parts[j + 1].append(members[start : start + a])
            start += a
        parts[0].append(members[start:])
    return [np.sort(np.concatenate(p)).astype(np.int64) if p else np.empty(0, np.int64) for p in parts]


def _check_partition(out: dict[str, np.ndarray], labels: np.ndarray, data: LabelledData) -> None:
    n = len(labels)
    every = np.concatenate(list(out.values()))
    if len(every) != n or len(np.unique(every)) != n:
        raise DataError(
            f"the predefined splits of {data.source} overlap or miss examples "
            f"({len(np.unique(every))} distinct of {n}); check the split files/folders"
        )
    missing = np.setdiff1d(np.unique(labels), np.unique(labels[out["train"]]))
    if len(missing):
        names = ", ".join(data.classes[i] if i < len(data.classes) else str(i) for i in missing[:5])
        raise DataError(f"classes {names} of {data.source} have no training examples; add some to the train split")
