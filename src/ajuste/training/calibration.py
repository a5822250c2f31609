"""Temperature scaling: one scalar T > 0 that divides a trained classifier's logits, fitted on the validation split
by minimising its negative log-likelihood (Guo, Pleiss, Sun & Weinberger 2017, "On Calibration of Modern Neural
Networks", ICML). Dividing every logit by the same positive T keeps the arg-max, so labels and accuracy are
unchanged; only the probabilities move (T > 1 softens an overconfident model, T < 1 sharpens an underconfident one).

A run stores its T in ``calibration.json`` (with the validation NLL and ECE before and after, and the test ECE when
the run was tested); ``load_run`` reads it, and predict, evaluate and every export apply it. A run without the file
(trained before calibration existed, or with ``train.calibrate=false``) has T = 1.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajuste.errors import AjusteError
from ajuste.io import atomic_write_json, read_json
from ajuste.metrics import ECE_BINS, expected_calibration_error, reliability_bins
from ajuste.training.inference import amp_for, predict_logits, use_channels_last

FILE = "calibration.json"
# T is searched over [1/20, 20] (log T in ±3): wider than any sensible correction, and bounded, so a validation
# split the model separates perfectly (where NLL keeps falling as T → 0) does not drive T to 0.
LOG_T_BOUND = math.log(20.0)
METHOD = "temperature scaling (Guo et al. 2017), fitted on the validation split by NLL"


def nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` (N,) under softmax(``logits`` (N, C) / temperature)."""
    if not len(labels):
        return float("nan")
    z = logits.double() / temperature
    return float(torch.nn.functional.cross_entropy(z, labels.long()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The T in [1/20, 20] that minimises the NLL of softmax(logits / T) on (``logits`` (N, C), ``labels`` (N,)).

    A bounded one-dimensional search (Brent's method, scipy) over log T: deterministic, a few dozen evaluations of
    one log-sum-exp over the split. T = 1 when there is nothing to fit on, or when the search does not improve on
    it (the returned T never raises the validation NLL)."""
    from scipy.optimize import minimize_scalar

    if len(labels) == 0:
        return 1.0
    z, y = logits.double(), labels.long()

    def loss(log_t: float) -> float:
        return float(torch.nn.functional.cross_entropy(z / math.exp(log_t), y))

    res = minimize_scalar(loss, bounds=(-LOG_T_BOUND, LOG_T_BOUND), method="bounded",
                          options={"xatol": 1e-5})
    t = float(math.exp(res.x))
    return t if loss(res.x) < loss(0.0) else 1.0


def scores(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> dict[str, Any]:
    """NLL, top-label ECE (15 equal-width bins) and reliability bins of the probabilities before (T = 1) and
    after dividing the logits by ``temperature``."""
    y = labels.numpy()
    before = torch.softmax(logits.double(), 1).numpy()
    after = torch.softmax(logits.double() / temperature, 1).numpy()
    return {"temperature": float(temperature), "n": int(len(y)), "ece_bins": ECE_BINS,
            "nll_before": nll(logits, labels), "nll_after": nll(logits, labels, temperature),
            "ece_before": expected_calibration_error(before, y), "ece_after": expected_calibration_error(after, y),
            "reliability": {"before": reliability_bins(before, y), "after": reliability_bins(after, y)}}


def calibrate_on_validation(backbone: Any, pipeline: Any, cfg: Any) -> dict[str, Any]:
    """Fit T on the validation split of a trained model; the record calibration.json keeps."""
    loader = pipeline.loader("val", batch_size=max(64, pipeline.batch_size))
    logits, y = predict_logits(backbone, loader, amp=amp_for(cfg, backbone, training=False),
                               channels_last=use_channels_last(cfg, backbone))
    t = fit_temperature(logits, y)
    return {"method": METHOD, "temperature": t, "n_val": int(len(y)), "val": scores(logits, y, t)}


def brief(record: dict[str, Any]) -> dict[str, Any]:
    """What summary.json keeps of a calibration record: T and the NLL/ECE numbers, without the bins."""
    out: dict[str, Any] = {"temperature": record["temperature"], "n_val": record["n_val"]}
    for split in ("val", "test"):
        if split in record:
            for key in ("nll_before", "nll_after", "ece_before", "ece_after"):
                out[f"{split}_{key}"] = record[split][key]
    return out


def save(run_dir: Path, record: dict[str, Any]) -> None:
    atomic_write_json(Path(run_dir) / FILE, record)


def read(run_dir: Path) -> dict[str, Any] | None:
    """A run's calibration record, None when it has none."""
    path = Path(run_dir) / FILE
    return read_json(path, "restore it from the run or delete it (the run then predicts uncalibrated)") \
        if path.is_file() else None


def read_temperature(run_dir: Path) -> float:
    """The T a run's logits are divided by: 1.0 without calibration.json; a damaged one is one line."""
    record = read(run_dir)
    if record is None:
        return 1.0
    t = record.get("temperature") if isinstance(record, dict) else None
    if isinstance(t, bool) or not isinstance(t, (int, float)) or not (np.isfinite(t) and t > 0):
        raise AjusteError(f"{Path(run_dir) / FILE} holds no positive temperature ({str(t)[:40]}); restore it "
                          f"from the run, or delete it to predict uncalibrated")
    return float(t)
