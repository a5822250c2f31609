"""The classical arm: fixed hand-made features and a logistic regression (scikit-learn), its regularisation
tuned on the validation split. Text: TF-IDF of word and character n-grams; images: HOG, colour histograms and a
thumbnail (``ajuste.backbones.classical`` says why). It is the floor a study shows its deep arms against: on
some text sets it comes within noise of them at a small fraction of the cost, and the user should know.

The fitted model becomes the run's linear head, so the run is saved (safetensors + JSON, no pickle), loaded,
evaluated, predicted with and exported like any other."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np
import torch

from ajuste.backbones.classical import HogColourBackbone, TfidfBackbone
from ajuste.config import RunConfig
from ajuste.errors import AjusteError, ConfigError
from ajuste.metrics import higher_is_better, metric_name, score
from ajuste.strategies.base import Phase, Strategy, register

# Inverse regularisation strengths tried, weakest regularisation last; the most accurate on validation is kept
# (ties: the lower validation loss). A decade apart: finer steps change validation accuracy within its noise.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)
ABSENT_LOGIT = -30.0  # a class missing from the training split (a small fraction): never predicted


@dataclass
class ClassicalOptions:
    max_features: int = field(default=50_000, metadata={
        "help": "text: n-grams kept per vocabulary (word 1-2-grams, character 2-5-grams), the most frequent ones "
                "in the training split"})
    max_iter: int = field(default=1000, metadata={
        "help": "iterations of the logistic regression's solver (L-BFGS) per regularisation strength"})

    def __post_init__(self) -> None:
        if self.max_features < 1:
            raise ConfigError(f"strategy.max_features={self.max_features} must be ≥ 1")
        if self.max_iter < 10:
            raise ConfigError(f"strategy.max_iter={self.max_iter} must be ≥ 10")


@register
class Classical(Strategy):
    name = "classical"
    summary = "no deep network: logistic regression on TF-IDF n-grams (text) or HOG + colour histograms (images)"
    options = ClassicalOptions
    builds_backbone = True
    baseline = True
    seeded = False  # fixed features and L-BFGS on a convex loss: the same model whatever the seed
    cost_rank = 0.01

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        return [Phase("logistic-regression", train_groups=[-1], epochs=len(C_GRID), lr=0.0, head_lr=0.0,
                      patience=None)]

    def planning_groups(self, cfg: RunConfig) -> int:
        return 1

    def build_backbone(self, cfg: RunConfig, data: Any, splits: dict) -> Any:
        n = len(data.classes)
        if data.modality == "text":
            texts = [_text(data.inputs[i]) for i in splits["train"]]
            return TfidfBackbone.fit(texts, n, max_features=self.option_values(cfg).max_features)
        return HogColourBackbone(n)

    def direct_fit(self, backbone: Any, pipeline: Any, cfg: RunConfig) -> Iterator[dict[str, Any]]:
        if pipeline.task.kind != "classification":
            return fit_task_linear(backbone, pipeline, self.option_values(cfg), monitor=cfg.train.monitor)
        return fit_logistic(backbone, pipeline, self.option_values(cfg), monitor=cfg.train.monitor,
                            balanced=cfg.train.class_balance != "none")

    def check_space(self, space: Any, model: str, n_body_groups: int | None) -> None:
        raise ConfigError("the classical arm tunes its logistic regression's regularisation on validation by "
                          "itself, so `ajuste tune` has nothing to search; train it with `ajuste train --strategy "
                          "classical`, or compare it with the deep arms with `ajuste compare`")


def fit_logistic(backbone: Any, pipeline: Any, opts: ClassicalOptions, *, monitor: str = "accuracy",
                 balanced: bool = False) -> Iterator[dict[str, Any]]:
    """One logistic regression per strength of C_GRID on the training split, each yielded as an epoch would be;
    the backbone's head holds the best on validation by ``monitor`` so far (ties: the lower validation loss).
    ``balanced``: classes weighted by the inverse of their frequency (train.class_balance weights or sampler: a
    convex fit gains nothing from resampled batches that the weights do not give)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import log_loss

    x_train, x_val = _matrices(backbone, pipeline)
    y_train, y_val = pipeline.labels("train"), pipeline.labels("val")
    if len(np.unique(y_train)) < 2:
        raise AjusteError("the classical arm needs examples of at least two classes in the training split")
    n = backbone.num_classes

    def fits() -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray, float]]:
        for c in C_GRID:
            t = time.perf_counter()
            model = LogisticRegression(C=c, max_iter=opts.max_iter, class_weight="balanced" if balanced else None)
            model.fit(x_train, y_train)
            coef, intercept = _all_classes(model, n)
            val_p = _softmax(_logits(x_val, coef, intercept))
            train_p = _softmax(_logits(x_train, coef, intercept))
            step = {"phase": f"C={c:g}", "train_loss": float(log_loss(y_train, train_p, labels=range(n))),
                    "val_loss": float(log_loss(y_val, val_p, labels=range(n))),
                    "val_accuracy": float(np.mean(val_p.argmax(1) == y_val))}
            step["val_score"] = score(monitor, y_val, val_p, loss=step["val_loss"])
            yield step, coef, intercept, t

    yield from _keep_best(fits(), backbone, monitor)


def fit_task_linear(backbone: Any, pipeline: Any, opts: ClassicalOptions, *,
                    monitor: str) -> Iterator[dict[str, Any]]:
    """Multi-label: one logistic regression per label; regression: ridge regression on the standardised target
    (alpha = 1/C). One fit per strength of C_GRID, each yielded as an epoch; the head keeps the best on
    validation by ``monitor`` (`ajuste.tasks`: the same loss and outputs as a deep run of the task)."""
    from sklearn.linear_model import LogisticRegression, Ridge

    task = pipeline.task
    x_train, x_val = _matrices(backbone, pipeline)
    y_train, y_val = pipeline.labels("train"), pipeline.labels("val")

    def fits() -> Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray, float]]:
        for c in C_GRID:
            t = time.perf_counter()
            if task.kind == "regression":
                model = Ridge(alpha=1.0 / c).fit(x_train, (y_train - task.mean) / task.std)
                coef, bias = np.atleast_2d(model.coef_), np.atleast_1d(model.intercept_)
            else:
                rows = [_binary(LogisticRegression(C=c, max_iter=opts.max_iter), x_train, y_train[:, k])
                        for k in range(y_train.shape[1])]
                coef, bias = np.vstack([r[0] for r in rows]), np.concatenate([r[1] for r in rows])
            val_z = torch.as_tensor(_logits(x_val, coef, bias))
            step = {"phase": f"C={c:g}",
                    "train_loss": float(task.loss(torch.as_tensor(_logits(x_train, coef, bias)),
                                                  torch.as_tensor(y_train))),
                    "val_loss": float(task.loss(val_z, torch.as_tensor(y_val))),
                    "val_accuracy": task.accuracy(val_z, torch.as_tensor(y_val))}
            step["val_score"] = score(monitor, y_val, task.outputs(val_z), loss=step["val_loss"])
            yield step, coef, bias, t

    yield from _keep_best(fits(), backbone, monitor)


def _keep_best(fits: Iterator[tuple[dict[str, Any], np.ndarray, np.ndarray, float]], backbone: Any,
               monitor: str) -> Iterator[dict[str, Any]]:
    """Each fit (its step, weights, biases and start time) yielded as an epoch; the backbone's head holds the best
    so far (``_rank``)."""
    best: tuple[float, ...] | None = None
    for step, coef, bias, t in fits:
        rank = _rank(step, monitor)
        step["best"] = best is None or rank > best
        if step["best"]:
            best = rank
            backbone.set_linear(coef, bias)
        step["seconds"] = time.perf_counter() - t
        yield step


def _rank(step: dict[str, Any], monitor: str) -> tuple[float, ...]:
    """How a fit compares with the others (higher is better): the monitored score (negated for an error such as
    RMSE), ties broken by the lower validation loss; for ``loss``, the loss alone."""
    if metric_name(monitor) == "loss":
        return (-step["val_loss"],)
    return ((1.0 if higher_is_better(monitor) else -1.0) * step["val_score"], -step["val_loss"])


def _binary(model: Any, x: Any, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(1, features) weights and (1,) bias of one label's logistic regression; a label that the training split
    has on every row or on none gets the constant logit of its rate (clipped), as it cannot be fitted."""
    y = (np.asarray(y) > 0.5).astype(int)
    if y.min() == y.max():
        rate = np.clip(y.mean(), 1e-3, 1 - 1e-3)
        return np.zeros((1, x.shape[1])), np.array([np.log(rate / (1 - rate))])
    model.fit(x, y)
    return np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)


def _matrices(backbone: Any, pipeline: Any) -> tuple[Any, Any]:
    """Training and validation features as scikit-learn takes them: the sparse TF-IDF of the fitted
    vectorizers for text; for images the extractor's features, standardised on the training split (the
    statistics become the backbone's, so inference standardises the same way)."""
    if isinstance(backbone, TfidfBackbone):
        texts = {s: [_text(pipeline.data.inputs[i]) for i in pipeline.splits[s]] for s in ("train", "val")}
        return backbone.matrix(texts["train"]), backbone.matrix(texts["val"])
    raw = {s: _raw_image_features(backbone, pipeline, s) for s in ("train", "val")}
    mean = raw["train"].mean(0)
    std = raw["train"].std(0)
    std = torch.where(std > 1e-6, std, torch.ones_like(std))  # a constant feature stays 0
    with torch.no_grad():
        backbone.mean.copy_(mean)
        backbone.scale.copy_(std)
    return ((raw["train"] - mean) / std).numpy(), ((raw["val"] - mean) / std).numpy()


@torch.no_grad()
def _raw_image_features(backbone: HogColourBackbone, pipeline: Any, split: str) -> torch.Tensor:
    was = backbone.training
    backbone.eval()
    try:
        loader = pipeline.loader(split, batch_size=256)
        return torch.cat([backbone.raw_features(x) for x, _ in loader]).double()
    finally:
        backbone.train(was)


def _text(item: Any) -> Any:
    """A text as a string, a text pair (a tuple) as it is."""
    return item if isinstance(item, tuple) else str(item)


def _all_classes(model: Any, n: int) -> tuple[np.ndarray, np.ndarray]:
    """(n, features) weights and (n,) biases over every class of the data, from a model fitted on the classes
    present in the training split (binary: one row z, as logits -z/2 and z/2)."""
    present = np.asarray(model.classes_)
    coef, bias = np.asarray(model.coef_, dtype=np.float64), np.asarray(model.intercept_, dtype=np.float64)
    if len(present) == 2:
        coef, bias = np.concatenate([-coef / 2, coef / 2]), np.concatenate([-bias / 2, bias / 2])
    full_coef = np.zeros((n, coef.shape[1]))
    full_bias = np.full(n, ABSENT_LOGIT)
    full_coef[present], full_bias[present] = coef, bias
    return full_coef, full_bias


def _logits(x: Any, coef: np.ndarray, bias: np.ndarray) -> np.ndarray:
    return np.asarray(x @ coef.T) + bias


def _softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(1, keepdims=True)
