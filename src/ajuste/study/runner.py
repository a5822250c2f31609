"""Run a study: every cell is an ``ajuste train`` run on the same fixed splits.

Study directory::

    study.json        the spec (refuses to mix results of another data set/model/config)
    splits.json       train/val/test indices shared by every cell (test never used for selection)
    fingerprint.json  the examples by content (ajuste.data.fingerprint): a resume on edited data is refused
    similarity.json   domain-similarity measurement (pretrained vs random features)
    results.jsonl     one line per finished cell (appended, fsynced); finished cells are skipped on resume
    spent.json        wall seconds the study has run so far (what a --budget counts on resume)
    skipped.json      the cells a --budget did not run, with why (the planner: ajuste.study.planner)
    runs/<cell>/      each cell's run directory (an unfinished one resumes from its checkpoint)
    cache/            frozen-layer activations shared by the cells (ajuste.training.cache; safe to delete)
    report.html, *.png, results.md, best_model/ (a copy of the winning run, usable by `ajuste predict`)
"""

from __future__ import annotations

import json
import shutil
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
from ajuste.metrics import resolve_monitor
from ajuste.strategies.base import resolve_config
from ajuste.study.cells import (
    base_config,
    cell_config,
    cell_record,
    cell_runner,
    cell_size,
    cost_rank,
    longest_first,
    train_cell,
)
from ajuste.study.planner import Choice, CostModel, Planner, stopped_early
from ajuste.study.scores import fmt, metric_of
from ajuste.study.similarity import BUDGET_SHARE, measure_similarity
from ajuste.study.spec import Cell, StudySpec
from ajuste.study.workers import (
    InlineCells,
    Job,
    WorkerCells,
    auto_workers,
    usable_cores,
)
from ajuste.training import run as train_runs
from ajuste.training import stored_weights, tracking, tracking_store
from ajuste.training.loop import _progress as progress_bar
from ajuste.training.run_dir import seconds_trained


@dataclass
class StudyResult:
    study_dir: Path
    spec: StudySpec
    records: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    similarity: dict[str, Any] | None = None
    advice: dict[str, Any] | None = None
    seconds: float = 0.0
    mlflow_run_id: str | None = None  # the study's own MLflow run (train.log_to: mlflow), its cells nested in it


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
    """Without a budget, the order the cells run in: cheapest first, small fractions before large ones, cheap
    strategies before costly ones, seed 0 of every (strategy, fraction) before extra seeds. With a budget the
    planner (ajuste.study.planner) picks each cell instead; this order is then the one it fills in the curve by."""
    todo = [c for c in spec.cells() if c.key not in done]
    return sorted(todo, key=lambda c: (c.seed > 0, c.fraction, cost_rank(c.strategy), c.seed))


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
    t0 = time.perf_counter()
    study_dir = Path(study_dir)
    cfg0, data, splits = _open_study(study_dir, spec, console)
    ledger = _Ledger(study_dir, console, on_cell_end)
    planned = plan_cells(spec, ledger.done)
    if ledger.done:
        _say(console, f"resuming: {len(ledger.done)} finished cells kept, {len(planned)} to run")
    # (training examples, planned epochs) of each cell to run: read by the ordering, the budget and the records.
    sizes = {c.key: cell_size(spec, c, splits, data) for c in planned}
    ledger.planned_epochs = {k: e for k, (_, e) in sizes.items()}
    cells, planned = _start_cells(spec, planned, sizes, data, splits, study_dir, console, workers=workers,
                                  share_idle_cores=share_idle_cores)
    try:  # after the workers started: they import and load the data meanwhile
        # LogME and the probe accuracy score class labels: not measured for multi-label or regression targets
        sim = _similarity(study_dir, spec, data, splits, cfg0, console) \
            if similarity and data.task == "classification" else None
    except BaseException:
        cells.close()
        raise
    planner = None
    if spec.budget_seconds is not None:
        # every (strategy, fraction)'s size: the planner may add seeds beyond the study's to two close arms
        pairs = {(c.strategy, c.fraction): cell_size(spec, c, splits, data) for c in spec.cells() if c.seed == 0}
        planner = Planner(spec, size=lambda c: pairs[(c.strategy, c.fraction)], records=ledger.records,
                          cost=ledger.cost, n_val=len(splits["val"]), left=lambda: ledger.left(spec.budget_seconds),
                          trained=lambda c: seconds_trained(study_dir / "runs" / c.key))
        ledger.planned_epochs.update({Cell(s, f, 0).key: e for (s, f), (_, e) in pairs.items()})
    # The cells' MLflow runs are nested in the study's, in the experiment named after its directory
    tags = {"model": spec.model, "data": str(spec.source), "ajuste.kind": "study"}
    with tracking_store.parent_run(cfg0.train.log_to, study_dir, params=_tracked_spec(spec), tags=tags,
                                   files=("results.jsonl",)) as parent:
        skipped = _run_cells(cells, planned, spec, ledger, study_dir, planner, progress=progress, console=console)
        _report_skipped(study_dir, skipped, ledger.records, console)
    return StudyResult(study_dir, spec, ledger.records, skipped, sim, None, time.perf_counter() - t0, parent)


def _tracked_spec(spec: StudySpec) -> dict[str, str]:
    """What a study's MLflow run shows of it (its cells' runs have each config in full)."""
    return {"strategies": ",".join(spec.strategies), "fractions": ",".join(f"{f:g}" for f in spec.fractions),
            "seeds": str(spec.seeds), "budget_seconds": str(spec.budget_seconds), "sets": " ".join(spec.sets)}


def _open_study(study_dir: Path, spec: StudySpec, console: Any) -> tuple[RunConfig, Any, dict]:
    """Check the study directory and every cell's config, then read the data and fix (or check) its splits."""
    _check_study_dir(study_dir, spec)
    cfg0 = base_config(spec)  # bad --set values fail here, before the study directory is made
    tracking_store.require(cfg0.train.log_to)  # so does a tracker that is not installed
    for cell in spec.cells():
        cell_config(spec, cell)
    train_runs.check_writable(study_dir)  # here, not in a worker: a full disk is one line before any cell starts
    atomic_write_json(study_dir / "study.json", spec.to_dict())

    data, splits = train_runs.prepare_data(cfg0)
    splits_path = study_dir / "splits.json"
    if splits_path.is_file():
        # by content first: an edited row keeps the row numbers, so equal splits alone prove nothing
        train_runs.check_same_data(study_dir, data, splits, data.source, what="the study", fix="use another --out")
        saved = {k: np.asarray(v) for k, v in json.loads(splits_path.read_text()).items()}
        if any(not np.array_equal(saved[k], splits[k]) for k in ("train", "val", "test")):
            raise AjusteError(f"{study_dir}: the data changed since the study started (splits differ); "
                              f"use another --out")
    else:
        atomic_write_json(splits_path, {k: np.asarray(v).tolist() for k, v in splits.items()})
        atomic_write_json(study_dir / fingerprint.FINGERPRINT_FILE, fingerprint.fingerprint(data, splits))
    _say(console, f"study of {spec.model} on {data.source}: {len(data)} examples, {data.labels_in_words()}, "
                  f"train/val/test {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])}")
    for w in data.warnings:
        _say(console, f"[yellow]warning:[/] {w}")
    n_classes = len(data.classes)
    spec.monitor, why = resolve_monitor(cfg0.train.monitor, data.labels[splits["train"]], n_classes, data.task)
    if why:
        _say(console, why.replace("metric: ", "the study ranks on ", 1))
    atomic_write_json(study_dir / "study.json", spec.to_dict())
    for f in spec.fractions:
        n = int(round(f * len(splits["train"])))
        if n < n_classes and data.task == "classification":
            _say(console, f"fraction {f:g} gives {n} examples for {n_classes} classes: raised to one per class")
    return cfg0, data, splits


class _Ledger:
    """What the study has recorded: results.jsonl, the wall time spent (spent.json), the cost model."""

    def __init__(self, study_dir: Path, console: Any, on_cell_end: Callable[[dict], None] | None) -> None:
        self.results_path = study_dir / "results.jsonl"
        self.spent_path = study_dir / "spent.json"
        self.console, self.on_cell_end = console, on_cell_end
        self.records = read_jsonl(self.results_path)
        self.done = {r["cell"] for r in self.records}
        self.cost = CostModel()
        for r in self.records:
            self.cost.observe_record(r, r.get("planned_epochs", r["epochs"]))
        # Wall time of earlier runs of this study (cells side by side overlap: their wall seconds do not add up).
        self.spent_before = json.loads(self.spent_path.read_text())["seconds"] if self.spent_path.is_file() else \
            sum(r.get("wall_seconds", 0.0) for r in self.records)
        self.started = time.perf_counter()
        self.by_key: dict[str, Cell] = {}
        self.planned_epochs: dict[str, int] = {}

    def left(self, budget: float) -> float:
        return budget - self.spent_before - (time.perf_counter() - self.started)

    def save_spent(self) -> None:
        """The study's wall time so far, for a resumed --budget (after each cell and when the study stops)."""
        atomic_write_json(self.spent_path, {"seconds": round(self.spent_before + time.perf_counter() - self.started,
                                                             1)})

    def take(self, job: Job, summary: dict[str, Any]) -> None:
        cell = self.by_key[job.key]
        rec = cell_record(cell, summary, job.run_dir, self.planned_epochs[cell.key])
        append_jsonl(self.results_path, rec)
        self.records.append(rec)
        self.save_spent()
        self.cost.observe_record(rec, self.planned_epochs[cell.key])
        scores = f"test acc {rec['test_accuracy']:.4f}  F1 {rec['test_macro_f1']:.4f}" \
            if rec.get("test_accuracy") is not None else f"test {metric_of(rec)} {fmt(rec['test_score'], rec, 4)}"
        _say(self.console, f"{cell.key:<28} {scores}  "
                           f"{rec['train_seconds']:.0f}s  ({rec['epochs']} epochs"
                           + (", stopped early by its time limit)" if stopped_early(rec) else ")"))
        if self.on_cell_end is not None:
            self.on_cell_end(rec)


def _start_cells(spec: StudySpec, planned: list[Cell], sizes: dict, data: Any, splits: dict, study_dir: Path,
                 console: Any, *, workers: int | None, share_idle_cores: bool) -> tuple[Any, list[Cell]]:
    """The cells' runner (worker processes, or this process) and the order the cells go in."""
    # Every cell trains on cores/width threads, the width counted on the whole study (not on the cells left,
    # nor on which neighbours are still running): a cell's numbers then do not depend on timing or on a
    # resume (float sums over another number of threads round differently; see ajuste.study.workers).
    n_cells = len(spec.cells())
    width = max(1, min(auto_workers(n_cells) if workers is None or workers <= 0 else workers, n_cells))
    threads = max(1, usable_cores() // width)
    workers = max(1, min(width, len(planned)))
    if workers > 1 and spec.budget_seconds is None:
        planned = longest_first(planned, sizes)  # no budget to protect: finish soonest
    if workers > 1 and planned:
        _say(console, f"{workers} cells at a time, {threads} thread(s) each"
                      + (" (idle cores shared out)" if share_idle_cores else ""))
        init = {"make_runner": cell_runner, "spec": spec.to_dict(), "splits": splits, "study_dir": str(study_dir)}
        return WorkerCells(workers, init=init, threads=threads, share_idle=share_idle_cores), planned
    return InlineCells(lambda job: train_cell(job, data, splits, study_dir),
                       threads=threads if width > 1 and not share_idle_cores else None), planned


def _run_cells(cells: Any, planned: list[Cell], spec: StudySpec, ledger: _Ledger, study_dir: Path,
               planner: Planner | None, *, progress: bool, console: Any) -> list[dict[str, Any]]:
    """Submit cells as runners free up, record each that ends. Without a budget the cells go in ``planned``'s
    order; with one the planner picks each, with its time limit (ajuste.study.planner). Returns the cells of
    the study not run (with a budget)."""
    pending = list(planned)
    busy: set[str] = set()

    def next_choice() -> Choice | None:
        if planner is not None:
            return planner.next(busy)
        return Choice(pending.pop(0), 0.0, "", None) if pending else None

    with _progress(progress, console) as bar:
        task = bar.add_task("study", total=len(planned)) if bar else None
        try:
            while True:
                while cells.free() and (choice := next_choice()) is not None:
                    cell = choice.cell
                    cfg = cell_config(spec, cell, max_seconds=choice.max_seconds if planner is not None else None)
                    cells.submit(Job(cell.key, cfg, study_dir / "runs" / cell.key))
                    ledger.by_key[cell.key] = cell
                    if cell.key not in ledger.planned_epochs:  # a seed the planner added: as its seed 0
                        ledger.planned_epochs[cell.key] = ledger.planned_epochs[Cell(cell.strategy, cell.fraction,
                                                                                     0).key]
                    busy.add(cell.key)
                    if planner is not None:
                        _say(console, f"{cell.key:<28} starts: {choice.why} (about "
                                      f"{'?' if choice.estimate is None else f'{choice.estimate:.0f}'}s, "
                                      f"limit {choice.max_seconds:.0f}s)")
                if not cells.running():
                    break  # nothing left to run, or nothing that fits
                if bar:
                    bar.update(task, description=" + ".join(cells.running()))
                for job, summary in cells.wait():
                    if summary.get("status") != "complete":
                        raise KeyboardInterrupt
                    busy.discard(job.key)
                    ledger.take(job, summary)
                    if bar:
                        bar.update(task, advance=1)
        except KeyboardInterrupt:
            if terminated():
                cells.terminate()
            else:
                _finish_interrupted(cells, console, ledger.take)
            raise
        finally:
            cells.close()
            ledger.save_spent()
    return planner.skipped() if planner is not None else []


def _report_skipped(study_dir: Path, skipped: list[dict[str, Any]], records: list[dict], console: Any) -> None:
    if not skipped:
        (study_dir / "skipped.json").unlink(missing_ok=True)  # an earlier session's, whose cells ran since
        return
    atomic_write_json(study_dir / "skipped.json", skipped)
    first = ", ".join(s["cell"] for s in skipped[:6])
    more = f" and {len(skipped) - 6} more" if len(skipped) > 6 else ""
    _say(console, f"[yellow]budget:[/] {len(skipped)} cells not run (no time left for them): {first}{more}")
    if not records:
        need = min((s["estimate_seconds"] for s in skipped if s["estimate_seconds"] is not None), default=0.0)
        raise AjusteError(f"--budget is too small for even one cell (the cheapest needs about {need:.0f}s); "
                          f"raise --budget")


def _similarity(study_dir: Path, spec: StudySpec, data: Any, splits: dict, cfg0: RunConfig,
                console: Any) -> dict[str, Any]:
    """The domain-similarity measurement, once per study directory."""
    sim_path = study_dir / "similarity.json"
    if sim_path.is_file():
        return json.loads(sim_path.read_text())
    # Under a --budget it takes a share of it at most (fewer examples), like any other use of the time.
    seconds = None if spec.budget_seconds is None else BUDGET_SHARE * spec.budget_seconds
    _say(console, "measuring domain similarity (pretrained vs random features)"
                  + (f", within {seconds:.0f}s of the budget" if seconds else "") + "...")
    sim = measure_similarity(model=spec.model, data=data, splits=splits,
                             cfg=resolve_config(cfg0, data.modality), seconds=seconds)
    atomic_write_json(sim_path, sim)
    _say(console, f"similarity {sim['similarity']}: probe accuracy {sim['pretrained']['probe_accuracy']:.3f} "
                  f"pretrained vs {sim['random']['probe_accuracy']:.3f} random; LogME "
                  f"{sim['pretrained']['logme']:.3f} vs {sim['random']['logme']:.3f} "
                  f"({sim['n_train']}/{sim['n_val']} train/val examples, {sim['seconds']}s)")
    return sim


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


def export_best(study_dir: Path, best_cell: str, into: Path | None = None) -> Path:
    """Copy the winning run to ``best_model/`` (a plain run directory: `ajuste predict` takes it); ``into``: the
    folder that gets it, when not this study's (a study across backbones hands over one of its studies' runs)."""
    src = Path(study_dir) / "runs" / best_cell
    if not (src / "model.safetensors").is_file():
        raise AjusteError(f"{src}, the run of the recommended cell, is missing or has no weights, so there is no "
                          f"model to hand over; restore it, or run the study again with another --out")
    home = Path(into) if into is not None else Path(study_dir)
    dst = home / "best_model"
    tmp = home / ".best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    # the cell's trackers stay with the cell: best_model/ is a model to hand over
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint", locks.LOCK_NAME, tracking.TENSORBOARD_DIR,
                                                            tracking_store.RUN_FILE))
    stored_weights.materialise(tmp)  # the model handed over stands alone: its base weights written in, in full
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def _say(console: Any, msg: str) -> None:
    if console is not None:
        console.print(msg, highlight=False)


def _progress(enabled: bool, console: Any):
    return progress_bar(enabled, console)
