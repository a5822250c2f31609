"""One training run end to end, in a self-contained run directory (its files: ``ajuste.training.run_dir``).

``train_run`` holds the directory's lock, loads and splits the data (``ajuste.training.prepare``), builds the
backbone, fits it (``ajuste.training.loop``), scores the test split and writes the summary last. Callers import
the run directory's, the data's and the memory's helpers from here too: they are re-exported below.
"""

from __future__ import annotations

import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from rich.markup import escape

from ajuste import locks, tasks
from ajuste.backbones.factory import create_backbone
from ajuste.config import RunConfig
from ajuste.data.pipeline import Pipeline, make_preprocessing
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import atomic_write_json
from ajuste.metrics import metric_name, resolve_monitor
from ajuste.strategies.base import get_strategy, resolve_config
from ajuste.tasks import TASK_METRICS, constant_labels
from ajuste.training import calibration, distributed, loop, stored_weights, tracking, tracking_store
from ajuste.training.direct import fit_direct
from ajuste.training.memory import PeakMemory, memory_error_message
from ajuste.training.prepare import (
    check_model_modality,
    prepare_data,
    resolve_model,
    resolve_model_early,  # noqa: F401 - callers import it from here
)
from ajuste.training.run_dir import (  # noqa: F401 - callers import them from here
    check_run_dir,
    check_same_data,
    check_writable,
    epochs_done,
    read_status,
    read_summary,
    weights_digest,
    weights_metadata,
    write_run_files,
    write_status,
)
from ajuste.training.run_eval import evaluate_split, trainable_share, tune_label_thresholds


@dataclass
class RunResult:
    run_dir: Path | None
    config: RunConfig
    summary: dict[str, Any]
    backbone: Any = None
    pipeline: Any = None


def train_run(*, cfg: RunConfig, out: Path | None = None, data: Any = None, splits: dict | None = None,
              progress: bool = True, console: Any = None, overwrite: bool = False,
              on_epoch_end: Callable | None = None, evaluate_test: bool = True,
              warn: Callable[[str], None] | None = None,
              track: tracking.TrackingContext | None = None) -> RunResult:
    """Train one model. ``data``/``splits`` may be passed in (a study shares them across runs).

    ``warn`` receives data warnings (skipped files, dropped rows); without it they go to ``console``.
    ``track``: where a study or a search has the run logged, when ``train.log_to`` names trackers.
    The process that writes ``out`` holds its lock from before the directory is read (resume or overwrite) to
    the last file: a second process given the same ``out`` is refused in one line (`ajuste.locks`).
    """
    kwargs = dict(cfg=cfg, out=out, data=data, splits=splits, progress=progress, console=console,
                  overwrite=overwrite, on_epoch_end=on_epoch_end, evaluate_test=evaluate_test, warn=warn,
                  track=track)
    w = distributed.setup_from_env(cfg.train.device)  # under torchrun: join the workers (no-op for one process)
    if out is None or not w.main:  # workers other than rank 0 write nothing
        return _train_run(**kwargs)
    with locks.hold(out, what="run", remove_if_unused=True):
        try:
            return _train_run(**kwargs)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (`Terminated`), before, during or after the epochs
            if read_status(Path(out)) == "running":
                write_status(Path(out), "interrupted")
            raise


def _train_run(*, cfg: RunConfig, out: Path | None, data: Any, splits: dict | None, progress: bool, console: Any,
               overwrite: bool, on_epoch_end: Callable | None, evaluate_test: bool,
               warn: Callable[[str], None] | None, track: tracking.TrackingContext | None) -> RunResult:
    t_start = time.perf_counter()
    w = distributed.world()
    if not w.main:  # workers other than rank 0 train silently, write nothing and log nowhere
        progress, console, warn = False, None, (lambda _msg: None)
    else:
        tracking_store.require(cfg.train.log_to)  # a tracker not installed: one line before the data is read
    strategy = get_strategy(cfg.strategy.name)
    cfg, data, splits = _load_data(cfg, data, splits, console, warn)
    resuming = check_run_dir(Path(out), cfg, overwrite) if out is not None and w.main else False
    if resuming:
        check_same_data(Path(out), data, splits, cfg.data.source)
    if resuming and console is not None:
        console.print(f"resuming the unfinished run in {out} ({epochs_done(Path(out))} epochs done)",
                      markup=False, highlight=False)
    backbone, pre, pipeline, phases = _build(cfg, strategy, data, splits)

    run_dir = Path(out) if out is not None else None
    if w.main:
        if run_dir is not None and not resuming:
            write_run_files(run_dir, cfg, data, splits, pre, backbone)
        write_status(run_dir, "running")
    # Other workers read the run directory (a checkpoint to resume) only after rank 0 has prepared it.
    distributed.barrier()
    if not w.main:
        return _worker_run(cfg, run_dir, backbone, pipeline, strategy, on_epoch_end, phases)

    trainable = trainable_share(backbone, phases)
    with tracking.Tracking(cfg, run_dir, track) as tracker:  # an exception ends its MLflow run FAILED or KILLED
        result, peak = _fit(cfg, backbone, pipeline, strategy, run_dir, progress=progress, console=console,
                            on_epoch_end=on_epoch_end, phases=phases, callbacks=[tracker])
        if result.interrupted:
            write_status(run_dir, "interrupted")
            tracker.end("KILLED")
            summary = {"status": "interrupted", "epochs": len(result.history)}
            return RunResult(run_dir, cfg, summary, backbone, pipeline)
        summary = _finish(cfg, strategy, data, splits, result, backbone, pipeline, run_dir, trainable=trainable,
                          peak=peak, evaluate_test=evaluate_test, t_start=t_start)
        tracker.finish(summary)
    return RunResult(run_dir, cfg, summary, backbone, pipeline)


def _finish(cfg: RunConfig, strategy: Any, data: Any, splits: dict, result: Any, backbone: Any, pipeline: Any,
            run_dir: Path | None, *, trainable: int, peak: int, evaluate_test: bool, t_start: float) -> dict:
    """The summary of a complete run (test metrics unless told not to), saved with its weights."""
    w = distributed.world()
    summary = _summary(cfg, strategy, data, splits, result, backbone, trainable=trainable, peak=peak)
    if w.active:
        summary["distributed"] = distributed.describe(w)
    summary.update(strategy.report(backbone, run_dir))
    # temperature scaling on the validation split (training/calibration.py); the test split is scored with it.
    # Not for a run that neither keeps a directory nor is tested (a tune trial): nothing would use T. A multi-label
    # run tunes its labels' thresholds on the validation split instead.
    label_task = pipeline.task
    used = run_dir is not None or evaluate_test
    if label_task.kind == "multilabel" and used:
        label_task.thresholds = tune_label_thresholds(backbone, pipeline, cfg)
    monitor = metric_name(cfg.train.monitor)
    by_loss = monitor == "loss"
    if by_loss and label_task.kind != "classification" and used and len(splits["val"]):
        # an epoch kept by its loss: a study ranks the run on its task's first metric (RMSE, mAP), which the loop
        # did not compute; the kept model's, on validation (a classifier's accuracy is already there)
        summary["val_metrics"] = evaluate_split(backbone, pipeline, "val", data.classes, cfg)
    keep = cfg.train.calibrate and label_task.kind == "classification" and used
    calib = calibration.calibrate_on_validation(backbone, pipeline, cfg) if keep else None
    if evaluate_test:
        test = evaluate_split(backbone, pipeline, "test", data.classes, cfg,
                              temperature=calib["temperature"] if calib else 1.0)
        summary["test"] = test
        summary["test_accuracy"] = test.get("accuracy")
        summary["test_macro_f1"] = test.get("macro_f1")
        summary["test_score"] = test.get(TASK_METRICS[label_task.kind][0] if by_loss else monitor)
        if calib is not None:
            calib["test"] = test["calibration"]
    if calib is not None:
        summary["calibration"] = calibration.brief(calib)
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    if run_dir is not None:
        if calib is not None:  # before summary.json, whose presence marks the run complete
            calibration.save(run_dir, calib)
        atomic_write_json(run_dir / "task.json", label_task.to_json())
        _save(run_dir, cfg, strategy, backbone, data.classes, summary)
    return summary


def _load_data(cfg: RunConfig, data: Any, splits: dict | None, console: Any,
               warn: Callable[[str], None] | None) -> tuple[RunConfig, Any, dict]:
    """The data and its split, and the config with its auto values filled in for them; what was read is said on
    ``console``, the data's warnings go to ``warn`` (else ``console``)."""
    split_notes: list[str] = []
    data, splits = prepare_data(cfg, data=data, splits=splits, notes=split_notes)
    split_notes += constant_labels(data, splits["train"])
    cfg = resolve_config(resolve_model(cfg, data), data.modality)
    monitor, why = resolve_monitor(cfg.train.monitor, data.labels[splits["train"]], len(data.classes), data.task)
    if data.task != "classification" and cfg.train.class_balance != "none":
        raise ConfigError(f"train.class_balance={cfg.train.class_balance} balances the classes of single-label "
                          f"classification, and this is a {data.task} task; drop it")
    cfg = cfg.override({"train.monitor": monitor})
    if console is not None:  # what was read, and how (a table's columns may have been detected, not named)
        console.print(f"data: {data.source}; train/val/test {len(splits['train'])}/{len(splits['val'])}/"
                      f"{len(splits['test'])}", markup=False, highlight=False)
        if why:
            console.print(why, markup=False, highlight=False)
    for note in [*data.warnings, *split_notes]:
        if warn is not None:
            warn(note)
        elif console is not None:
            console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    return cfg, data, splits


def _build(cfg: RunConfig, strategy: Any, data: Any, splits: dict) -> tuple[Any, Any, Any, list]:
    """The backbone (seeded, refused when of the other modality), its preprocessing and pipeline, and the
    strategy's phases."""
    check_model_modality(cfg.model.name, None, data, cfg.data.source)
    _seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    if strategy.builds_backbone:
        backbone = strategy.build_backbone(cfg, data, splits)
    else:
        backbone = create_backbone(cfg.model.name, num_classes=len(data.classes),
                                   pretrained=cfg.model.pretrained and not strategy.reinitialize,
                                   dropout=cfg.model.dropout or 0.0, pooling=cfg.model.pooling,
                                   compact=strategy.compact)
    backbone.build_seconds = time.perf_counter() - t0 if strategy.builds_backbone else 0.0  # a fit (a vocabulary)
    check_model_modality(cfg.model.name, backbone.modality, data, cfg.data.source)
    pre = make_preprocessing(data, backbone, image_size=cfg.data.image_size, max_length=cfg.data.max_length)
    pipeline = Pipeline(data, splits, pre, tokenizer=getattr(backbone, "tokenizer", None),
                        augment=cfg.data.augment, hflip=cfg.data.hflip, batch_size=cfg.data.batch_size,
                        task=tasks.for_data(data, splits["train"], loss=cfg.train.regression_loss))
    strategy.prepare(backbone, cfg)
    phases = strategy.phases(cfg, len(backbone.layer_groups()))  # checks e.g. unfreeze against the backbone
    return backbone, pre, pipeline, phases


def _fit(cfg: RunConfig, backbone: Any, pipeline: Any, strategy: Any, run_dir: Path | None, *, progress: bool,
         console: Any, on_epoch_end: Callable | None, phases: list, callbacks: list) -> tuple[Any, int]:
    """The fit and the peak memory it took; a failure is recorded in status.json (an allocation failure as the
    batch size to try, raised as one line)."""
    with PeakMemory() as mem:
        try:
            steps = strategy.direct_fit(backbone, pipeline, cfg)
            if steps is not None:  # no gradient steps: the strategy's own fit, recorded as the loop would
                result = fit_direct(steps, run_dir=run_dir, console=console if progress else None,
                                    on_epoch_end=on_epoch_end, seconds_before=backbone.build_seconds,
                                    callbacks=callbacks, metric=metric_name(cfg.train.monitor))
            else:  # loop.fit looked up at call time: tests replace it
                result = loop.fit(backbone=backbone, pipeline=pipeline, strategy=strategy, cfg=cfg, run_dir=run_dir,
                                  progress=progress, console=console, on_epoch_end=on_epoch_end, phases=phases,
                                  callbacks=callbacks)
        except KeyboardInterrupt:
            raise  # train_run records the interruption (wherever in the run it lands)
        except BaseException as exc:
            oom = memory_error_message(exc, batch_size=cfg.data.batch_size)
            write_status(run_dir, "failed", error=(oom or str(exc))[:500])
            if oom is not None:
                raise AjusteError(oom) from exc
            raise
    return result, mem.peak


def _summary(cfg: RunConfig, strategy: Any, data: Any, splits: dict, result: Any, backbone: Any, *,
             trainable: int, peak: int) -> dict[str, Any]:
    built = sum(seconds for seconds, here in result.cache_costs.values() if here)
    reused = sum(seconds for seconds, here in result.cache_costs.values() if not here)
    return {
        "status": "complete",
        "model": backbone.name if strategy.builds_backbone else cfg.model.name,
        "strategy": strategy.name,
        "modality": data.modality,
        "source": str(cfg.data.source),
        "fraction": cfg.data.fraction,
        "seed": cfg.train.seed,
        "n_train": int(len(splits["train"])),
        "n_val": int(len(splits["val"])),
        "n_test": int(len(splits["test"])),
        "classes": list(data.classes),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch + 1,
        "stopped_by": result.stopped_by or "completed",
        "val_loss": result.best_val_loss,
        "val_accuracy": result.best_val_accuracy,
        # the metric the run was judged on (train.monitor) and its value at the kept epoch
        "task": data.task,
        "metric": cfg.train.monitor,
        "val_score": result.best_val_score,
        "class_balance": cfg.train.class_balance,
        # kept weights that average the last epochs of a phase (strategy.stage2_average), with their validation
        "averaged": result.averaged,
        "train_seconds": round(result.seconds, 2),
        # the frozen layers' passes that filled the activation cache: computed here, or found computed by another
        # run (a study's cells share them); cost_seconds is what this run would take on its own
        "cache_seconds": round(built, 2),
        "cache_reused_seconds": round(reused, 2),
        "cost_seconds": round(result.seconds + built + reused, 2),
        # a run repeats bit for bit only at the same thread count (one count unless a study shared idle cores)
        "threads": sorted({h.threads for h in result.history}),
        "trainable_params": trainable,
        "total_params": backbone.total_parameters(),
        "peak_memory_mb": round(peak / 2**20, 1),
    }


def _save(run_dir: Path, cfg: RunConfig, strategy: Any, backbone: Any, classes: list[str],
          summary: dict[str, Any]) -> None:
    """The weights, then summary.json (its presence marks the run complete), then the status; the checkpoint
    goes last."""
    # the tensors it trained, plus a reference to the base weights for the rest (stored_weights)
    ref = stored_weights.save(run_dir / "model.safetensors", backbone, weights_metadata(classes),
                              pretrained=strategy.starts_pretrained(cfg))
    if ref is not None:
        summary["weights_base"] = {k: ref[k] for k in ("model", "tensors", "bytes")}
    summary["weights_sha256"] = weights_digest(run_dir / "model.safetensors")  # load_run refuses another file
    atomic_write_json(run_dir / "summary.json", summary)
    write_status(run_dir, "complete")
    shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)


def _worker_run(cfg: RunConfig, run_dir: Path | None, backbone: Any, pipeline: Any, strategy: Any,
                on_epoch_end: Callable | None, phases: list) -> RunResult:
    """A data-parallel worker other than rank 0: the same fit (every collective matched), no files."""
    result = loop.fit(backbone=backbone, pipeline=pipeline, strategy=strategy, cfg=cfg, run_dir=run_dir,
                      progress=False, console=None, on_epoch_end=on_epoch_end, phases=phases)
    w = distributed.world()
    summary = {"status": "interrupted" if result.interrupted else "complete", "worker": w.rank,
               "epochs": len(result.history), "val_loss": result.best_val_loss,
               "val_accuracy": result.best_val_accuracy}
    return RunResult(run_dir, cfg, summary, backbone, pipeline)


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
