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
import csv
import gc
import math
import os
import re
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ajuste import locks
from ajuste.config import RunConfig
from ajuste.data import fingerprint
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import ajuste_dir_kind, atomic_write_json, atomic_write_text
from ajuste.search.results import (ATTR_CONFIG, ATTR_DATA, ATTR_METRIC, ATTR_SPACE, best_config, best_summary,
                                   best_trial_or_none, objective_text, state_counts, trial_rows)

# Fields that do not change what a trial computes: a resumed study may differ in these.
_IGNORED_FIELDS = {"train.threads"}
MAX_CONSECUTIVE_FAILURES = 3
WAIT_POLL_SECONDS = 2.0


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


def parse_duration(text: str | float | int | None) -> float | None:
    """``--timeout``: see ajuste.durations (a bare number is seconds)."""
    from ajuste.durations import parse_duration as parse

    return parse(text, "--timeout")


def default_study_name(cfg: RunConfig) -> str:
    data = Path(str(cfg.data.source).rstrip("/")).name or "data"
    name = f"{data}-{cfg.model.name}-{cfg.strategy.name}"
    if cfg.data.fraction != 1.0:
        name += f"-f{cfg.data.fraction:g}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", name)


def _counts_against_budget(t: Any) -> bool:
    from optuna.trial import TrialState

    if t.state in (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING, TrialState.WAITING):
        return True
    return t.state == TrialState.FAIL and bool(t.user_attrs.get("counted"))


def _comparable_config(cfg: RunConfig) -> dict[str, Any]:
    raw = cfg.to_dict()
    for key in _IGNORED_FIELDS:
        section, leaf = key.split(".")
        raw.get(section, {}).pop(leaf, None)
    return raw


def _dict_diff(a: dict, b: dict, prefix: str = "") -> list[str]:
    out = []
    for k in sorted(set(a) | set(b)):
        va, vb = a.get(k), b.get(k)
        if isinstance(va, dict) or isinstance(vb, dict):
            out += _dict_diff(va or {}, vb or {}, f"{prefix}{k}.")
        elif va != vb:
            out.append(f"{prefix}{k}: {va!r} → {vb!r}")
    return out


def _body_groups(cfg: RunConfig, n_classes: int) -> int:
    """Layer groups below the head of the model, from an untrained instance (no weights loaded)."""
    from ajuste.backbones.factory import create_backbone

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
        try:
            from ajuste.train.loop import stretch_phases
        except ImportError:
            stretch_phases = None
        if not (stretch_phases and min_steps):
            return sum(p.epochs for p in phases)
        batch = space.params.get("data.batch_size")
        sizes = [resolved.data.batch_size] if batch is None else (
            list(batch.choices) if batch.kind == "categorical" else [batch.high])
        return max(sum(p.epochs for p in stretch_phases(phases, max(1, math.ceil(n_train / b)), min_steps))
                   for b in sizes)
    except Exception:  # noqa: BLE001 - an estimate only; Optuna measures it itself with "auto"
        return None


def build_space(cfg: RunConfig, *, modality: str, space_file: str | Path | None, n_body_groups: int | None) -> Any:
    """Default space of the strategy ← its search_space() hook ← the --space YAML; validated."""
    from ajuste.search.space import default_space, load_space
    from ajuste.strategies.base import get_strategy, resolve_config

    strategy = get_strategy(cfg.strategy.name)
    resolved = resolve_config(cfg, modality)
    space = default_space(strategy, modality=modality, default_lr=resolved.optim.lr, n_body_groups=n_body_groups)
    if space_file is not None:
        space = load_space(space_file, space)
    space.check(cfg, n_body_groups=n_body_groups)
    return space


def tune(*, cfg: RunConfig, out: str | Path, trials: int | None = 20, sampler: str = "tpe",
         pruner: str = "hyperband", space: str | Path | None = None, storage: str | None = None,
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
    import optuna

    from ajuste.search.objective import METRICS, Objective, check_metric, release_memory
    from ajuste.search.samplers import check_names, make_pruner, make_sampler
    from ajuste.search.storage import (StudyLock, check_reachable, dashboard_command, default_storage,
                                       open_storage, redact)
    from ajuste.strategies.base import get_strategy, resolve_config
    from ajuste.train.run import prepare_data, resolve_model_early

    # 1. Everything that can be wrong with the request, before any data or model is loaded.
    sampler, pruner = check_names(sampler, pruner)
    metric = check_metric(metric)
    if trials is not None and trials < 1:
        raise ConfigError(f"--trials {trials} must be ≥ 1")
    timeout_s = parse_duration(timeout)
    strategy = get_strategy(cfg.strategy.name)
    cfg = cfg.override({"strategy.name": strategy.name})
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise AjusteError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) \
            and not any((out / marker).exists() for marker in ("tune.json", "study.db", "best.json")):
        what = {"run": "holds a training run", "study": "holds a study of `ajuste compare`"}.get(
            ajuste_dir_kind(out), "is not empty and is not an `ajuste tune` directory")
        raise AjusteError(f"--out {out} {what}; use another --out")
    url = storage or default_storage(out)
    if storage is None:
        out.mkdir(parents=True, exist_ok=True)
    check_reachable(url)
    cfg, data = resolve_model_early(cfg, data)
    name = study_name or default_study_name(cfg)

    # 2. Data once for all trials (the training fraction is drawn inside each run, the same every time).
    if splits is None:
        data, splits = prepare_data(cfg.override({"data.fraction": 1.0}), data=data)
    modality = data.modality
    digest = fingerprint.data_digest(data)
    n_body = _body_groups(cfg, len(data.classes))
    space_obj = build_space(cfg, modality=modality, space_file=space, n_body_groups=n_body)
    budget = trials
    grid = None
    if sampler == "grid":
        grid = space_obj.grid()
        size = space_obj.grid_size()
        budget = size if trials is None else min(trials, size)
    resolved = resolve_config(cfg, modality)
    from ajuste.data.splits import take_fraction

    n_train = len(take_fraction(splits["train"], data.labels, cfg.data.fraction, seed=cfg.data.split_seed)) \
        if cfg.data.fraction != 1.0 else len(splits["train"])
    max_epochs = _max_epochs(resolved, strategy, n_body + 1, n_train, space_obj)
    out.mkdir(parents=True, exist_ok=True)

    direction = METRICS[metric]
    say = console.print if console is not None else (lambda *a, **k: None)
    previous_verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # ajuste prints one line per trial instead
    lock = StudyLock(url, name)
    study: Any = None
    files: dict[str, Path] = {"tune": out / "tune.json"}
    stats = {"ran": 0, "failures": 0, "last_error": ""}
    stopped_by = "interrupted"
    try:
        # 3. Create or load the study under the lock: the first worker writes the space and config;
        #    any later one (or a resume) must match them.
        with lock.hold():
            st = open_storage(url)
            study, created = _create_or_load(optuna, st, name, direction)
            if created:
                study.set_user_attr(ATTR_SPACE, space_obj.to_dict())
                study.set_user_attr(ATTR_CONFIG, cfg.to_dict())
                study.set_user_attr(ATTR_METRIC, metric)
                study.set_user_attr(ATTR_DATA, digest)
            else:
                try:
                    _check_same_study(study, name, redact(url), space_obj, cfg, metric)
                    _check_same_data(study, name, redact(url), digest, cfg.data.source)
                except AjusteError:
                    study = None  # not ours to report on
                    raise
            n_existing = len(study.get_trials(deepcopy=False))
        # Different seeds for a resumed study and for each extra worker: a sampler re-seeded like the
        # first run would re-draw the points already tried.
        worker_seed = None if seed is None else \
            (seed * 1_000_003 + n_existing * 7919 + (0 if created else os.getpid())) % 2**31
        study.sampler = make_sampler(sampler, seed=worker_seed, budget=budget, grid=grid)
        study.pruner = make_pruner(pruner, max_epochs=max_epochs)
        with _writing(out):
            atomic_write_json(files["tune"], {
                "study": name, "storage": redact(url), "sampler": sampler, "pruner": pruner, "metric": metric,
                "direction": direction, "trials": budget, "timeout_seconds": timeout_s, "max_epochs": max_epochs,
                "space": space_obj.to_dict(), "config": cfg.to_dict(), "objective": objective_text(metric),
                "dashboard": dashboard_command(url), "data_digest": digest,
            })
        done = sum(_counts_against_budget(t) for t in study.get_trials(deepcopy=False))
        say(f"{'starting' if created else 'continuing'} study {name} in {redact(url)}: "
            f"{done}/{budget if budget else '∞'} trials so far · sampler {sampler} · pruner {pruner} · "
            f"{metric} ({direction}) · {len(space_obj)} params: {', '.join(space_obj.params)}", highlight=False,
            soft_wrap=True)

        # 4. The trial loop.
        def on_end(rec: Any) -> None:
            stats["ran"] += 1
            if rec.state == "FAIL" and rec.note != "interrupted":
                stats["failures"] += 1
                stats["last_error"] = rec.note
            elif rec.state != "FAIL":
                stats["failures"] = 0
            if console is not None:
                _print_trial(console, study, rec, metric)

        objective = Objective(base_cfg=cfg, space=space_obj, data=data, splits=splits, metric=metric,
                              on_start=lambda trial: lock.release(), on_end=on_end)
        # Move the long-lived objects (modules, data) out of the collector's sight: the full collection
        # after each trial then only walks what the trial created (0.3 s → milliseconds here).
        gc.collect()
        gc.freeze()
        stopped_by = _loop(optuna, study, objective, lock, budget=budget, timeout_s=timeout_s, say=say,
                           stats=stats, grid=sampler == "grid")
        del objective
        release_memory()
    except KeyboardInterrupt:
        _requeue_interrupted(study)
        raise
    finally:
        gc.unfreeze()
        lock.close()
        optuna.logging.set_verbosity(previous_verbosity)
        if study is not None and report:
            if _in_exception():
                with contextlib.suppress(Exception):
                    files = write_outputs(study, out, metric=metric, url=url)
            else:
                files = write_outputs(study, out, metric=metric, url=url)
    return TuneResult(study_name=name, storage=redact(url), out=out, metric=metric, direction=direction,
                      budget=budget, best=best_summary(study), counts=state_counts(study),
                      ran_here=stats["ran"], stopped_by=stopped_by, files=files,
                      dashboard=dashboard_command(url))


def _in_exception() -> bool:
    import sys

    return sys.exc_info()[0] is not None


def _create_or_load(optuna: Any, st: Any, name: str, direction: str) -> tuple[Any, bool]:
    try:
        return optuna.create_study(study_name=name, storage=st, direction=direction), True
    except optuna.exceptions.DuplicatedStudyError:
        return optuna.load_study(study_name=name, storage=st), False


def _check_same_data(study: Any, name: str, where: str, digest: str, source: Any) -> None:
    """Trials scored on other examples cannot be compared with these: refuse to add to such a study."""
    stored = study.user_attrs.get(ATTR_DATA)
    if stored is not None and stored != digest:
        raise AjusteError(f"study {name} in {where} was started on other data: {source} changed since (its "
                          f"examples differ, not only their order); restore the data, or start another study "
                          f"(--study-name or another --out)")


def _check_same_study(study: Any, name: str, where: str, space: Any, cfg: RunConfig, metric: str) -> None:
    from ajuste.search.space import SearchSpace

    attrs = study.user_attrs
    if ATTR_SPACE not in attrs or ATTR_CONFIG not in attrs:
        raise AjusteError(f"study {name!r} in {where} was not created by `ajuste tune`; use another --study-name")
    stored_metric = attrs.get(ATTR_METRIC, "val_accuracy")
    if stored_metric != metric:
        raise AjusteError(f"study {name!r} optimises {stored_metric}, not {metric}: resume with "
                          f"--metric {stored_metric}, or use another --study-name")
    stored_space = SearchSpace.from_mapping(attrs[ATTR_SPACE], where=f"study {name}")
    if stored_space != space:
        raise AjusteError(f"refusing to resume study {name!r} with a different search space "
                          f"({stored_space.diff(space)}); use the same --space and strategy, or another "
                          f"--study-name")
    old = _comparable_config(RunConfig.from_dict(attrs[ATTR_CONFIG], where=f"study {name}"))
    diff = _dict_diff(old, _comparable_config(cfg))
    if diff:
        raise AjusteError(f"refusing to resume study {name!r} with different fixed settings "
                          f"({'; '.join(diff)}); use the same options, or another --study-name")


def _fail_stale(optuna: Any, study: Any) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        optuna.storages.fail_stale_trials(study)


def _loop(optuna: Any, study: Any, objective: Any, lock: Any, *, budget: int | None, timeout_s: float | None,
          say: Any, stats: dict, grid: bool) -> str:
    from ajuste.search.objective import TrialFailed

    start = time.monotonic()
    waiting_said = False
    while True:
        if timeout_s is not None and time.monotonic() - start >= timeout_s:
            return "timeout"
        lock.acquire()
        try:
            _fail_stale(optuna, study)
            _fail_dead_local_workers(study, locked=lock.kind in ("sqlite", "postgresql"))
            trials = study.get_trials(deepcopy=False)
            counted = [t for t in trials if _counts_against_budget(t)]
            exhausted = grid and study.sampler.is_exhausted(study)
            waiting = any(t.state.name == "WAITING" for t in counted)
            if ((budget is not None and len(counted) >= budget) or exhausted) and not waiting:
                running = [t.number for t in counted if t.state.name == "RUNNING"]
                lock.release()
                if not running:
                    return "grid exhausted" if exhausted and (budget is None or len(counted) < budget) \
                        else "budget reached"
                # Other workers still run the last trials: wait for them (or for their heartbeat to
                # go stale, which re-queues the slot), so the report covers every trial.
                if not waiting_said:
                    say(f"budget reached; waiting for {len(running)} trial(s) still running elsewhere "
                        f"(#{', #'.join(map(str, running))})", highlight=False, soft_wrap=True)
                    waiting_said = True
                time.sleep(WAIT_POLL_SECONDS)
                continue
            # Keep the lock: the objective releases it once study.ask() has created our trial.
            study.optimize(objective, n_trials=1, catch=(TrialFailed,))
        finally:
            lock.release()
        if stats["failures"] >= MAX_CONSECUTIVE_FAILURES:
            raise AjusteError(f"{stats['failures']} trials in a row failed; last: {stats['last_error']} "
                              f"(AJUSTE_DEBUG=1 shows the traceback)")


def _fail_dead_local_workers(study: Any, *, locked: bool) -> None:
    """A RUNNING trial whose worker was a process of this machine that no longer exists (killed, crashed)
    is failed and re-queued with the same parameters at once — a re-run after a kill need not wait for
    the heartbeat to go stale (that path remains for workers on other machines).

    ``locked``: the caller holds the study lock. Workers record themselves on a new trial before they
    release that lock, so a RUNNING trial with no worker recorded was left by a worker that died holding
    it — between ``study.ask()`` and its first heartbeat, where Optuna's stale-trial check never looks
    (such a trial stayed RUNNING forever and the re-run waited for it)."""
    import socket

    from optuna.trial import TrialState, create_trial

    host = socket.gethostname()
    trials = study.get_trials(deepcopy=False)
    retried = {t.system_attrs.get("failed_trial") for t in trials}
    for t in trials:
        if t.state != TrialState.RUNNING:
            continue
        if "worker" not in t.user_attrs:
            if not locked:
                continue
        else:
            w_host, _, pid = str(t.user_attrs["worker"]).rpartition(":")
            if w_host != host or not pid.isdigit() or int(pid) == os.getpid() or _alive(int(pid)):
                continue
        with contextlib.suppress(Exception):  # another worker may have failed it a moment ago
            study._storage.set_trial_user_attr(t._trial_id, "worker_died", True)
            if not study._storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL):
                continue
            if t.number not in retried:
                study.add_trial(create_trial(state=TrialState.WAITING, params=t.params,
                                             distributions=t.distributions,
                                             system_attrs={**t.system_attrs, "failed_trial": t.number}))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _requeue_interrupted(study: Any) -> None:
    """Re-queue (WAITING, same params) the trial this process left interrupted, so a re-run redoes it.
    The same as Optuna's RetryHeartbeatStaleTrialCallback does for a worker that died."""
    if study is None:
        return
    from optuna.trial import TrialState, create_trial

    with contextlib.suppress(Exception):
        trials = study.get_trials(deepcopy=False)
        retried = {t.system_attrs.get("failed_trial") for t in trials}
        for t in trials:
            if t.state == TrialState.FAIL and t.user_attrs.get("interrupted") and \
                    t.user_attrs.get("worker") == _worker() and t.number not in retried:
                system_attrs = {**t.system_attrs, "failed_trial": t.number}
                study.add_trial(create_trial(state=TrialState.WAITING, params=t.params,
                                             distributions=t.distributions, system_attrs=system_attrs))


def _worker() -> str:
    from ajuste.search.objective import worker_id

    return worker_id()


def _print_trial(console: Any, study: Any, rec: Any, metric: str) -> None:
    leaves = [k.split(".")[-1] for k in rec.params]
    # Short names (lr=) unless two params share one (model.dropout, peft.dropout).
    params = "  ".join(f"{leaf if leaves.count(leaf) == 1 else k}={_short(v)}"
                       for leaf, (k, v) in zip(leaves, rec.params.items()))
    best = best_trial_or_none(study)  # finished trials: this one is told to the study after this line
    best_txt = f" · best {best.value:.4f} (#{best.number})" if best is not None else ""
    if rec.state == "COMPLETE":
        maximize = study.direction.name == "MAXIMIZE"
        if best is None or (rec.value > best.value if maximize else rec.value < best.value):
            best_txt = " · new best"
        what = f"[green]{metric} {rec.value:.4f}[/]"
    elif rec.state == "PRUNED":
        what = f"[yellow]{rec.note or 'pruned'}[/]"
    else:
        what = f"[red]failed[/] ({rec.note})"
    console.print(f"trial {rec.number:>3} {what}{best_txt} · {rec.epochs} ep · {rec.seconds:.1f}s · {params}",
                  highlight=False, soft_wrap=True)


def _short(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


# -- outputs -------------------------------------------------------------------------------------------


def _writing(out: Path):
    """``out``'s lock while this worker writes there: a no-op when it holds it already (default storage);
    with a shared server, a worker finishing at the same moment as another on this machine waits its turn."""
    return locks.hold(out, what="search", wait=120)


def write_outputs(study: Any, out: Path, *, metric: str, url: str) -> dict[str, Path]:
    from ajuste.search.report import write_report
    from ajuste.search.storage import redact

    out = Path(out)
    files = {"tune": out / "tune.json", "best": out / "best.json", "trials": out / "trials.csv"}
    with _writing(out):
        atomic_write_json(files["best"], best_record(study, metric=metric, url=redact(url), out=out))
        write_trials_csv(study, files["trials"])
        files["report"] = write_report(study, out / "report.html", metric=metric, storage=redact(url))
    return files


def best_record(study: Any, *, metric: str, url: str, out: Path) -> dict[str, Any]:
    best = best_trial_or_none(study)
    rec: dict[str, Any] = {
        "study": study.study_name, "storage": url, "metric": metric,
        "direction": study.direction.name.lower(), "objective": objective_text(metric),
        "trials": state_counts(study),
        "number": None, "value": None, "params": None, "config": None,
        "data_digest": study.user_attrs.get(ATTR_DATA),
    }
    if best is not None:
        rec.update(number=best.number, value=best.value, params=dict(best.params),
                   epochs=best.user_attrs.get("epochs"), best_epoch=best.user_attrs.get("best_epoch"),
                   val_loss=best.user_attrs.get("val_loss"), val_accuracy=best.user_attrs.get("val_accuracy"),
                   config=best_config(study, best).to_dict(),
                   retrain=f"ajuste train --from-study {out}")
    return rec


def write_trials_csv(study: Any, path: Path) -> Path:
    import io

    cols, rows = trial_rows(study)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
    return path


def retrain_config(ref: str) -> tuple[RunConfig, dict[str, Any]]:
    """``ajuste train --from-study REF``: the best trial's config, and where it came from."""
    from ajuste.search.storage import resolve_study_ref

    info = resolve_study_ref(ref)
    return RunConfig.from_dict(info["config"], where=f"--from-study {ref}"), info
