"""Run a study: every cell is an ``ajuste train`` run on the same fixed splits.

Study directory::

    study.json        the spec (refuses to mix results of another data set/model/config)
    splits.json       train/val/test indices shared by every cell (test never used for selection)
    fingerprint.json  the examples by content (ajuste.data.fingerprint): a resume on edited data is refused
    similarity.json   domain-similarity measurement (pretrained vs random features)
    results.jsonl     one line per finished cell (appended, fsynced); finished cells are skipped on resume
    spent.json        wall seconds the study has run so far (what a --budget counts on resume)
    runs/<cell>/      each cell's run directory (an unfinished one resumes from its checkpoint)
    cache/            frozen-layer activations shared by the cells (ajuste.train.cache; safe to delete)
    report.html, *.png, results.md, best_model/ (a copy of the winning run, usable by `ajuste predict`)
"""

from __future__ import annotations

import json
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ajuste import locks
from ajuste.config import RunConfig
from ajuste.data import fingerprint
from ajuste.errors import AjusteError, terminated
from ajuste.io import append_jsonl, atomic_write_json, read_jsonl
from ajuste.strategies.base import get_strategy
from ajuste.study.spec import Cell, StudySpec
from ajuste.study.workers import InlineCells, Job, WorkerCells, auto_workers, usable_cores


@dataclass
class StudyResult:
    study_dir: Path
    spec: StudySpec
    records: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    similarity: dict[str, Any] | None = None
    advice: dict[str, Any] | None = None
    seconds: float = 0.0


def _cost_rank(strategy: str) -> float:
    """Relative cost of a training example-epoch of ``strategy`` (``Strategy.cost_rank``)."""
    return get_strategy(strategy).cost_rank


def base_config(spec: StudySpec) -> RunConfig:
    raw = {"data.source": spec.source, "model.name": spec.model, "data.split_seed": spec.split_seed}
    if spec.text_col:
        raw["data.text_col"] = spec.text_col
    if spec.label_col:
        raw["data.label_col"] = spec.label_col
    return RunConfig().override(raw).override(list(spec.sets))


def cell_config(spec: StudySpec, cell: Cell) -> RunConfig:
    return base_config(spec).override({"strategy.name": cell.strategy, "data.fraction": cell.fraction,
                                       "train.seed": cell.seed})


def _check_study_dir(study_dir: Path, spec: StudySpec) -> None:
    path = study_dir / "study.json"
    if not path.is_file():
        if study_dir.exists() and any(p for p in study_dir.iterdir() if not p.name.startswith(".")):
            raise AjusteError(f"{study_dir} is not empty and is not an ajuste study; use another --out")
        return
    old = StudySpec.load(path)
    a, b = old.identity(), spec.identity()
    if a != b:
        if not (study_dir / "results.jsonl").is_file() and not any((study_dir / "runs").glob("*")):
            # No cell ever started (stopped by an error in its settings or data, or a Ctrl-C before the first
            # cell): nothing to keep, so the corrected command starts afresh. The files derived from the old
            # spec's data go with it.
            for name in ("splits.json", "fingerprint.json", "similarity.json", "spent.json", "skipped.json"):
                (study_dir / name).unlink(missing_ok=True)
            return
        diff = ", ".join(f"{k}: {a[k]!r} → {b[k]!r}" for k in a if a[k] != b[k])
        raise AjusteError(f"{study_dir} holds a study of other data or settings ({diff}); use another --out")


def plan_cells(spec: StudySpec, done: set[str]) -> list[Cell]:
    """Cheapest first: small fractions before large ones, cheap strategies before costly ones, seed 0 of
    every (strategy, fraction) before extra seeds — so a budget cut keeps the widest picture."""
    todo = [c for c in spec.cells() if c.key not in done]
    return sorted(todo, key=lambda c: (c.seed > 0, c.fraction, _cost_rank(c.strategy), c.seed))


class CostModel:
    """Seconds per (training example × planned epoch) by strategy, learned from finished cells."""

    def __init__(self) -> None:
        self.rates: dict[str, float] = {}

    def observe(self, strategy: str, n_train: int, seconds: float, epochs: int) -> None:
        rate = seconds / max(1, n_train * max(1, epochs))
        old = self.rates.get(strategy)
        self.rates[strategy] = rate if old is None else max(old, rate)  # pessimistic: budgets are promises

    def estimate(self, strategy: str, n_train: int, epochs: int) -> float | None:
        if strategy in self.rates:
            return self.rates[strategy] * n_train * epochs
        known = {s: r / _cost_rank(s) for s, r in self.rates.items()}
        if not known:
            return None
        return max(known.values()) * _cost_rank(strategy) * n_train * epochs


def run_study(*, spec: StudySpec, study_dir: Path, console: Any = None, progress: bool = True,
              similarity: bool = True, on_cell_end: Callable[[dict], None] | None = None,
              workers: int | None = None, share_idle_cores: bool = False) -> StudyResult:
    """``workers``: cells trained at once in worker processes (None or 0: one per core on a CPU, see
    ajuste.study.workers; 1: one after the other in this process). ``share_idle_cores``: the cores of idle
    workers go to the cells still running (sooner done; those cells' numbers then depend on timing).

    This process holds the study directory's lock throughout (a second `ajuste compare` on it is refused in
    one line); each cell's run directory is locked by the process that trains it."""
    with locks.hold(study_dir, what="study", remove_if_unused=True):
        return _run_study(spec=spec, study_dir=study_dir, console=console, progress=progress,
                          similarity=similarity, on_cell_end=on_cell_end, workers=workers,
                          share_idle_cores=share_idle_cores)


def _run_study(*, spec: StudySpec, study_dir: Path, console: Any, progress: bool, similarity: bool,
               on_cell_end: Callable[[dict], None] | None, workers: int | None,
               share_idle_cores: bool) -> StudyResult:
    from ajuste.train.run import check_same_data, check_writable, prepare_data

    t0 = time.perf_counter()
    study_dir = Path(study_dir)
    _check_study_dir(study_dir, spec)
    cfg0 = base_config(spec)  # bad --set values fail here, before the study directory is made
    for cell in spec.cells():
        cell_config(spec, cell)
    check_writable(study_dir)  # here, not in a worker: a full disk is one line before any cell starts
    atomic_write_json(study_dir / "study.json", spec.to_dict())

    data, splits = prepare_data(cfg0)
    splits_path = study_dir / "splits.json"
    if splits_path.is_file():
        # by content first: an edited row keeps the row numbers, so equal splits alone prove nothing
        check_same_data(study_dir, data, splits, data.source, what="the study", fix="use another --out")
        saved = {k: np.asarray(v) for k, v in json.loads(splits_path.read_text()).items()}
        if any(not np.array_equal(saved[k], splits[k]) for k in ("train", "val", "test")):
            raise AjusteError(f"{study_dir}: the data changed since the study started (splits differ); "
                              f"use another --out")
    else:
        atomic_write_json(splits_path, {k: np.asarray(v).tolist() for k, v in splits.items()})
        atomic_write_json(study_dir / fingerprint.FINGERPRINT_FILE, fingerprint.fingerprint(data, splits))
    _say(console, f"study of {spec.model} on {data.source}: {len(data)} examples, {len(data.classes)} classes, "
                  f"train/val/test {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])}")
    for w in data.warnings:
        _say(console, f"[yellow]warning:[/] {w}")
    n_classes = len(data.classes)
    for f in spec.fractions:
        n = int(round(f * len(splits["train"])))
        if n < n_classes:
            _say(console, f"fraction {f:g} gives {n} examples for {n_classes} classes: raised to one per class")

    results_path = study_dir / "results.jsonl"
    records = read_jsonl(results_path)
    done = {r["cell"] for r in records}
    planned = plan_cells(spec, done)
    cost = CostModel()
    for r in records:
        cost.observe(r["strategy"], r["n_train"], r["train_seconds"], r.get("planned_epochs", r["epochs"]))
    if done:
        _say(console, f"resuming: {len(done)} finished cells kept, {len(planned)} to run")
    budget = spec.budget_seconds
    # Wall time of earlier runs of this study (cells side by side overlap: their wall seconds do not add up).
    spent_path = study_dir / "spent.json"
    spent_before = json.loads(spent_path.read_text())["seconds"] if spent_path.is_file() else \
        sum(r.get("wall_seconds", 0.0) for r in records)
    skipped: list[dict[str, Any]] = []
    started = time.perf_counter()
    by_key: dict[str, Cell] = {}
    # (training examples, planned epochs) of each cell to run: read by the ordering, the budget and the records.
    sizes = {c.key: _cell_size(spec, c, splits, data) for c in planned}
    planned_epochs = {k: e for k, (_, e) in sizes.items()}

    def take(job: Job, summary: dict[str, Any]) -> None:
        cell = by_key[job.key]
        rec = _record(cell, summary, job.run_dir, planned_epochs[cell.key])
        append_jsonl(results_path, rec)
        records.append(rec)
        atomic_write_json(spent_path, {"seconds": round(spent_before + time.perf_counter() - started, 1)})
        cost.observe(cell.strategy, rec["n_train"], rec["train_seconds"], planned_epochs[cell.key])
        _say(console, f"{cell.key:<28} test acc {rec['test_accuracy']:.4f}  F1 {rec['test_macro_f1']:.4f}  "
                      f"{rec['train_seconds']:.0f}s  ({rec['epochs']} epochs)")
        if on_cell_end is not None:
            on_cell_end(rec)

    # Every cell trains on cores/width threads, the width counted on the whole study (not on the cells left,
    # nor on which neighbours are still running): a cell's numbers then do not depend on timing or on a
    # resume (float sums over another number of threads round differently; see ajuste.study.workers).
    n_cells = len(spec.cells())
    width = max(1, min(auto_workers(n_cells) if workers is None or workers <= 0 else workers, n_cells))
    threads = max(1, usable_cores() // width)
    workers = max(1, min(width, len(planned)))
    if workers > 1 and budget is None:
        planned = longest_first(planned, sizes)  # no budget to protect: finish soonest
    if workers > 1 and planned:
        _say(console, f"{workers} cells at a time, {threads} thread(s) each"
                      + (" (idle cores shared out)" if share_idle_cores else ""))
        init = {"make_runner": _cell_runner, "spec": spec.to_dict(), "splits": splits, "study_dir": str(study_dir)}
        cells = WorkerCells(workers, init=init, threads=threads, share_idle=share_idle_cores)
    else:
        cells = InlineCells(lambda job: _train_cell(job, data, splits, study_dir),
                            threads=threads if width > 1 and not share_idle_cores else None)

    try:  # after the workers started: they import and load the data meanwhile
        sim = _similarity(study_dir, spec, data, splits, cfg0, console) if similarity else None
    except BaseException:
        cells.close()
        raise

    pending = list(planned)
    with _progress(progress, console) as bar:
        task = bar.add_task("study", total=len(planned)) if bar else None
        try:
            while pending or cells.running():
                while pending and cells.free():
                    cell = pending.pop(0)
                    cfg = cell_config(spec, cell)
                    n_train, epochs = sizes[cell.key]
                    if budget is not None:
                        left = budget - spent_before - (time.perf_counter() - started)
                        est = cost.estimate(cell.strategy, n_train, epochs)
                        if est is None and cells.running():  # no cost known yet: measure one cell first
                            pending.insert(0, cell)
                            break
                        if est is not None and est > left:
                            skipped.append({"cell": cell.key, "estimate_seconds": round(est, 1),
                                            "left_seconds": round(max(0.0, left), 1)})
                            if bar:
                                bar.update(task, advance=1)
                            continue
                    cells.submit(Job(cell.key, cfg, study_dir / "runs" / cell.key))
                    by_key[cell.key] = cell
                if not cells.running():
                    continue  # every cell left was skipped by the budget
                if bar:
                    bar.update(task, description=" + ".join(cells.running()))
                for job, summary in cells.wait():
                    if summary.get("status") != "complete":
                        raise KeyboardInterrupt
                    take(job, summary)
                    if bar:
                        bar.update(task, advance=1)
        except KeyboardInterrupt:
            if terminated():
                cells.terminate()
            else:
                _finish_interrupted(cells, console, take)
            raise
        finally:
            cells.close()
    if skipped:
        atomic_write_json(study_dir / "skipped.json", skipped)
        first = ", ".join(s["cell"] for s in skipped[:6])
        more = f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
        _say(console, f"[yellow]budget:[/] skipped {len(skipped)} cells that would not fit: {first}{more}")
        if not records:
            need = min(s["estimate_seconds"] for s in skipped)
            raise AjusteError(f"--budget is too small for even one cell (the cheapest needs about {need:.0f}s); "
                              f"raise --budget")
    return StudyResult(study_dir, spec, records, skipped, sim, None, time.perf_counter() - t0)


def _similarity(study_dir: Path, spec: StudySpec, data: Any, splits: dict, cfg0: RunConfig,
                console: Any) -> dict[str, Any]:
    """The domain-similarity measurement, once per study directory."""
    from ajuste.strategies.base import resolve_config
    from ajuste.study.similarity import measure_similarity

    sim_path = study_dir / "similarity.json"
    if sim_path.is_file():
        return json.loads(sim_path.read_text())
    _say(console, "measuring domain similarity (pretrained vs random features)...")
    sim = measure_similarity(model=spec.model, data=data, splits=splits, cfg=resolve_config(cfg0, data.modality))
    atomic_write_json(sim_path, sim)
    _say(console, f"similarity {sim['similarity']}: probe accuracy {sim['pretrained']['probe_accuracy']:.3f} "
                  f"pretrained vs {sim['random']['probe_accuracy']:.3f} random; LogME "
                  f"{sim['pretrained']['logme']:.3f} vs {sim['random']['logme']:.3f} ({sim['seconds']}s)")
    return sim


def _train_cell(job: Job, data: Any, splits: dict, study_dir: Path, stop: Callable[[], bool] | None = None) -> dict:
    """Train one cell (or pick up its summary if it finished before the study could record it)."""
    from ajuste.train.cache import shared_dir
    from ajuste.train.run import read_summary, train_run

    summary = read_summary(job.run_dir)  # finished but not yet recorded (killed in between)
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
                summary = train_run(cfg=cfg, out=job.run_dir, data=data, splits=splits, progress=False,
                                    on_epoch_end=on_epoch_end if stop is not None else None,
                                    overwrite=overwrite).summary
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


def _halved(cfg: RunConfig, exc: BaseException) -> RunConfig | None:
    """After running out of memory: the same effective batch as half the batch size and twice the gradient
    accumulation, or None (another error, or a batch of one already)."""
    from ajuste.train.run import memory_error_message

    b = cfg.data.batch_size
    if b < 2 or memory_error_message(exc, batch_size=b) is None:
        return None
    return cfg.override({"data.batch_size": b // 2, "train.grad_accum": cfg.train.grad_accum * 2})


def _retry_path(job: Job) -> Path:
    """Beside the cell's run directory (an --overwrite of the run clears what is inside it)."""
    return Path(job.run_dir).parent / f".{Path(job.run_dir).name}.oom-retry.json"


def _read_retry(job: Job) -> dict[str, int] | None:
    path = _retry_path(job)
    if not path.is_file():
        return None
    from ajuste.io import read_json

    rec = read_json(path, "delete it: the cell then starts again at the study's batch size")
    return rec if isinstance(rec, dict) and {"batch_size", "grad_accum"} <= set(rec) else None


def _cell_runner(init: dict[str, Any]) -> Callable[[Job, Callable[[], bool]], dict]:
    """In a worker process: load the data once, then train the cells it is sent."""
    from ajuste.train.run import prepare_data

    spec = StudySpec.from_dict(init["spec"])
    data, _ = prepare_data(base_config(spec), splits=init["splits"])
    return lambda job, stop: _train_cell(job, data, init["splits"], init["study_dir"], stop)


def _finish_interrupted(cells: Any, console: Any, take: Callable[[Job, dict], None]) -> None:
    """Ctrl-C: each running cell finishes its epoch and checkpoints; cells that completed meanwhile are kept."""
    if not cells.running():
        return
    _say(console, "stopping: the running cells finish their epoch and checkpoint (Ctrl-C again: stop at once)")
    cells.interrupt()
    try:
        while cells.running():
            for job, summary in cells.wait():
                if summary.get("status") == "complete":
                    take(job, summary)
    except KeyboardInterrupt:  # the second Ctrl-C: the workers are killed on close (checkpoints stay)
        pass


def longest_first(cells: list[Cell], sizes: dict[str, tuple[int, int]]) -> list[Cell]:
    """Largest expected cost first (cost rank × examples × planned epochs): with cells side by side the
    study ends when its longest cell does, so that one starts at once."""
    def cost(c: Cell) -> float:
        n, epochs = sizes[c.key]
        return _cost_rank(c.strategy) * n * epochs

    return sorted(cells, key=cost, reverse=True)


def _cell_size(spec: StudySpec, cell: Cell, splits: dict, data: Any) -> tuple[int, int]:
    """(training examples, planned epochs) of one cell."""
    from ajuste.strategies.base import resolve_config

    n = _fraction_size(cell.fraction, splits, data.labels, spec.split_seed)
    return n, _planned_epochs(resolve_config(cell_config(spec, cell), data.modality), n)


def _fraction_size(fraction: float, splits: dict, labels: np.ndarray, seed: int) -> int:
    from ajuste.data.splits import take_fraction

    if fraction == 1.0:
        return int(len(splits["train"]))
    return int(len(take_fraction(splits["train"], labels, fraction, seed=seed)))


def _planned_epochs(cfg: RunConfig, n_train: int) -> int:
    """Planned full passes over the training data (upper bound: early stopping usually cuts it)."""
    from ajuste.train.loop import stretch_phases

    spe = max(1, -(-n_train // cfg.data.batch_size))
    strategy = get_strategy(cfg.strategy.name)
    phases = strategy.phases(cfg, strategy.planning_groups(cfg))
    phases = stretch_phases(phases, spe, cfg.train.min_steps)
    # Head-only phases run on cached features: nearly free next to a full pass.
    return max(1, sum(p.epochs * p.repeat for p in phases if not p.head_only))


def _record(cell: Cell, s: dict[str, Any], run_dir: Path, planned_epochs: int) -> dict[str, Any]:
    hist = read_jsonl(run_dir / "metrics.jsonl")
    return {
        "cell": cell.key, "strategy": cell.strategy, "fraction": cell.fraction, "seed": cell.seed,
        "n_train": s["n_train"], "n_val": s.get("n_val"), "test_accuracy": s["test_accuracy"], "test_macro_f1": s["test_macro_f1"],
        "val_accuracy": s["val_accuracy"], "val_loss": s["val_loss"], "train_seconds": s["train_seconds"],
        "wall_seconds": s["wall_seconds"], "trainable_params": s["trainable_params"],
        "total_params": s["total_params"], "peak_memory_mb": s["peak_memory_mb"], "epochs": s["epochs"],
        "best_epoch": s["best_epoch"], "planned_epochs": planned_epochs, "threads": s.get("threads"),
        "run_dir": str(Path("runs") / cell.key),
        "confusion": s["test"]["confusion"],
        # out of GPU memory at the study's batch size: trained at a smaller one with gradient accumulation
        "oom_retry": s.get("oom_retry"),
        "history": [{k: h[k] for k in ("epoch", "phase", "train_loss", "val_loss", "val_accuracy", "seconds")}
                    for h in hist],
    }


def export_best(study_dir: Path, best_cell: str) -> Path:
    """Copy the winning run to ``best_model/`` (a plain run directory: `ajuste predict` takes it)."""
    src = Path(study_dir) / "runs" / best_cell
    if not (src / "model.safetensors").is_file():
        raise AjusteError(f"{src}, the run of the recommended cell, is missing or has no weights, so there is no "
                          f"model to hand over; restore it, or run the study again with another --out")
    dst = Path(study_dir) / "best_model"
    tmp = Path(study_dir) / ".best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", locks.LOCK_NAME))
    from ajuste.train import stored_weights

    stored_weights.materialise(tmp)  # the model handed over stands alone: its base weights written in, in full
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def _say(console: Any, msg: str) -> None:
    if console is not None:
        console.print(msg, highlight=False)


def _progress(enabled: bool, console: Any):
    from ajuste.train.loop import _progress as progress_bar

    return progress_bar(enabled, console)
