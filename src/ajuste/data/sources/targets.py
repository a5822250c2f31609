"""Labels that are not one class per row: which task a label column holds (``data.task: auto`` looks), and the
`LabelledData` of a multi-label or regression source.

- multi-label: cells of ``|``-separated names (``drama|comedy``), a JSON list, or several 0/1 columns named with
  ``--label-col a,b,c`` (read as ``|``-joined names, ``table_columns.combine_label_columns``); an empty set is
  allowed where the 0/1 columns say so.
- regression: a numeric column. ``auto`` calls it regression when its values are numbers, not all whole, with
  more than ``REGRESSION_MIN_VALUES`` distinct ones (a 1-5 star rating stays five classes unless asked).
"""

from __future__ import annotations

import numpy as np

from ajuste.data.sources.common import _listing
from ajuste.data.sources.labels import _is_number
from ajuste.data.sources.records import LabelledData, _Raw
from ajuste.errors import DataError

MULTI_SEP = "|"
REGRESSION_MIN_VALUES = 20
_STRATA = 5  # quantile bins of a regression target that splits and fractions keep in proportion


def detect_task(labels: list[str], requested: str) -> tuple[str, str]:
    """(task, why): the requested one, or what ``auto`` sees in the label cells; ``why`` says what was detected
    and how to override it (empty for plain classification)."""
    if requested != "auto":
        return requested, ""
    if any(MULTI_SEP in lab for lab in labels):
        return "multilabel", ("task: multilabel (label cells hold '|'-separated names); --task classification "
                              "treats each combination as one class")
    uniq = set(labels)
    if len(uniq) > REGRESSION_MIN_VALUES and all(_is_number(u) for u in uniq) \
            and not all(float(u).is_integer() for u in uniq):
        return "regression", (f"task: regression (the label column holds {len(uniq)} distinct numbers); "
                              f"--task classification treats each value as a class")
    return "classification", ""


def label_sets(labels: list[str]) -> list[list[str]]:
    return [[t.strip() for t in lab.split(MULTI_SEP) if t.strip()] for lab in labels]


def finish_multilabel(raw: _Raw, *, classes: list[str] | None) -> LabelledData:
    sets = label_sets(raw.labels)
    found = sorted({t for s in sets for t in s})
    if classes is not None:
        unseen = sorted(set(found) - set(classes))
        if unseen:
            raise DataError(f"labels {raw.where} not seen in training: {_listing(unseen)}; the model knows "
                            f"{_listing(classes, limit=20)}; remove them or retrain with them")
        names = list(classes)
    else:
        names = found
        if len(names) < 2:
            only = f"only '{names[0]}'" if names else "no label in any row"
            raise DataError(f"{only} {raw.where}; a multi-label data set needs at least 2 labels (one label, present "
                            f"or not, is a yes/no class: give each row a name such as 'yes'/'no')")
    index = {n: k for k, n in enumerate(names)}
    targets = np.zeros((len(sets), len(names)), dtype=np.float32)
    for i, s in enumerate(sets):
        targets[i, [index[t] for t in s]] = 1.0
    counts = targets.sum(0)
    if classes is None:
        _check_label_counts(names, counts, len(sets), raw)
    # stratum of a row: its rarest label (len(names) for a row without labels)
    rarity = np.where(targets > 0, counts[None, :], np.inf)
    strata = np.where(targets.any(1), rarity.argmin(1), len(names)).astype(np.int64)
    summary = f"{len(names)} labels, {targets.sum(1).mean():.2f} per row, {len(sets)} {raw.unit}"
    return _data(raw, "multilabel", names, strata, targets, summary)


def _check_label_counts(names: list[str], counts: np.ndarray, n: int, raw: _Raw) -> None:
    every = [nm for nm, c in zip(names, counts) if c == n]
    if every:
        raise DataError(f"label '{every[0]}' is in every row {raw.where}, so it tells nothing apart; remove it "
                        f"from the labels (or add the rows without it)")
    rare = [(nm, int(c)) for nm, c in zip(names, counts) if c < 2]
    if rare:
        raise DataError(f"label '{rare[0][0]}' has only 1 example {raw.where}"
                        + (f" (also {_listing([nm for nm, _ in rare[1:]])})" if len(rare) > 1 else "")
                        + "; every label needs at least 2: add examples or remove the label")


def finish_regression(raw: _Raw) -> LabelledData:
    bad = [(i, lab) for i, lab in enumerate(raw.labels) if not _is_number(lab)]
    if bad:
        shown = _listing(sorted({repr(lab) for _, lab in bad}))
        raise DataError(f"the regression target {raw.where} holds values that are not numbers ({shown}; "
                        f"{len(bad)} of {len(raw.labels)} rows); fix or drop those rows, or pass --task "
                        f"classification to treat the values as classes")
    y = np.asarray([float(lab) for lab in raw.labels], dtype=np.float64)
    if len(np.unique(y)) < 2:
        raise DataError(f"the regression target {raw.where} has one value ({y[0]:g}) in every row; there is "
                        f"nothing to learn — check the label column (--label-col)")
    edges = np.quantile(y, np.linspace(0, 1, _STRATA + 1)[1:-1])
    strata = np.searchsorted(np.unique(edges), y, side="right").astype(np.int64)
    summary = f"a numeric target, mean {y.mean():.4g}, sd {y.std():.4g}, {len(y)} {raw.unit}"
    return _data(raw, "regression", [raw.label_name], strata, y, summary)


def _data(raw: _Raw, task: str, names: list[str], strata: np.ndarray, targets: np.ndarray,
          summary: str) -> LabelledData:
    summary = (raw.details + "; " if raw.details else "") + summary
    if raw.splits:
        summary += "; splits " + " / ".join(f"{k} {len(v)}" for k, v in raw.splits.items())
    return LabelledData(modality=raw.modality, inputs=raw.inputs, labels=strata, classes=names, splits=raw.splits,
                        source=f"{raw.describe} ({summary})", warnings=raw.warnings, task=task, targets=targets)
