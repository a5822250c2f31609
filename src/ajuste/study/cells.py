"""One cell of a study (a strategy at a training fraction and seed): its config, size and planned epochs, its
training (retried at half the batch size with twice the accumulation when it runs out of memory) and the record
the study keeps of it."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ajuste.config import RunConfig
from ajuste.data.splits import take_fraction
from ajuste.io import atomic_write_json, read_json, read_jsonl
from ajuste.metrics import higher_is_better, metric_name
from ajuste.strategies.base import ARM_VARIANTS, arm_strategy, get_strategy, resolve_config, split_arm
from ajuste.study.advice import cost
from ajuste.study.spec import Cell, StudySpec
from ajuste.study.workers import Job
from ajuste.tasks import TASK_METRICS
from ajuste.training import run as train_runs
from ajuste.training import tracking, tracking_store
from ajuste.training.cache import shared_dir
from ajuste.training.loop import stretch_phases


def cost_rank(strategy: str) -> float:
    """Relative cost of a training example-epoch of ``strategy`` (``Strategy.cost_rank``)."""
    return arm_strategy(strategy).cost_rank


def base_config(spec: StudySpec) -> RunConfig:
    raw = {"data.source": spec.source, "model.name": spec.model, "data.split_seed": spec.split_seed}
    if spec.text_col:
        raw["data.text_col"] = spec.text_col
    if spec.label_col:
        raw["data.label_col"] = spec.label_col
    cfg = RunConfig().override(raw).override(list(spec.sets))
    if spec.monitor is not None and cfg.train.monitor == "auto":
        cfg = cfg.override({"train.monitor": spec.monitor})
    return cfg


def cell_config(spec: StudySpec, cell: Cell, *, max_seconds: float | None = None) -> RunConfig:
    """``max_seconds``: the cell's time limit under a budget (train.max_seconds; a resume compares configs
    without it)."""
    strategy, variant = split_arm(cell.strategy)
    over: dict[str, Any] = {"strategy.name": strategy, "data.fraction": cell.fraction, "train.seed": cell.seed,
                            **(ARM_VARIANTS[variant] if variant else {})}
    if max_seconds is not None:
        over["train.max_seconds"] = max_seconds
    return base_config(spec).override(over)


def train_cell(job: Job, data: Any, splits: dict, study_dir: Path, stop: Callable[[], bool] | None = None) -> dict:
    """Train one cell (or pick up its summary if it finished before the study could record it)."""
    summary = train_runs.read_summary(job.run_dir)  # finished but not yet recorded (killed in between)
    if summary is not None and summary.get("status") == "complete":
        retried = _read_retry(job)
        return {**summary, "oom_retry": retried} if retried else summary
    if stop is not None and stop():  # Ctrl-C before the cell began
        return {"status": "interrupted"}

    def on_epoch_end(rec: Any, result: Any) -> None:
        if stop is not None and stop():  # the study's Ctrl-C: the loop checkpoints and stops after this epoch
            signal.raise_signal(signal.SIGINT)

    # Cells share frozen-layer activations (seeds, and strategies cut at the same layer) in memory and,
    # across processes and restarts, through study_dir/cache.
    cfg, retry = job.cfg, _read_retry(job)
    if retry is not None:  # an earlier run of the study retried this cell at a smaller batch: resume that run
        cfg = job.cfg.override({"data.batch_size": retry["batch_size"], "train.grad_accum": retry["grad_accum"]})
    overwrite = False
    with shared_dir(Path(study_dir) / "cache"):
        while True:
            try:
                summary = train_runs.train_run(cfg=cfg, out=job.run_dir, data=data, splits=splits, progress=False,
                                    on_epoch_end=on_epoch_end if stop is not None else None,
                                    overwrite=overwrite, track=cell_tracking(job, study_dir)).summary
                break
            except Exception as exc:  # noqa: BLE001 - only running out of memory is retried; the rest re-raised
                smaller = _halved(cfg, exc)
                if smaller is None:
                    raise
                cfg, overwrite = smaller, True  # the larger batch's partial run is of another config
                retry = {"asked_batch_size": job.cfg.data.batch_size, "batch_size": cfg.data.batch_size,
                         "grad_accum": cfg.train.grad_accum}
                atomic_write_json(_retry_path(job), retry)
    if retry is not None:
        summary = {**summary, "oom_retry": retry}
    return summary


def cell_tracking(job: Job, study_dir: Path) -> tracking.TrackingContext:
    """A cell's run in MLflow: in the study's experiment (named after its directory), nested in the study's run
    (read from the study directory: a cell in a worker process logs itself)."""
    study_dir = Path(study_dir).resolve()
    return tracking.TrackingContext(experiment=study_dir.name, run_name=job.key,
                                    parent_run_id=tracking_store.saved_run_id(study_dir),
                                    tags={"ajuste.study": str(study_dir), "ajuste.cell": job.key})


def _halved(cfg: RunConfig, exc: BaseException) -> RunConfig | None:
    """After running out of memory: the same effective batch as half the batch size and twice the gradient
    accumulation, or None (another error, or a batch of one already)."""
    b = cfg.data.batch_size
    if b < 2 or train_runs.memory_error_message(exc, batch_size=b) is None:
        return None
    return cfg.override({"data.batch_size": b // 2, "train.grad_accum": cfg.train.grad_accum * 2})


def _retry_path(job: Job) -> Path:
    """Beside the cell's run directory (an --overwrite of the run clears what is inside it)."""
    return Path(job.run_dir).parent / f".{Path(job.run_dir).name}.oom-retry.json"


def _read_retry(job: Job) -> dict[str, int] | None:
    path = _retry_path(job)
    if not path.is_file():
        return None
    rec = read_json(path, "delete it: the cell then starts again at the study's batch size")
    return rec if isinstance(rec, dict) and {"batch_size", "grad_accum"} <= set(rec) else None


def cell_runner(init: dict[str, Any]) -> Callable[[Job, Callable[[], bool]], dict]:
    """In a worker process: load the data once, then train the cells it is sent."""
    spec = StudySpec.from_dict(init["spec"])
    data, _ = train_runs.prepare_data(base_config(spec), splits=init["splits"])
    return lambda job, stop: train_cell(job, data, init["splits"], init["study_dir"], stop)


def longest_first(cells: list[Cell], sizes: dict[str, tuple[int, int]]) -> list[Cell]:
    """Largest expected cost first (cost rank × examples × planned epochs): with cells side by side the
    study ends when its longest cell does, so that one starts at once."""
    def cost(c: Cell) -> float:
        n, epochs = sizes[c.key]
        return cost_rank(c.strategy) * n * epochs

    return sorted(cells, key=cost, reverse=True)


def cell_size(spec: StudySpec, cell: Cell, splits: dict, data: Any) -> tuple[int, int]:
    """(training examples, planned epochs) of one cell."""
    n = _fraction_size(cell.fraction, splits, data.labels, spec.split_seed)
    return n, _planned_epochs(resolve_config(cell_config(spec, cell), data.modality), n)


def _fraction_size(fraction: float, splits: dict, labels: np.ndarray, seed: int) -> int:
    if fraction == 1.0:
        return int(len(splits["train"]))
    return int(len(take_fraction(splits["train"], labels, fraction, seed=seed)))


def _planned_epochs(cfg: RunConfig, n_train: int) -> int:
    """Planned full passes over the training data (upper bound: early stopping usually cuts it)."""
    spe = max(1, -(-n_train // cfg.data.batch_size))
    strategy = get_strategy(cfg.strategy.name)
    phases = strategy.phases(cfg, strategy.planning_groups(cfg))
    phases = stretch_phases(phases, spe, cfg.train.min_steps)
    # Head-only phases run on cached features: nearly free next to a full pass.
    return max(1, sum(p.epochs * p.repeat for p in phases if not p.head_only))


def cell_record(cell: Cell, s: dict[str, Any], run_dir: Path, planned_epochs: int) -> dict[str, Any]:
    hist = read_jsonl(run_dir / "metrics.jsonl")
    # the study ranks on train.monitor's metric; a run that picked its epochs by loss is ranked on accuracy
    # (its task's first metric for multi-label and regression, measured on validation after the run:
    # summary "val_metrics"). An error such as RMSE is recorded negated (and shown positive again by the report:
    # scores.shown), so that every ranking of the study takes the highest score.
    monitor = metric_name(s.get("metric", "accuracy"))
    metric = TASK_METRICS[s.get("task", "classification")][0] if monitor == "loss" else monitor
    sign = 1.0 if higher_is_better(metric) else -1.0
    if metric == "accuracy":
        val = s["val_accuracy"]
    elif monitor != "loss":
        val = s["val_score"]
    elif "val_metrics" in s:
        val = s["val_metrics"][metric]
    else:  # a run from before val_metrics: its loss, the one validation number it has (still lower is better)
        val, sign = s["val_loss"], -1.0
    return {
        "metric": metric, "val_score": sign * val,
        "test_score": sign * s["test"].get(metric, float("nan")), "class_balance": s.get("class_balance", "none"),
        "cell": cell.key, "strategy": cell.strategy, "fraction": cell.fraction, "seed": cell.seed,
        "n_train": s["n_train"], "n_val": s.get("n_val"), "test_accuracy": s["test_accuracy"], "test_macro_f1": s["test_macro_f1"],
        "val_accuracy": s["val_accuracy"], "val_loss": s["val_loss"], "train_seconds": s["train_seconds"],
        # what the arm costs on its own (frozen passes included, whoever computed them), and what sharing saved
        "cost_seconds": cost(s),
        "shared_seconds": s.get("cache_reused_seconds", 0.0),
        "wall_seconds": s["wall_seconds"], "trainable_params": s["trainable_params"],
        "total_params": s["total_params"], "peak_memory_mb": s["peak_memory_mb"], "epochs": s["epochs"],
        "best_epoch": s["best_epoch"], "planned_epochs": planned_epochs, "threads": s.get("threads"),
        # a budget's time limit cut its training short (train.max_seconds): never shown as finished normally
        "stopped_by": s.get("stopped_by", "completed"), "stopped_early": s.get("stopped_by") == "time limit",
        "run_dir": str(Path("runs") / cell.key),
        "confusion": s["test"].get("confusion"),  # None for multi-label and regression
        "calibration": s.get("calibration"),  # temperature and ECE before/after scaling (training/calibration.py)
        # out of GPU memory at the study's batch size: trained at a smaller one with gradient accumulation
        "oom_retry": s.get("oom_retry"),
        "history": [{k: h[k] for k in ("epoch", "phase", "train_loss", "val_loss", "val_accuracy", "seconds")}
                    for h in hist],
    }
