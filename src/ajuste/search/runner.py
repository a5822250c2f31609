"""`ajuste tune`: a budgeted, resumable Optuna study over one strategy's hyperparameters.

The trial budget (``trials``) is the study's total, not this process's share: re-running an
interrupted command continues until the study holds that many trials, and N workers started with the
same command on a shared PostgreSQL study run that many trials between them. A worker claims a slot
under the study lock (``StudyLock``): it counts the study's trials and creates its own RUNNING trial
before the next worker may count, so the total is exact.

Counted against the budget: complete, pruned, running and waiting trials, and trials that failed with
an error. Not counted: a trial interrupted by Ctrl-C, or one whose worker died (its heartbeat stops;
after ``GRACE_SECONDS`` it is marked failed): both are re-queued with the same params.

Outputs in ``out``: ``tune.json`` (what was asked), ``best.json`` (best trial, its params and the
full config to retrain it), ``trials.csv`` and ``report.html`` (plots embedded). With the default
storage the study itself is ``out/study.db``: ``optuna-dashboard sqlite:///out/study.db``.
"""

from __future__ import annotations

import contextlib
import gc
import math
import os
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ajuste import durations, locks
from ajuste.backbones.factory import create_backbone
from ajuste.config import RunConfig
from ajuste.data import fingerprint
from ajuste.data.splits import take_fraction
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import ajuste_dir_kind, atomic_write_json
from ajuste.metrics import metric_name

# Modules, not names: tests substitute make_pruner and ajuste.training.run's functions.
from ajuste.search import samplers
from ajuste.search.objective import METRICS, Objective, check_metric, release_memory
from ajuste.search.outputs import write_outputs, writing
from ajuste.search.results import best_summary, objective_text, state_counts
from ajuste.search.resume import check_same_data, check_same_study, create_or_load, record_request
from ajuste.search.space import SearchSpace, default_space, load_space
from ajuste.search.storage import (
    StudyLock,
    check_reachable,
    dashboard_command,
    default_storage,
    open_storage,
    redact,
    resolve_study_ref,
)
from ajuste.search.trial_loop import TrialStats, counts_against_budget, on_trial_end, requeue_interrupted, run_trials
from ajuste.strategies.base import get_strategy, resolve_config
from ajuste.tasks import TASK_METRICS
from ajuste.training import run as training
from ajuste.training import tracking_store
from ajuste.training.loop import stretch_phases


@dataclass
class TuneResult:
    study_name: str
    storage: str  # password hidden
    out: Path
    metric: str
    direction: str
    budget: int | None
    best: dict[str, Any] | None
    counts: dict[str, int]
    ran_here: int
    stopped_by: str
    files: dict[str, Path] = field(default_factory=dict)
    dashboard: str = ""


@dataclass
class _Plan:
    """A checked request with its data and space: everything settled before the study is opened."""

    cfg: RunConfig
    out: Path
    url: str
    name: str
    sampler: str
    pruner: str
    metric: str
    direction: str
    timeout_s: float | None
    data: Any
    splits: dict
    digest: str
    space: SearchSpace
    budget: int | None
    grid: dict[str, list] | None
    max_epochs: int | None


def parse_duration(text: str | float | int | None) -> float | None:
    """``--timeout``: see ajuste.durations (a bare number is seconds)."""
    return durations.parse_duration(text, "--timeout")


def default_study_name(cfg: RunConfig) -> str:
    data = Path(str(cfg.data.source).rstrip("/")).name or "data"
    name = f"{data}-{cfg.model.name}-{cfg.strategy.name}"
    if cfg.data.fraction != 1.0:
        name += f"-f{cfg.data.fraction:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _body_groups(cfg: RunConfig, n_classes: int) -> int:
    """Layer groups below the head of the model, from an untrained instance (no weights loaded)."""
    bb = create_backbone(cfg.model.name, num_classes=n_classes, pretrained=False, pooling=cfg.model.pooling)
    n = len(bb.layer_groups()) - 1
    del bb
    return n


def _max_epochs(resolved: RunConfig, strategy: Any, n_groups: int, n_train: int, space: Any) -> int | None:
    """Most epochs a trial can run (Hyperband's max resource); None (= 'auto') when the space moves it."""
    if any(k in space for k in ("train.epochs", "train.min_steps", *getattr(strategy, "epoch_knobs", ()))):
        return None
    try:
        phases = strategy.phases(resolved, n_groups)
        min_steps = getattr(resolved.train, "min_steps", 0)
        if not min_steps:
            return sum(p.epochs for p in phases)
        batch = space.params.get("data.batch_size")
        sizes = [resolved.data.batch_size] if batch is None else (
            list(batch.choices) if batch.kind == "categorical" else [batch.high])
        return max(sum(p.epochs for p in stretch_phases(phases, max(1, math.ceil(n_train / b)), min_steps))
                   for b in sizes)
    except Exception:  # noqa: BLE001 - an estimate only; Optuna measures it itself with "auto"
        return None


def build_space(cfg: RunConfig, *, modality: str, space_file: str | Path | None,
                n_body_groups: int | None, task: str = "classification") -> SearchSpace:
    """Default space of the strategy ← its search_space() hook ← the --space YAML; validated."""
    strategy = get_strategy(cfg.strategy.name)
    resolved = resolve_config(cfg, modality)
    space = default_space(strategy, modality=modality, default_lr=resolved.optim.lr, n_body_groups=n_body_groups,
                          task=task)
    if space_file is not None:
        space = load_space(space_file, space)
    space.check(cfg, n_body_groups=n_body_groups)
    return space


def tune(*, cfg: RunConfig, out: str | Path, trials: int | None = 20, sampler: str = "tpe",
         pruner: str = "auto", space: str | Path | None = None, storage: str | None = None,
         study_name: str | None = None, timeout: float | str | None = None, metric: str = "val_accuracy",
         seed: int | None = 0, console: Any = None, data: Any = None, splits: dict | None = None,
         report: bool = True) -> TuneResult:
    """Run (or continue) a study; see the module docstring. Returns where things are and the best trial.

    With the default storage (``out/study.db``) this process holds ``out``'s lock throughout: a second
    `ajuste tune` into the same directory is refused in one line. With ``--storage URL``, workers share the
    study through the server's lock, and each takes ``out``'s lock only while it writes its outputs there."""
    kwargs = dict(cfg=cfg, out=Path(out), trials=trials, sampler=sampler, pruner=pruner, space=space,
                  storage=storage, study_name=study_name, timeout=timeout, metric=metric, seed=seed,
                  console=console, data=data, splits=splits, report=report)
    if storage is None:
        with locks.hold(out, what="search", remove_if_unused=True):
            return _tune(**kwargs)
    return _tune(**kwargs)


def _tune(*, cfg: RunConfig, out: Path, trials: int | None, sampler: str, pruner: str, space: str | Path | None,
          storage: str | None, study_name: str | None, timeout: float | str | None, metric: str,
          seed: int | None, console: Any, data: Any, splits: dict | None, report: bool) -> TuneResult:
    plan = _plan(cfg=cfg, out=out, trials=trials, sampler=sampler, pruner=pruner, space=space, storage=storage,
                 study_name=study_name, timeout=timeout, metric=metric, data=data, splits=splits)
    return _run_study(plan, seed=seed, console=console, report=report)


def _plan(*, cfg: RunConfig, out: Path, trials: int | None, sampler: str, pruner: str, space: str | Path | None,
          storage: str | None, study_name: str | None, timeout: float | str | None, metric: str, data: Any,
          splits: dict | None) -> _Plan:
    # 1. Everything that can be wrong with the request, before any data or model is loaded.
    sampler, pruner = samplers.check_names(sampler, pruner)
    metric = check_metric(metric)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials} must be ≥ 1")
    timeout_s = parse_duration(timeout)
    tracking_store.require(cfg.train.log_to)
    strategy = get_strategy(cfg.strategy.name)
    cfg = cfg.override({"strategy.name": strategy.name})
    out = Path(out)
    _check_out(out)
    url = storage or default_storage(out)
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    check_reachable(url)
    cfg, data = training.resolve_model_early(cfg, data)
    name = study_name or default_study_name(cfg)

    # 2. Data once for all trials (the training fraction is drawn inside each run, the same every time).
    if splits is None:
        data, splits = training.prepare_data(cfg.override({"data.fraction": 1.0}), data=data)
    allowed = (*TASK_METRICS[data.task], "val_loss")
    if data.task != "classification" and metric_name(metric) not in allowed:
        raise ConfigError(f"--metric {metric} does not apply to a {data.task} task; use --metric "
                          f"{' | '.join(allowed)}")
    modality = data.modality
    digest = fingerprint.data_digest(data)
    n_body = _body_groups(cfg, len(data.classes))
    space_obj = build_space(cfg, modality=modality, space_file=space, n_body_groups=n_body, task=data.task)
    budget = trials
    grid = None
    if sampler == "grid":
        grid = space_obj.grid()
        size = space_obj.grid_size()
        budget = size if trials is None else min(trials, size)
    n_train = len(take_fraction(splits["train"], data.labels, cfg.data.fraction, seed=cfg.data.split_seed)) \
        if cfg.data.fraction != 1.0 else len(splits["train"])
    max_epochs = _max_epochs(resolve_config(cfg, modality), strategy, n_body + 1, n_train, space_obj)
    out.mkdir(parents=True, exist_ok=True)
    return _Plan(cfg=cfg, out=out, url=url, name=name, sampler=sampler, pruner=pruner, metric=metric,
                 direction=METRICS[metric], timeout_s=timeout_s, data=data, splits=splits, digest=digest,
                 space=space_obj, budget=budget, grid=grid, max_epochs=max_epochs)


def _check_out(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise AjusteError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) \
            and not any((out / marker).exists() for marker in ("tune.json", "study.db", "best.json")):
        what = {"run": "holds a training run", "study": "holds a study of `ajuste compare`"}.get(
            ajuste_dir_kind(out), "is not empty and is not an `ajuste tune` directory")
        raise AjusteError(f"--out {out} {what}; use another --out")


def _run_study(plan: _Plan, *, seed: int | None, console: Any, report: bool) -> TuneResult:
    import optuna

    say = console.print if console is not None else (lambda *a, **k: None)
    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # ajuste prints one line per trial instead
    lock = StudyLock(plan.url, plan.name)
    study: Any = None
    files: dict[str, Path] = {"tune": plan.out / "tune.json"}
    stats = TrialStats()
    stopped_by = "interrupted"
    try:
        # 3. Create or load the study under the lock: the first worker writes the space and config;
        #    any later one (or a resume) must match them.
        with lock.hold():
            study, created = create_or_load(open_storage(plan.url), plan.name, plan.direction)
            if created:
                record_request(study, space=plan.space, cfg=plan.cfg, metric=plan.metric, digest=plan.digest)
            else:
                try:
                    check_same_study(study, plan.name, redact(plan.url), plan.space, plan.cfg, plan.metric)
                    check_same_data(study, plan.name, redact(plan.url), plan.digest, plan.cfg.data.source)
                except AjusteError:
                    study = None  # not ours to report on
                    raise
            n_existing = len(study.get_trials(deepcopy=False))
        # Different seeds for a resumed study and for each extra worker: a sampler re-seeded like the
        # first run would re-draw the points already tried.
        worker_seed = None if seed is None else \
            (seed * 1_000_003 + n_existing * 7919 + (0 if created else os.getpid())) % 2**31
        study.sampler = samplers.make_sampler(plan.sampler, seed=worker_seed, budget=plan.budget, grid=plan.grid)
        study.pruner = samplers.make_pruner(plan.pruner, max_epochs=plan.max_epochs)
        _write_request(plan, files["tune"])
        _say_start(say, study, plan, created)

        # 4. The trial loop.
        objective = Objective(base_cfg=plan.cfg, space=plan.space, data=plan.data, splits=plan.splits,
                              metric=plan.metric, on_start=lambda trial: lock.release(),
                              on_end=on_trial_end(stats, study, console, plan.metric), out=plan.out)
        # Move the long-lived objects (modules, data) out of the collector's sight: the full collection
        # after each trial then only walks what the trial created (0.3 s → milliseconds here).
        gc.collect()
        gc.freeze()
        stopped_by = run_trials(study, objective, lock, budget=plan.budget, timeout_s=plan.timeout_s, say=say,
                                stats=stats, grid=plan.sampler == "grid")
        del objective
        release_memory()
    except KeyboardInterrupt:
        requeue_interrupted(study)
        raise
    finally:
        gc.unfreeze()
        lock.close()
        optuna.logging.set_verbosity(previous_verbosity)
        if study is not None and report:
            if _in_exception():
                with contextlib.suppress(Exception):
                    files = write_outputs(study, plan.out, metric=plan.metric, url=plan.url)
            else:
                files = write_outputs(study, plan.out, metric=plan.metric, url=plan.url)
    return TuneResult(study_name=plan.name, storage=redact(plan.url), out=plan.out, metric=plan.metric,
                      direction=plan.direction, budget=plan.budget, best=best_summary(study),
                      counts=state_counts(study), ran_here=stats.ran, stopped_by=stopped_by, files=files,
                      dashboard=dashboard_command(plan.url))


def _write_request(plan: _Plan, path: Path) -> None:
    """``tune.json``: what this worker was asked for."""
    with writing(plan.out):
        atomic_write_json(path, {
            "study": plan.name, "storage": redact(plan.url), "sampler": plan.sampler, "pruner": plan.pruner,
            "metric": plan.metric, "direction": plan.direction, "trials": plan.budget,
            "timeout_seconds": plan.timeout_s, "max_epochs": plan.max_epochs, "space": plan.space.to_dict(),
            "config": plan.cfg.to_dict(), "objective": objective_text(plan.metric),
            "dashboard": dashboard_command(plan.url), "data_digest": plan.digest,
        })


def _say_start(say: Any, study: Any, plan: _Plan, created: bool) -> None:
    done = sum(counts_against_budget(t) for t in study.get_trials(deepcopy=False))
    say(f"{'starting' if created else 'continuing'} study {plan.name} in {redact(plan.url)}: "
        f"{done}/{plan.budget if plan.budget else '∞'} trials so far · sampler {plan.sampler} · pruner "
        f"{plan.pruner} · {plan.metric} ({plan.direction}) · {len(plan.space)} params: "
        f"{', '.join(plan.space.params)}", highlight=False, soft_wrap=True)


def _in_exception() -> bool:
    return sys.exc_info()[0] is not None


def retrain_config(ref: str) -> tuple[RunConfig, dict[str, Any]]:
    """``ajuste train --from-study REF``: the best trial's config, and where it came from."""
    info = resolve_study_ref(ref)
    return RunConfig.from_dict(info["config"], where=f"--from-study {ref}"), info
