"""Classification metrics shared by train, evaluate and the study."""

from __future__ import annotations

from typing import Any

import numpy as np


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str]) -> dict[str, Any]:
    from sklearn.metrics import confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_class": [
            {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        ],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


ECE_BINS = 15  # Guo et al. 2017's choice; equal-width confidence bins over (0, 1]


def reliability_bins(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> dict[str, list]:
    """Top-label reliability: the predictions grouped by their confidence (the largest probability) in ``n_bins``
    equal-width bins ((m-1)/M, m/M]; per bin the count, the mean confidence and the accuracy (None when empty).
    ``probs``: (N, classes), ``labels``: (N,)."""
    probs, labels = np.asarray(probs, dtype=np.float64), np.asarray(labels)
    conf = probs.max(1) if len(probs) else np.zeros(0)
    correct = (probs.argmax(1) == labels) if len(probs) else np.zeros(0, dtype=bool)
    # ceil(conf * M) - 1 puts a confidence of exactly m/M in bin m-1 (right-closed bins)
    which = np.clip(np.ceil(conf * n_bins).astype(int) - 1, 0, n_bins - 1)
    count = np.bincount(which, minlength=n_bins)
    conf_sum = np.bincount(which, weights=conf, minlength=n_bins)
    acc_sum = np.bincount(which, weights=correct.astype(np.float64), minlength=n_bins)
    return {"count": count.tolist(),
            "confidence": [float(s / c) if c else None for s, c in zip(conf_sum, count)],
            "accuracy": [float(s / c) if c else None for s, c in zip(acc_sum, count)]}


def expected_calibration_error(probs: np.ndarray, labels: np.ndarray, n_bins: int = ECE_BINS) -> float:
    """Top-label expected calibration error (Naeini et al. 2015; Guo et al. 2017): over ``n_bins`` equal-width
    confidence bins, the share of examples in each bin times |accuracy - mean confidence| there, summed.
    0 is perfectly calibrated; NaN without examples."""
    bins = reliability_bins(probs, labels, n_bins)
    n = sum(bins["count"])
    if not n:
        return float("nan")
    return float(sum(c / n * abs(a - p) for c, a, p in zip(bins["count"], bins["accuracy"], bins["confidence"]) if c))
