"""A study record's scores on the study's metric (``train.monitor``'s, ajuste.metrics): what the advice, the
planner and the report rank and show. Records from before scores carry only accuracies: they are read as such."""

from __future__ import annotations

import math
from typing import Any

from ajuste.metrics import higher_is_better, label_of


def val_score(r: dict[str, Any]) -> float:
    """A record's validation score on the study's metric (records from before scores: their accuracy)."""
    return float(r.get("val_score", r["val_accuracy"]))


def test_score(r: dict[str, Any]) -> float:
    return float(r.get("test_score", r.get("test_accuracy", math.nan)))


def with_scores(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The records, each with ``val_score`` and ``test_score`` (filled from the accuracies for older ones)."""
    return [{**r, "val_score": val_score(r), "test_score": test_score(r)} for r in records]


def metric_of(rows: list[dict[str, Any]]) -> str:
    """The metric the study ranks on, as the report names it."""
    if not rows:
        return "accuracy"
    metric = rows[0].get("metric", "accuracy")
    return label_of(metric) if higher_is_better(metric) else f"−{label_of(metric)}"  # recorded negated


def gap_text(gap: float, rows: list[dict[str, Any]]) -> str:
    """A difference of scores in words: "+5.2 points" for a share (accuracy, F1, mAP, R²); for an error
    (recorded negated) its size in the target's units, "RMSE 0.150 lower"."""
    metric = rows[0].get("metric", "accuracy") if rows else "accuracy"
    if higher_is_better(metric):
        return f"{100 * gap:+.1f} points"
    return f"{label_of(metric)} {abs(gap):.3g} {'lower' if gap >= 0 else 'higher'}"
