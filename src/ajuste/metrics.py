"""Classification metrics shared by train, evaluate and the study, and the metric a run is judged on.

``train.monitor`` names the validation metric that picks a run's kept epoch, drives early stopping, is the
search's objective and the study's ranking (``METRICS``). ``auto`` is accuracy, or macro-F1 when the training
labels are imbalanced (the largest class over ``IMBALANCE`` times the smallest): on a 95/5 split a model that
always answers the majority class is 95% accurate and useless, and its macro-F1 says so (0.49).
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ajuste.errors import ConfigError
from ajuste.tasks import TASK_METRICS, multilabel_metrics, regression_metrics

# name: (what the report calls it, higher is better)
METRICS: dict[str, tuple[str, bool]] = {
    "accuracy": ("accuracy", True),
    "balanced_accuracy": ("balanced accuracy", True),
    "macro_f1": ("macro-F1", True),
    "auroc": ("AUROC", True),
    "map": ("mAP", True),
    "micro_f1": ("micro-F1", True),
    "rmse": ("RMSE", False),
    "mae": ("MAE", False),
    "r2": ("R²", True),
    "loss": ("validation loss", False),
}
LEGACY = {"val_accuracy": "accuracy", "val_loss": "loss"}  # the names train.monitor took before
IMBALANCE = 3.0  # largest class / smallest class above which auto picks macro-F1


def metric_name(name: str) -> str:
    """A monitor's canonical name (``val_accuracy`` → ``accuracy``); unknown names are returned as given. An
    ``auto`` that nothing resolved (a fit called outside ``train_run``, which resolves it with the data) is
    accuracy, as it was before auto could mean macro-F1."""
    return "accuracy" if name == "auto" else LEGACY.get(name, name)


def label_of(name: str) -> str:
    """What the report calls the metric."""
    return METRICS.get(metric_name(name), (name, True))[0]


def higher_is_better(name: str) -> bool:
    return METRICS.get(metric_name(name), (name, True))[1]


def imbalance_ratio(labels: np.ndarray, n_classes: int) -> float:
    """Largest class count over smallest, among the classes present (inf when a class has no example)."""
    counts = np.bincount(np.asarray(labels, dtype=np.int64), minlength=n_classes)
    return float(counts.max() / counts.min()) if counts.min() > 0 else float("inf")


def resolve_monitor(requested: str, train_labels: np.ndarray, n_classes: int,
                    task: str = "classification") -> tuple[str, str]:
    """(metric, why) for ``train.monitor``: the named one, or for ``auto`` accuracy or, on imbalanced training
    labels, macro-F1 (mAP for multi-label, RMSE for regression); ``why`` is a sentence for the user when auto
    chose macro-F1, else empty. A metric of another task is refused."""
    allowed = TASK_METRICS[task]
    if requested != "auto":
        name = metric_name(requested)
        if name not in allowed:
            raise ConfigError(f"train.monitor={requested} does not apply to a {task} task; use one of "
                              f"{', '.join(allowed)}")
        return name, ""
    if task != "classification":
        return allowed[0], ""
    ratio = imbalance_ratio(train_labels, n_classes)
    if ratio > IMBALANCE:
        shown = "a class with no training example" if not np.isfinite(ratio) else \
            f"largest class {ratio:.1f}× the smallest"
        return "macro_f1", f"metric: macro_f1, as the training labels are imbalanced ({shown}; accuracy would " \
                           f"reward the majority class); --set train.monitor=accuracy to rank on accuracy"
    return "accuracy", ""


def ordered_metrics(m: dict[str, Any], first: str) -> list[tuple[str, str, float]]:
    """(key, label, value) of the scalar metrics in ``m``, the run's metric ``first``."""
    keys = [k for k in METRICS if k != "loss" and isinstance(m.get(k), float)]
    first = metric_name(first)
    keys.sort(key=lambda k: k != first)
    return [(k, label_of(k), m[k]) for k in keys]


def softmax(logits: np.ndarray) -> np.ndarray:
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def auroc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Binary: the ROC AUC of the second class's probability; more classes: the mean one-vs-rest AUC over the
    classes present in ``y_true`` with at least one negative (scikit-learn's ``roc_auc_score``, macro). NaN when
    no class can be scored (a single class in ``y_true``)."""
    from sklearn.metrics import roc_auc_score

    y_true, probs = np.asarray(y_true), np.asarray(probs, dtype=np.float64)
    if probs.shape[1] == 2:
        return float(roc_auc_score(y_true, probs[:, 1])) if len(np.unique(y_true)) == 2 else float("nan")
    scores = [roc_auc_score(y_true == k, probs[:, k]) for k in range(probs.shape[1])
              if 0 < (y_true == k).sum() < len(y_true)]
    return float(np.mean(scores)) if scores else float("nan")


def score(name: str, y_true: np.ndarray, probs: np.ndarray, loss: float | None = None) -> float:
    """The value of metric ``name`` for class probabilities ``probs`` (n × classes), label probabilities (n ×
    labels, with ``y_true`` n × labels: multi-label) or predicted values (regression); ``loss`` is returned for
    ``loss``."""
    from sklearn.metrics import balanced_accuracy_score, f1_score

    name = metric_name(name)
    y_true = np.asarray(y_true)
    if name == "loss":
        return float("nan") if loss is None else float(loss)
    if not len(y_true):
        return float("nan")
    if name in ("rmse", "mae", "r2"):  # ``probs`` are the predicted values, in the target's units
        return regression_metrics(y_true, probs)[name]
    if y_true.ndim == 2:  # multi-label: ``probs`` are per-label probabilities, decided at 0.5
        return multilabel_metrics(y_true, probs, [str(k) for k in range(y_true.shape[1])])[name]
    if name == "auroc":
        return auroc(y_true, probs)
    pred = np.asarray(probs).argmax(1)
    if name == "accuracy":
        return float((pred == y_true).mean())
    if name == "balanced_accuracy":
        return float(balanced_accuracy_score(y_true, pred))
    if name == "macro_f1":
        return float(f1_score(y_true, pred, labels=list(range(np.asarray(probs).shape[1])), average="macro",
                              zero_division=0))
    raise ValueError(f"unknown metric {name!r}")


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str],
                           probs: np.ndarray | None = None) -> dict[str, Any]:
    """Accuracy, balanced accuracy, macro-F1, AUROC (with ``probs``), per-class figures and the confusion
    matrix."""
    from sklearn.metrics import balanced_accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support

    labels = list(range(len(classes)))
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    p, r, f, s = precision_recall_fscore_support(y_true, y_pred, labels=labels, zero_division=0)
    out = {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else float("nan"),
        "balanced_accuracy": float(balanced_accuracy_score(y_true, y_pred)) if len(y_true) else float("nan"),
        "macro_f1": float(f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)),
        "n": int(len(y_true)),
        "per_class": [
            {"class": c, "precision": float(p[i]), "recall": float(r[i]), "f1": float(f[i]), "support": int(s[i])}
            for i, c in enumerate(classes)
        ],
        "confusion": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }
    if probs is not None and len(y_true):
        out["auroc"] = auroc(y_true, probs)
    return out


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


def accuracy_text(accuracy: float) -> str:
    """``  val_acc 0.9630`` for an epoch line; nothing where accuracy is undefined (a regression task)."""
    return f"  val_acc {accuracy:.4f}" if math.isfinite(accuracy) else ""
