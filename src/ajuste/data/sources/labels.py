"""From a loader's class names to `LabelledData`: one spelling for numeric labels, class order, the mapping
onto a trained run's classes, and the checks that every class has enough examples."""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ajuste.data.sources.common import _listing
from ajuste.data.sources.records import LabelledData, _Raw
from ajuste.errors import DataError


def _finish(raw: _Raw, *, classes: list[str] | None) -> LabelledData:
    labels = _normalise_numeric_labels(raw.labels)
    n = len(labels)
    if n == 0:
        raise DataError(f"no examples found {raw.where}")
    if classes is not None:
        class_list = [str(c) for c in classes]
        if len(set(class_list)) != len(class_list):
            raise ValueError(f"classes contains duplicates: {class_list}")
        known = set(_normalise_numeric_labels(class_list))
        unseen = sorted(set(labels) - known, key=_class_sort_key(labels))
        if unseen:
            raise DataError(
                f"labels {raw.where} not seen in train: {_listing(unseen)}; the model knows "
                f"{_listing(class_list, limit=20)}; remove those examples or retrain with them"
            )
        # numeric normalisation ("1.0" -> "1") applied to both sides so train/eval files agree
        index = {c: i for i, c in enumerate(_normalise_numeric_labels(class_list))}
    else:
        found = set(labels)
        class_list = sorted(found | set(raw.declared_classes or ()), key=_class_sort_key(list(found)))
        index = {c: i for i, c in enumerate(class_list)}
        _check_class_counts(labels, class_list, raw)
    y = np.fromiter((index[c] for c in labels), dtype=np.int64, count=n)

    summary = (raw.details + "; " if raw.details else "") + f"{len(class_list)} classes, {n} {raw.unit}"
    if raw.splits:
        summary += "; splits " + " / ".join(f"{k} {len(v)}" for k, v in raw.splits.items())
    return LabelledData(
        modality=raw.modality,
        inputs=raw.inputs,
        labels=y,
        classes=class_list,
        splits=raw.splits,
        source=f"{raw.describe} ({summary})",
        warnings=raw.warnings,
    )


def _check_class_counts(labels: list[str], class_list: list[str], raw: _Raw) -> None:
    if len(class_list) < 2:
        only = f"'{class_list[0]}'" if class_list else "none"
        raise DataError(
            f"only one class ({only}) {raw.where}; a classifier needs at least 2 classes — "
            + (
                "put each class in its own subfolder <root>/<class>/"
                if raw.modality == "image" and raw.declared_classes is not None
                else "check that the label column is the right one (--label-col)"
                if raw.unit == "rows"
                else "check the labels"
            )
        )
    counts = Counter(labels)
    small = [(c, counts.get(c, 0)) for c in class_list if counts.get(c, 0) < 2]
    if small:
        name, k = small[0]
        what = f"class '{name}' has {'only 1 example' if k == 1 else 'no examples'}"
        more = f" (also {_listing([f'{c}: {k}' for c, k in small[1:]])})" if len(small) > 1 else ""
        fix = raw.class_hint.replace("{cls}", name)
        raise DataError(f"{what} {raw.where}{more}; every class needs at least 2 — {fix}")


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _normalise_numeric_labels(labels: list[str]) -> list[str]:
    """All-integral numeric labels get one canonical spelling ("1.0", " 1" -> "1"); others are kept as they are."""
    uniq = set(labels)
    if uniq and all(_is_number(u) for u in uniq) and all(float(u).is_integer() for u in uniq):
        canon = {u: str(int(float(u))) for u in uniq}
        return [canon[x] for x in labels]
    return list(labels)


def _class_sort_key(labels: list[str]):
    """Numeric order when every label is a number ("2" < "10"), else plain string order."""
    if labels and all(_is_number(x) for x in set(labels)):
        return lambda c: (0, float(c), c) if _is_number(c) else (1, 0.0, c)
    return lambda c: (0, 0.0, c)
