"""What a label is, and what follows from it: the loss, what the head's outputs mean, and the metrics that apply.

- ``classification``: one class per example; cross-entropy; outputs are class logits (softmax).
- ``multilabel``: a set of labels per example (tags, genres); one sigmoid per label with binary cross-entropy
  (the loss of every multi-label model, ``problem_type="multi_label_classification"`` in transformers); a label
  is predicted when its probability passes its own threshold, tuned on validation (``tune_thresholds``).
- ``regression``: one number per example; the head predicts the target standardised with the training split's
  mean and standard deviation (so one learning rate suits a price in dollars and a rating in stars), the loss is
  the mean squared error (or Huber) on that scale, and predictions are mapped back to the target's units.

A `Task` is built from the training split (`for_data`), stored in the run (task.json) and read back by evaluate,
predict and the exports, so a prediction is always on the scale the run was trained on.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

TASKS = ("classification", "multilabel", "regression")
# metric names of each task, the first its default (train.monitor=auto)
TASK_METRICS = {
    "classification": ("accuracy", "balanced_accuracy", "macro_f1", "auroc", "loss"),
    "multilabel": ("map", "micro_f1", "macro_f1", "auroc", "loss"),
    "regression": ("rmse", "mae", "r2", "loss"),
}
THRESHOLD_GRID = np.round(np.arange(0.05, 0.951, 0.025), 3)  # candidate per-label thresholds


@dataclass
class Task:
    """The task of a run; ``mean``/``std`` (regression) and ``thresholds`` (multilabel) belong to it."""

    kind: str = "classification"
    mean: float = 0.0
    std: float = 1.0
    thresholds: list[float] | None = None
    loss_name: str = "mse"  # regression: mse | huber (on the standardised scale)
    extra: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.kind not in TASKS:
            raise ValueError(f"task must be one of {', '.join(TASKS)}, got {self.kind!r}")

    # --- training ---------------------------------------------------------------------------------------------
    def loss(self, logits: torch.Tensor, y: torch.Tensor, *, label_smoothing: float = 0.0,
             weights: torch.Tensor | None = None, summed: bool = False) -> torch.Tensor:
        """The batch's loss in fp32: its sum over examples (``summed``) or its mean. ``weights``: per-class loss
        weights (classification), dividing by the example count, not by the sum of weights."""
        logits = logits.float()
        if self.kind == "multilabel":
            per = F.binary_cross_entropy_with_logits(logits, y.float(), reduction="none").mean(1)
            return per.sum() if summed else per.mean()
        if self.kind == "regression":
            z = (y.float() - self.mean) / self.std
            out = logits.reshape(-1)
            per = F.huber_loss(out, z, reduction="none") if self.loss_name == "huber" else (out - z) ** 2
            return per.sum() if summed else per.mean()
        if weights is None and not summed:
            return F.cross_entropy(logits, y, label_smoothing=label_smoothing)
        total = F.cross_entropy(logits, y, label_smoothing=label_smoothing, weight=weights, reduction="sum")
        return total if summed else total / len(y)

    # --- what the outputs mean ----------------------------------------------------------------------------------
    def outputs(self, logits: torch.Tensor | np.ndarray, temperature: float = 1.0) -> np.ndarray:
        """Class probabilities (N, C) (classification, divided by ``temperature`` first), label probabilities
        (N, K) (multilabel), or predicted values in the target's units (N,) (regression)."""
        z = torch.as_tensor(logits).float()
        if self.kind == "multilabel":
            return torch.sigmoid(z).numpy()
        if self.kind == "regression":
            return (z.reshape(-1) * self.std + self.mean).double().numpy()
        return torch.softmax(z / temperature, 1).numpy()

    def accuracy(self, logits: torch.Tensor, y: torch.Tensor) -> float:
        """Top-1 accuracy (classification), the share of label decisions right at 0.5 (multilabel, "Hamming
        accuracy"), NaN for regression (no accuracy: its metrics are rmse, mae, r2)."""
        if not len(y):
            return float("nan")
        if self.kind == "multilabel":
            return float(((logits > 0).float() == y.float()).float().mean())
        if self.kind == "regression":
            return float("nan")
        return float((logits.argmax(1) == y).float().mean())

    def labels_of(self, probs: np.ndarray) -> np.ndarray:
        """Multilabel decisions (N, K) bool: each label's probability at or over its threshold (0.5 untuned)."""
        t = np.asarray(self.thresholds if self.thresholds is not None else [0.5] * probs.shape[1])
        return np.asarray(probs) >= t

    # --- storage ------------------------------------------------------------------------------------------------
    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any] | None) -> "Task":
        if not d:
            return cls()
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


def for_data(data: Any, train_idx: np.ndarray | None = None, *, loss: str = "mse") -> Task:
    """The task of ``data`` with its statistics taken on the training rows ``train_idx`` (all rows when None)."""
    kind = getattr(data, "task", "classification")
    if kind != "regression":
        return Task(kind)
    y = np.asarray(data.targets, dtype=np.float64)
    if train_idx is not None and len(train_idx):
        y = y[np.asarray(train_idx)]
    std = float(y.std()) if len(y) > 1 else 1.0
    return Task(kind, mean=float(y.mean()) if len(y) else 0.0, std=std if std > 1e-12 else 1.0, loss_name=loss)


def tune_thresholds(probs: np.ndarray, y: np.ndarray) -> list[float]:
    """Per label, the threshold of ``THRESHOLD_GRID`` with the best F1 on (validation) ``probs`` (N, K) against
    ``y`` (N, K); ties go to the threshold closest to 0.5, and a label without a positive keeps 0.5."""
    probs, y = np.asarray(probs, dtype=np.float64), np.asarray(y) > 0.5
    out = []
    for k in range(probs.shape[1]):
        pos = y[:, k]
        if not pos.any():
            out.append(0.5)
            continue
        pred = probs[:, k][:, None] >= THRESHOLD_GRID[None, :]  # (N, T)
        tp = (pred & pos[:, None]).sum(0)
        f1 = 2 * tp / np.maximum(pred.sum(0) + pos.sum(), 1)
        best = np.flatnonzero(f1 >= f1.max() - 1e-12)
        out.append(float(THRESHOLD_GRID[best[np.argmin(np.abs(THRESHOLD_GRID[best] - 0.5))]]))
    return out


def regression_metrics(y: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """RMSE, MAE and R² (1 − residual / total sum of squares; NaN with fewer than two distinct targets)."""
    y, pred = np.asarray(y, dtype=np.float64).reshape(-1), np.asarray(pred, dtype=np.float64).reshape(-1)
    if not len(y):
        return {"rmse": float("nan"), "mae": float("nan"), "r2": float("nan"), "n": 0}
    err = pred - y
    total = float(((y - y.mean()) ** 2).sum())
    return {"rmse": math.sqrt(float((err ** 2).mean())), "mae": float(np.abs(err).mean()),
            "r2": 1.0 - float((err ** 2).sum()) / total if total > 0 else float("nan"), "n": int(len(y))}


def multilabel_metrics(y: np.ndarray, probs: np.ndarray, names: list[str],
                       thresholds: list[float] | None = None) -> dict[str, Any]:
    """mAP (the mean over labels of average precision, labels with a positive and a negative), micro- and
    macro-F1 of the thresholded decisions, macro AUROC, and per-label figures."""
    from sklearn.metrics import average_precision_score, f1_score, precision_recall_fscore_support, roc_auc_score

    y = (np.asarray(y) > 0.5).astype(int)
    probs = np.asarray(probs, dtype=np.float64)
    pred = Task("multilabel", thresholds=thresholds).labels_of(probs).astype(int)
    scorable = [k for k in range(y.shape[1]) if 0 < y[:, k].sum() < len(y)]
    ap = {k: float(average_precision_score(y[:, k], probs[:, k])) for k in scorable}
    p, r, f, s = precision_recall_fscore_support(y, pred, zero_division=0)
    return {
        "map": float(np.mean(list(ap.values()))) if ap else float("nan"),
        "micro_f1": float(f1_score(y, pred, average="micro", zero_division=0)),
        "macro_f1": float(f1_score(y, pred, average="macro", zero_division=0)),
        "auroc": float(np.mean([roc_auc_score(y[:, k], probs[:, k]) for k in scorable])) if scorable
        else float("nan"),
        "exact_match": float((pred == y).all(1).mean()) if len(y) else float("nan"),
        "n": int(len(y)),
        "per_label": [{"label": name, "precision": float(p[k]), "recall": float(r[k]), "f1": float(f[k]),
                       "support": int(s[k]), "average_precision": ap.get(k, float("nan")),
                       "threshold": float(thresholds[k]) if thresholds is not None else 0.5}
                      for k, name in enumerate(names)],
    }


def constant_labels(data: Any, train: np.ndarray) -> list[str]:
    """Multi-label: one note per label that the training split has on every example or on none. Nothing can be
    learnt for it (the classical arm gives it the constant logit of its rate), which a small fraction can cause."""
    if getattr(data, "task", "classification") != "multilabel" or len(train) == 0:
        return []
    rates = np.asarray(data.targets, dtype=np.float64)[np.asarray(train)].mean(0)
    return [f"label '{name}' is on {'every one' if rate == 1 else 'none'} of the {len(train)} training examples: "
            f"nothing can be learnt for it, so its probability stays about its rate; train on more of the data "
            f"(data.fraction) or drop the label" for name, rate in zip(data.classes, rates) if rate in (0.0, 1.0)]
