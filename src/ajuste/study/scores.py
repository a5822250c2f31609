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


def _metric(rows: dict[str, Any] | list[dict[str, Any]]) -> str:
    rows = [rows] if isinstance(rows, dict) else rows
    return rows[0].get("metric", "accuracy") if rows else "accuracy"


def metric_of(rows: dict[str, Any] | list[dict[str, Any]]) -> str:
    """The metric the study ranks on, as the report names it (an error by its name: its values are shown
    positive, `shown`)."""
    return label_of(_metric(rows))


def shown(x: float, rows: dict[str, Any] | list[dict[str, Any]]) -> float:
    """A score as the report shows it: an error recorded negated (RMSE, MAE) back to its positive value."""
    return x if higher_is_better(_metric(rows)) else -x


def fmt(x: float, rows: dict[str, Any] | list[dict[str, Any]], digits: int = 3) -> str:
    """``shown(x)`` with ``digits`` decimals: "0.912", or an RMSE of "1.204"."""
    return f"{shown(x, rows):.{digits}f}"


def direction(rows: dict[str, Any] | list[dict[str, Any]]) -> str:
    """" (lower is better)" for an error, else nothing: for the axis labels and headings that show it."""
    return "" if higher_is_better(_metric(rows)) else " (lower is better)"


def gap_text(gap: float, rows: list[dict[str, Any]]) -> str:
    """A difference of scores in words: "+5.2 points" for a share (accuracy, F1, mAP, R²); for an error
    (recorded negated) its size in the target's units, "RMSE 0.150 lower"."""
    metric = _metric(rows)
    if higher_is_better(metric):
        return f"{100 * gap:+.1f} points"
    return f"{label_of(metric)} {abs(gap):.3g} {'lower' if gap >= 0 else 'higher'}"


def validation_noise(p: float, n_val: int | None, seed_std: float = 0.0, seeds: int = 1,
                     metric: str = "accuracy") -> float:
    """The standard error of a validation score ``p`` on the study's ``metric``, from the split's size, or the
    spread over seeds when larger. Seeds share one validation split, so more of them do not shrink the split's
    part. A share (accuracy, F1, mAP): binomial, at least one example's worth (1/n_val). An error recorded
    negated (``p`` = −RMSE or −MAE), in the target's units, for normal residuals: RMSE/√(2n) (the standard error
    of a standard deviation) and MAE·√(π/2 − 1)/√n (the spread of |residual| over its mean). R²: the relative
    error of the MSE, (1 − R²)·√(2/n)."""
    if not n_val:
        split = 0.0
    elif metric == "rmse":
        split = abs(p) / math.sqrt(2 * n_val)
    elif metric == "mae":
        split = abs(p) * math.sqrt(math.pi / 2 - 1) / math.sqrt(n_val)
    elif metric == "r2":
        split = max(1.0 - p, 0.0) * math.sqrt(2.0 / n_val)
    else:
        split = max(math.sqrt(max(p * (1 - p), 0.0) / n_val), 1.0 / n_val)
    return max(split, seed_std / math.sqrt(max(1, seeds)))
