"""Domain similarity, measured: how much do the pretrained features know about this task?

Two measures on frozen features of the training split, each for pretrained and for randomly
initialised weights of the same architecture:
- LogME (You et al., ICML 2021): the log marginal evidence of a Bayesian linear model on the
  features, per example, averaged over one-vs-rest targets. Higher = more transferable.
- Linear-probe accuracy: a logistic regression on the features, scored on the validation split.
The gap between pretrained and random says whether pretraining carries over to this domain.
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ajuste.backbones.factory import create_backbone
from ajuste.data.pipeline import Pipeline, make_preprocessing
from ajuste.training.execution import resolve_device
from ajuste.training.loop import amp_for, compute_features, use_channels_last
from ajuste.training.run import check_model_modality


def logme(features: np.ndarray, labels: np.ndarray, *, max_iter: int = 50) -> float:
    """LogME score of ``features`` (N, D) for integer ``labels`` (N,)."""
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)  # u: (N, r), s: (r,)
    s2 = s ** 2
    scores = []
    for k in np.unique(labels):
        y = (labels == k).astype(np.float64)
        z = u.T @ y  # coordinates of y in the span of the features, (r,)
        z2 = z ** 2
        outside = max(float(y @ y - z2.sum()), 0.0)  # part of y no linear model on f can fit
        alpha, beta = 1.0, 1.0
        for _ in range(max_iter):
            denom = alpha + beta * s2
            gamma = float((beta * s2 / denom).sum())
            mm = float((beta ** 2 * s2 * z2 / denom ** 2).sum())  # |m|^2, m the posterior mean
            res = float((z2 * (alpha / denom) ** 2).sum()) + outside  # |F m - y|^2
            new_alpha = gamma / max(mm, 1e-12)
            new_beta = max(n - gamma, 1e-6) / max(res, 1e-12)
            done = abs(new_alpha / new_beta - alpha / beta) <= 1e-3 * (alpha / beta)
            alpha, beta = new_alpha, new_beta
            if done:
                break
        denom = alpha + beta * s2
        mm = float((beta ** 2 * s2 * z2 / denom ** 2).sum())
        res = float((z2 * (alpha / denom) ** 2).sum()) + outside
        log_det = float(np.log(denom).sum()) + (d - len(s2)) * math.log(alpha)
        evidence = (d / 2 * math.log(alpha) + n / 2 * math.log(beta) - n / 2 * math.log(2 * math.pi)
                    - beta / 2 * res - alpha / 2 * mm - log_det / 2)
        scores.append(evidence / n)
    return float(np.mean(scores))


def probe_accuracy(train_x: np.ndarray, train_y: np.ndarray, val_x: np.ndarray, val_y: np.ndarray) -> float:
    """Validation accuracy of a standardised logistic regression on frozen features."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    clf = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, C=0.5))
    clf.fit(train_x, train_y)
    return float(clf.score(val_x, val_y))


def similarity_label(gain: float) -> str:
    """Share of the random-feature probe's error that pretrained features remove."""
    if gain >= 0.5:
        return "high"
    if gain >= 0.2:
        return "medium"
    return "low"


# With a study's --budget, the measurement takes at most this share of it; and never fewer examples per split.
BUDGET_SHARE = 0.1
MIN_EXAMPLES = 200
_PILOT = 64


def measure_similarity(*, model: str, data: Any, splits: dict[str, np.ndarray], cfg: Any,
                       max_examples: int = 1500, seed: int = 0, seconds: float | None = None) -> dict[str, Any]:
    """Features of train/val for pretrained and random weights → LogME and probe accuracies.

    ``seconds`` (a study's share of its --budget): the examples per split are cut to what fits, from a pilot
    pass of the pretrained model over a few of them (at least MIN_EXAMPLES, at most ``max_examples``)."""
    t0 = time.perf_counter()
    out: dict[str, Any] = {}
    pipe = None
    for kind in ("pretrained", "random"):
        torch.manual_seed(seed)
        bb = create_backbone(model, num_classes=len(data.classes), pretrained=cfg.model.pretrained,
                             pooling=cfg.model.pooling)
        check_model_modality(model, bb.modality, data, data.source)
        if kind == "random":
            bb.reinitialize(seed=seed)
        bb.to(resolve_device(cfg.train.device))  # computed on the device; the features come back to the CPU
        cl = use_channels_last(cfg, bb)
        if cl:
            bb.to(memory_format=torch.channels_last)
        amp = amp_for(cfg, bb, training=False)  # forward-only; emulated bf16 is many times slower
        if pipe is None:
            pre = make_preprocessing(data, bb, image_size=cfg.data.image_size, max_length=cfg.data.max_length)
            tokenizer = getattr(bb, "tokenizer", None)
            if seconds is not None:
                built = time.perf_counter() - t0
                per_example = _pilot_seconds(bb, data, splits, pre, tokenizer, amp=amp, channels_last=cl)
                left = seconds - (time.perf_counter() - t0) - built  # the random model is still to build
                max_examples = int(min(max_examples, max(MIN_EXAMPLES, left / (4 * per_example))))
                out["budget_seconds"] = round(seconds, 1)
            pipe = Pipeline(data, _subsample(splits, max_examples, seed), pre, tokenizer=tokenizer, augment="none",
                            batch_size=64)
        feats = {s: compute_features(bb, pipe.loader(s), amp=amp, channels_last=cl) for s in ("train", "val")}
        tx, ty = feats["train"][0].numpy(), feats["train"][1].numpy()
        vx, vy = feats["val"][0].numpy(), feats["val"][1].numpy()
        out[kind] = {"logme": logme(tx, ty), "probe_accuracy": probe_accuracy(tx, ty, vx, vy)}
        del bb
    sub = pipe.splits
    pre_acc, rand_acc = out["pretrained"]["probe_accuracy"], out["random"]["probe_accuracy"]
    gain = (pre_acc - rand_acc) / max(1e-6, 1.0 - rand_acc)
    out["gain"] = float(gain)
    out["similarity"] = similarity_label(gain)
    out["n_train"], out["n_val"] = int(len(sub["train"])), int(len(sub["val"]))
    out["seconds"] = round(time.perf_counter() - t0, 1)
    return out


def _subsample(splits: dict[str, np.ndarray], n: int, seed: int) -> dict[str, np.ndarray]:
    """At most ``n`` examples of train and of val, drawn once per seed (sorted, as the splits are)."""
    rng = np.random.default_rng(seed)
    sub = {}
    for split in ("train", "val"):
        idx = np.asarray(splits[split])
        sub[split] = np.sort(rng.choice(idx, n, replace=False)) if len(idx) > n else idx
    return sub


def _pilot_seconds(bb: Any, data: Any, splits: dict[str, np.ndarray], pre: Any, tokenizer: Any, *, amp: Any,
                   channels_last: bool) -> float:
    """Seconds per example of one feature pass (decoding included), timed on a few training examples."""
    pilot = {"train": np.asarray(splits["train"])[:_PILOT]}
    t = time.perf_counter()
    pipe = Pipeline(data, pilot, pre, tokenizer=tokenizer, augment="none", batch_size=64)
    compute_features(bb, pipe.loader("train"), amp=amp, channels_last=channels_last)
    return (time.perf_counter() - t) / max(1, len(pilot["train"]))
