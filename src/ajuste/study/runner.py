"""Run a study: every cell is an ``ajuste train`` run on the same fixed splits.

Study directory::

    study.json        the spec (refuses to mix results of another data set/model/config)
    splits.json       train/val/test indices shared by every cell (test never used for selection)
    similarity.json   domain-similarity measurement (pretrained vs random features)
    results.jsonl     one line per finished cell (appended, fsynced); finished cells are skipped on resume
    runs/<cell>/      each cell's run directory (an unfinished one resumes from its checkpoint)
    cache/            frozen-layer activations shared by the cells (ajuste.train.cache; safe to delete)
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

from ajuste.config import RunConfig
from ajuste.errors import AjusteError
from ajuste.io import append_jsonl, atomic_write_json, read_jsonl
from ajuste.study.spec import COST_RANK, Cell, StudySpec


@dataclass
class StudyResult:
    study_dir: Path
    spec: StudySpec
    records: list[dict[str, Any]]
    skipped: list[dict[str, Any]] = field(default_factory=list)
    similarity: dict[str, Any] | None = None
    advice: dict[str, Any] | None = None
    seconds: float = 0.0


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
    old = StudySpec.from_dict(json.loads(path.read_text()))
    a, b = old.identity(), spec.identity()
    if a != b:
        diff = ", ".join(f"{k}: {a[k]!r} → {b[k]!r}" for k in a if a[k] != b[k])
        raise AjusteError(f"{study_dir} holds a study of other data or settings ({diff}); use another --out")


def plan_cells(spec: StudySpec, done: set[str]) -> list[Cell]:
    """Cheapest first: small fractions before large ones, cheap strategies before costly ones, seed 0 of
    every (strategy, fraction) before extra seeds — so a budget cut keeps the widest picture."""
    todo = [c for c in spec.cells() if c.key not in done]
    return sorted(todo, key=lambda c: (c.seed > 0, c.fraction, COST_RANK.get(c.strategy, 1.0), c.seed))


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
        known = {s: r / COST_RANK.get(s, 1.0) for s, r in self.rates.items()}
        if not known:
            return None
        return max(known.values()) * COST_RANK.get(strategy, 1.0) * n_train * epochs


def run_study(*, spec: StudySpec, study_dir: Path, console: Any = None, progress: bool = True,
              similarity: bool = True, on_cell_end: Callable[[dict], None] | None = None) -> StudyResult:
    from ajuste.strategies.base import resolve_config
    from ajuste.train.cache import shared_dir
    from ajuste.train.run import prepare_data, read_summary, train_run

    t0 = time.perf_counter()
    study_dir = Path(study_dir)
    _check_study_dir(study_dir, spec)
    study_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(study_dir / "study.json", spec.to_dict())

    cfg0 = base_config(spec)
    data, splits = prepare_data(cfg0)
    splits_path = study_dir / "splits.json"
    if splits_path.is_file():
        saved = {k: np.asarray(v) for k, v in json.loads(splits_path.read_text()).items()}
        if any(not np.array_equal(saved[k], splits[k]) for k in ("train", "val", "test")):
            raise AjusteError(f"{study_dir}: the data changed since the study started (splits differ); "
                              f"use another --out")
    else:
        atomic_write_json(splits_path, {k: np.asarray(v).tolist() for k, v in splits.items()})
    _say(console, f"study of {spec.model} on {data.source}: {len(data)} examples, {len(data.classes)} classes, "
                  f"train/val/test {len(splits['train'])}/{len(splits['val'])}/{len(splits['test'])}")
    for w in data.warnings:
        _say(console, f"[yellow]warning:[/] {w}")
    n_classes = len(data.classes)
    for f in spec.fractions:
        n = int(round(f * len(splits["train"])))
        if n < n_classes:
            _say(console, f"fraction {f:g} gives {n} examples for {n_classes} classes: raised to one per class")

    sim = None
    sim_path = study_dir / "similarity.json"
    if similarity:
        if sim_path.is_file():
            sim = json.loads(sim_path.read_text())
        else:
            from ajuste.study.similarity import measure_similarity

            _say(console, "measuring domain similarity (pretrained vs random features)...")
            sim = measure_similarity(model=spec.model, data=data, splits=splits,
                                     cfg=resolve_config(cfg0, data.modality))
            atomic_write_json(sim_path, sim)
            _say(console, f"similarity {sim['similarity']}: probe accuracy {sim['pretrained']['probe_accuracy']:.3f} "
                          f"pretrained vs {sim['random']['probe_accuracy']:.3f} random; LogME "
                          f"{sim['pretrained']['logme']:.3f} vs {sim['random']['logme']:.3f} ({sim['seconds']}s)")

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
    spent_before = sum(r.get("wall_seconds", 0.0) for r in records)
    skipped: list[dict[str, Any]] = []
    started = time.perf_counter()

    with _progress(progress, console) as bar:
        task = bar.add_task("study", total=len(planned)) if bar else None
        for cell in planned:
            cfg = cell_config(spec, cell)
            rcfg = resolve_config(cfg, data.modality)
            n_train = _fraction_size(cell.fraction, splits, data.labels, spec.split_seed)
            epochs = _planned_epochs(rcfg, n_train)
            if budget is not None:
                left = budget - spent_before - (time.perf_counter() - started)
                est = cost.estimate(cell.strategy, n_train, epochs)
                if est is not None and est > left:
                    skipped.append({"cell": cell.key, "estimate_seconds": round(est, 1),
                                    "left_seconds": round(max(0.0, left), 1)})
                    if bar:
                        bar.update(task, advance=1)
                    continue
            if bar:
                bar.update(task, description=f"{cell.key} ({n_train} train)")
            run_dir = study_dir / "runs" / cell.key
            summary = read_summary(run_dir)  # finished but not yet recorded (killed in between)
            if summary is None or summary.get("status") != "complete":
                # Cells share frozen-layer activations (seeds, and strategies cut at the same layer) in
                # memory and, across processes and restarts, through study_dir/cache.
                with shared_dir(study_dir / "cache"):
                    summary = train_run(cfg=cfg, out=run_dir, data=data, splits=splits, progress=False).summary
                if summary.get("status") != "complete":
                    raise KeyboardInterrupt
            rec = _record(cell, summary, run_dir, epochs)
            append_jsonl(results_path, rec)
            records.append(rec)
            cost.observe(cell.strategy, rec["n_train"], rec["train_seconds"], epochs)
            _say(console, f"{cell.key:<28} test acc {rec['test_accuracy']:.4f}  F1 {rec['test_macro_f1']:.4f}  "
                          f"{rec['train_seconds']:.0f}s  ({rec['epochs']} epochs)")
            if on_cell_end is not None:
                on_cell_end(rec)
            if bar:
                bar.update(task, advance=1)
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


def _fraction_size(fraction: float, splits: dict, labels: np.ndarray, seed: int) -> int:
    from ajuste.data.splits import take_fraction

    if fraction == 1.0:
        return int(len(splits["train"]))
    return int(len(take_fraction(splits["train"], labels, fraction, seed=seed)))


def _planned_epochs(cfg: RunConfig, n_train: int) -> int:
    """Planned full passes over the training data (upper bound: early stopping usually cuts it)."""
    from ajuste.strategies.base import get_strategy
    from ajuste.train.loop import stretch_phases

    spe = max(1, -(-n_train // cfg.data.batch_size))
    phases = get_strategy(cfg.strategy.name).phases(cfg, 3 + max(1, cfg.strategy.unfreeze))
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
        "best_epoch": s["best_epoch"], "planned_epochs": planned_epochs, "run_dir": str(Path("runs") / cell.key),
        "confusion": s["test"]["confusion"],
        "history": [{k: h[k] for k in ("epoch", "phase", "train_loss", "val_loss", "val_accuracy", "seconds")}
                    for h in hist],
    }


def export_best(study_dir: Path, best_cell: str) -> Path:
    """Copy the winning run to ``best_model/`` (a plain run directory: `ajuste predict` takes it)."""
    src = Path(study_dir) / "runs" / best_cell
    dst = Path(study_dir) / "best_model"
    tmp = Path(study_dir) / ".best_model.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.copytree(src, tmp, ignore=shutil.ignore_patterns("checkpoint"))
    shutil.rmtree(dst, ignore_errors=True)
    tmp.rename(dst)
    return dst


def _say(console: Any, msg: str) -> None:
    if console is not None:
        console.print(msg, highlight=False)


def _progress(enabled: bool, console: Any):
    from ajuste.train.loop import _progress as progress_bar

    return progress_bar(enabled, console)
