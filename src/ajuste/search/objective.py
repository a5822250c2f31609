"""One Optuna trial = one ``train_run`` on the shared data, scored on the validation split.

The score of a trial (the **objective**) is taken at the trial's *best epoch*, not its last one
(transformers #25247): the best epoch by ``train.monitor``, which is the epoch whose weights ``fit``
keeps and a retrain delivers. With ``metric="val_accuracy"`` (maximised) the objective is the validation
accuracy of that epoch; with ``metric="val_loss"`` (minimised) it is that epoch's loss. After every
epoch the trial reports this objective-so-far (step = epoch index), so pruners compare trials on the
same quantity the study optimises, and a trial's last report equals its final value. A weight-averaged
phase (two-stage on images) keeps the mean of its last epochs' weights, validated once at its end: during
the phase the trial reports the phase's best epoch so far (when it beats the earlier phases' best), and the
average's score comes as one more report, at step = the trial's epoch count.

When the monitor is the validation accuracy itself, the objective is the trial's most accurate epoch:
optimistic by the selection, equally for every trial, and still the model a retrain keeps. The test
split is never evaluated in a trial.

Each trial's model, optimizer and data pipeline are dropped when the trial ends and the allocator is
asked to give memory back, so the resident memory of a long study stays flat (optuna #1178/#4934).
"""

from __future__ import annotations

import ctypes
import gc
import math
import os
import socket
import time
import weakref
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ajuste.config import RunConfig
from ajuste.errors import AjusteError, TrainingDiverged
from ajuste.training import run as training  # the module: tests substitute its train_run
from ajuste.training import tracking, tracking_store
from ajuste.training.cache import shared_dir
from ajuste.training.loop import CancelFit

# the objective at each trial's kept epoch; a name of ajuste.metrics also sets the trials' train.monitor to it, so
# the epoch kept is the one that scores best on it (val_accuracy and val_loss leave train.monitor as configured)
METRICS = {"val_accuracy": "maximize", "val_loss": "minimize", "accuracy": "maximize",
           "balanced_accuracy": "maximize", "macro_f1": "maximize", "auroc": "maximize", "loss": "minimize",
           "map": "maximize", "micro_f1": "maximize", "r2": "maximize", "rmse": "minimize", "mae": "minimize"}
_LOSSES = ("val_loss", "loss")  # the objective is the validation loss; every other name is a metric's score
# fit() counts an epoch as an improvement when val loss drops by more than this (keep in step with loop.py).
IMPROVEMENT = 1e-4


def _maximised(metric: str, accuracy: float, score: float) -> float:
    """The maximised objective of a record: its accuracy for (val_)accuracy, else train.monitor's score (the
    trials' monitor is that metric)."""
    return accuracy if metric in ("val_accuracy", "accuracy") else score


def check_metric(metric: str) -> str:
    if metric not in METRICS:
        raise AjusteError(f"unknown --metric {metric!r}: valid metrics are {', '.join(METRICS)}")
    return metric


def worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def rss_mb() -> float:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20
    except (OSError, ValueError):
        return float("nan")


def release_memory() -> None:
    """Collect garbage and hand freed heap pages back to the OS (glibc keeps them otherwise)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


class TrialFailed(Exception):
    """A trial that raised: recorded as FAIL in the study (counted against the budget)."""


class EpochReporter:
    """``on_epoch_end`` callback: report the objective-so-far; ask the pruner; stop via CancelFit."""

    def __init__(self, trial: Any, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.best_loss = math.inf
        self.best_acc = float("nan")
        self.epochs = 0
        self.pruned_at: int | None = None

    @property
    def value(self) -> float:
        return self.best_loss if self.metric in _LOSSES else self.best_acc

    def __call__(self, rec: Any, result: Any) -> None:
        self.epochs = rec.epoch + 1
        if result is not None and result.provisional is not None:
            # a weight-averaged phase: its best epoch so far stands in for the average, validated at its end
            self.best_loss, provisional = result.provisional
            self.best_acc = _maximised(self.metric, provisional, provisional)
        elif result is not None and 0 <= result.best_epoch <= rec.epoch:
            # fit's own best epoch (by train.monitor): the weights a retrain keeps
            self.best_loss = result.best_val_loss
            self.best_acc = _maximised(self.metric, result.best_val_accuracy, result.best_val_score)
        elif rec.val_loss < self.best_loss - IMPROVEMENT:
            self.best_loss, self.best_acc = rec.val_loss, _maximised(self.metric, rec.val_accuracy, rec.score)
        if math.isfinite(self.value):
            self.trial.report(self.value, step=rec.epoch)
        if self.trial.should_prune():
            self.pruned_at = rec.epoch
            raise CancelFit(f"pruned by optuna after epoch {rec.epoch + 1}")


@dataclass
class TrialRecord:
    """What the runner prints after a trial."""

    number: int
    state: str
    value: float | None
    params: dict[str, Any]
    epochs: int
    seconds: float
    note: str = ""


class Objective:
    """Callable for ``study.optimize``; ``on_start`` runs once the trial exists (the runner releases its
    budget lock there), ``on_end`` receives a TrialRecord."""

    def __init__(self, *, base_cfg: RunConfig, space: Any, data: Any, splits: dict, metric: str,
                 on_start: Callable[[Any], None] | None = None,
                 on_end: Callable[[TrialRecord], None] | None = None, cache_dir: Any = None,
                 out: Any = None) -> None:
        self.base_cfg = base_cfg
        self.space = space
        self.data = data
        self.splits = splits
        self.metric = check_metric(metric)
        self.on_start = on_start
        self.on_end = on_end
        # Trials in this process share frozen-layer activations in memory (ajuste.training.cache); with a
        # directory, workers in other processes and re-runs share them too.
        self.cache_dir = cache_dir
        # train.log_to: each trial is a run in the experiment named after the search directory
        self.out = out
        # Weak reference to the last trial's backbone: tests check that it is gone after the trial.
        self.last_model_ref: weakref.ref | None = None

    def __call__(self, trial: Any) -> float:
        import optuna

        # Who runs the trial is recorded while the runner still holds the study lock (released by on_start):
        # a RUNNING trial without it is then one whose worker died between study.ask() and here.
        trial.set_user_attr("worker", worker_id())
        if self.on_start is not None:
            self.on_start(trial)
        t0 = time.perf_counter()
        reporter = EpochReporter(trial, self.metric)
        record = TrialRecord(trial.number, "FAIL", None, {}, 0, 0.0)
        track = self._tracking(trial)
        try:
            record.params = params = self.space.suggest(trial)
            value = self._run(trial, params, reporter, track)
            record.state, record.value = "COMPLETE", value
            return value
        except optuna.TrialPruned as exc:
            record.state, record.value, record.note = "PRUNED", _finite(reporter.value), str(exc)
            raise
        except KeyboardInterrupt:
            # Not counted against the budget: a re-run of the same command runs this slot again.
            trial.set_user_attr("interrupted", True)
            record.note = "interrupted"
            raise
        except Exception as exc:  # noqa: BLE001 - recorded on the trial, the study goes on
            if os.environ.get("AJUSTE_DEBUG") == "1":
                raise
            msg = " ".join(str(exc).split())[:500] or type(exc).__name__
            trial.set_user_attr("error", f"{type(exc).__name__}: {msg}")
            trial.set_user_attr("counted", True)
            record.note = f"{type(exc).__name__}: {msg}"
            raise TrialFailed(msg) from exc
        finally:
            record.epochs = reporter.epochs
            record.seconds = time.perf_counter() - t0
            release_memory()
            trial.set_user_attr("rss_mb", round(rss_mb(), 1))
            # the trial's MLflow run (ended by its training) gets the trial's outcome
            tracking_store.log_to_run(track.mlflow_run_id, metrics={"objective": record.value},
                                tags={"optuna.state": record.state, "optuna.note": record.note})
            if self.on_end is not None:
                self.on_end(record)

    def _tracking(self, trial: Any) -> tracking.TrackingContext:
        out = Path(self.out).resolve() if self.out is not None else None
        return tracking.TrackingContext(
            experiment=out.name if out is not None else None, run_name=f"trial-{trial.number}",
            tags={"optuna.study": trial.study.study_name, "optuna.trial": str(trial.number)},
            tensorboard_dir=out / "tensorboard" / f"trial-{trial.number:04d}" if out is not None else None)

    def _run(self, trial: Any, params: dict[str, Any], reporter: EpochReporter,
             track: tracking.TrackingContext) -> float:
        import optuna

        cfg = self.base_cfg.override(params)
        if self.metric not in ("val_accuracy", "val_loss"):
            cfg = cfg.override({"train.monitor": self.metric})
        try:
            with shared_dir(self.cache_dir):
                result = training.train_run(cfg=cfg, out=None, data=self.data, splits=self.splits,
                                            progress=False, console=None, on_epoch_end=reporter,
                                            evaluate_test=False, track=track)
        except TrainingDiverged as exc:
            # A diverging LR is an answer, not a crash: the trial ends as pruned with its last report.
            trial.set_user_attr("diverged", " ".join(str(exc).split()))
            raise optuna.TrialPruned(f"diverged after {reporter.epochs} epochs") from None
        summary = result.summary
        self.last_model_ref = weakref.ref(result.backbone) if result.backbone is not None else None
        # Drop the model, optimizer state and pipeline now, not when the next trial replaces them.
        del result
        if summary.get("status") == "interrupted":
            raise KeyboardInterrupt
        for key in ("epochs", "best_epoch", "val_loss", "val_accuracy", "train_seconds", "stopped_by",
                    "peak_memory_mb", "trainable_params"):
            if key in summary:
                trial.set_user_attr(key, summary[key])
        if reporter.pruned_at is not None:
            raise optuna.TrialPruned(f"pruned after epoch {reporter.pruned_at + 1}")
        value = summary["val_loss"] if self.metric in _LOSSES else \
            _maximised(self.metric, summary["val_accuracy"], summary["val_score"])
        if not math.isfinite(value):
            raise AjusteError(f"trial {trial.number} ended with a non-finite {self.metric}")
        if value != reporter.value:  # a weight average, validated after the last epoch: one more step
            trial.report(float(value), step=reporter.epochs)
        return float(value)


def _finite(v: float) -> float | None:
    return v if v is not None and math.isfinite(v) else None
