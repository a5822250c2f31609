"""A fit without gradient steps (``Strategy.direct_fit``, e.g. the classical arm's logistic regressions): each
candidate the strategy tries is recorded as an epoch would be, in metrics.jsonl and on the console, and a
caller's epoch hook (a study's Ctrl-C, a pruner) sees it; the result reads like the training loop's."""

from __future__ import annotations

import time
from dataclasses import asdict
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, Iterator

import torch

from ajuste.io import append_jsonl
from ajuste.metrics import accuracy_text
from ajuste.training.callbacks import CancelFit
from ajuste.training.checkpoint import EpochRecord, FitResult


def fit_direct(steps: Iterator[dict[str, Any]], *, run_dir: Path | None, console: Any,
               on_epoch_end: Callable | None, seconds_before: float = 0.0,
               callbacks: list | None = None, metric: str = "accuracy") -> FitResult:
    """Run ``steps`` to the end (or until the hook raises CancelFit); ``seconds_before``: fitting the model's
    own parts before (a vocabulary), counted in the fit's time. ``callbacks`` (tracking) see ``before_fit`` and
    one ``after_epoch`` per candidate, on a view with the loop's ``console``, ``result``, ``state.global_epoch``
    and ``rec``. ``metric``: the monitored metric's name, shown on each line beside accuracy (where it is defined)."""
    t0 = time.perf_counter()
    result = FitResult()
    view = SimpleNamespace(console=console, result=result, state=SimpleNamespace(global_epoch=0), rec=None)
    for cb in callbacks or []:
        cb.before_fit(view)
    metrics = Path(run_dir) / "metrics.jsonl" if run_dir is not None else None
    if metrics is not None:
        metrics.unlink(missing_ok=True)  # a run interrupted before its end fits again from the start
    for i, step in enumerate(steps):
        rec = EpochRecord(epoch=i + 1, phase=step["phase"], train_loss=step["train_loss"], val_loss=step["val_loss"],
                          val_accuracy=step["val_accuracy"], lr=0.0, seconds=round(step["seconds"], 3), cached=True,
                          threads=torch.get_num_threads(), val_score=step.get("val_score"))
        result.history.append(rec)
        if step["best"]:
            result.best_epoch, result.best_val_accuracy, result.best_val_loss = i, rec.val_accuracy, rec.val_loss
            result.best_val_score = rec.score
        if metrics is not None:
            append_jsonl(metrics, asdict(rec))
        view.rec, view.state.global_epoch = rec, i + 1
        for cb in callbacks or []:
            cb.after_epoch(view)
        if console is not None:
            extra = f"  val_{metric} {rec.score:.4f}" if metric not in ("accuracy", "loss") else ""
            console.print(f"{rec.phase:<12} val_loss {rec.val_loss:.4f}{accuracy_text(rec.val_accuracy)}{extra}  "
                          f"({rec.seconds:.1f}s)", markup=False, highlight=False)
        if on_epoch_end is not None:
            try:
                on_epoch_end(rec, result)
            except CancelFit:
                result.stopped_by = "cancelled"
                break
    if not result.history:
        raise RuntimeError("the strategy's direct fit tried no candidate")
    result.seconds = time.perf_counter() - t0 + seconds_before
    result.stopped_by = result.stopped_by or "completed"
    return result
