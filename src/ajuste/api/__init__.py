"""The Python API: what the CLI does, from a notebook or a script.

    import ajuste
    study = ajuste.compare("digits")             # strategies × fractions × seeds → recommendation, report
    study.recommendation["strategy"]             # e.g. 'two-stage'
    run = study.best_model                       # the handed-over model, a Run
    run.predict(["photo.jpg"]), run.evaluate("new_photos/"), run.export("onnx", "model_onnx")

Every entry point takes the data first and the rest by keyword, with the CLI's settings: ``overrides`` are the
``--set`` keys (``{"optim.lr": 3e-5}`` or ``["optim.lr=3e-5"]``) and ``config`` a YAML file or a ``RunConfig``.
Errors are ``ajuste.errors.AjusteError`` with the CLI's one-line messages.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any, Sequence

from ajuste import locks
from ajuste.api.results import Prediction, Results, Run, Search, Study
from ajuste.config import RunConfig, load_config
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import ajuste_dir_kind, read_json

__all__ = ["train", "compare", "tune", "load", "Run", "Study", "Search", "Prediction", "Results"]


def _config(data: str | Path | None, *, config: str | Path | RunConfig | None = None,
            overrides: dict[str, Any] | Sequence[str] | None = None, **keys: Any) -> RunConfig:
    """Defaults ← ``config`` (file or object) ← ``keys`` (dotted names, None: left as they are) ← ``overrides``."""
    cfg = config if isinstance(config, RunConfig) else load_config(config)
    if data is not None:
        cfg = cfg.override({"data.source": str(data)}, where="data")
    for key, value in keys.items():
        if value is not None:
            cfg = cfg.override({key: value}, where=key)
    if overrides:
        cfg = cfg.override(dict(overrides) if isinstance(overrides, dict) else list(overrides), where="overrides")
    return cfg


def default_run_dir(cfg: RunConfig) -> Path:
    """Where a run goes without ``out``: runs/<data>-<model>-<strategy>-s<seed>[-f<fraction>]; re-running the
    same settings resumes an unfinished run, and a finished one gets a fresh sibling (-2, -3...)."""
    name = Path(str(cfg.data.source).rstrip("/")).name or "data"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}-{cfg.model.name}-{cfg.strategy.name}-s{cfg.train.seed}")
    if cfg.data.fraction != 1.0:
        stem += f"-f{cfg.data.fraction:g}"
    base = Path("runs") / stem
    candidate, k = base, 2
    while (candidate / "summary.json").is_file():
        candidate, k = Path(f"{base}-{k}"), k + 1
    return candidate


def default_study_dir(data: str | Path, model: str) -> Path:
    """Where a study goes without ``out``: studies/<data>-<model>."""
    name = Path(str(data).rstrip("/")).name or "data"
    return Path("studies") / re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}-{model}")


def _console(progress: bool) -> Any:
    from rich.console import Console

    return Console(stderr=True) if progress else None


# --- entry points ------------------------------------------------------------------------------------------


def train(data: str | Path = "digits", *, model: str = "auto", strategy: str = "auto", out: str | Path | None = None,
          overrides: dict[str, Any] | Sequence[str] | None = None, config: str | Path | RunConfig | None = None,
          overwrite: bool = False, progress: bool = True) -> "Run":
    """Train one model, as ``ajuste train``: fine-tune ``model`` with ``strategy`` or train it from scratch.

    ``data``: an image folder, a CSV/TSV/JSONL of texts, an .npz, or ``"digits"``. ``model``: ``"auto"`` (the
    offline backbone for the data), a name of ``ajuste models``, ``timm/<arch>`` or ``hf:<id>``. ``strategy``:
    ``"auto"`` (two-stage) or a name of ``ajuste strategies``. ``out``: the run directory (default
    runs/<data>-<model>-<strategy>-s<seed>); an unfinished run there resumes. Returns the finished ``Run``.
    """
    from ajuste.training.run import resolve_model_early, train_run

    cfg = _config(data, config=config, overrides=overrides,
                  **{"model.name": model, "strategy.name": None if strategy == "auto" else strategy})
    cfg, data_obj = resolve_model_early(cfg)
    run_dir = Path(out) if out is not None else default_run_dir(cfg)
    res = train_run(cfg=cfg, out=run_dir, data=data_obj, progress=progress, console=_console(progress),
                    overwrite=overwrite)
    if res.summary.get("status") != "complete":
        raise AjusteError(f"training stopped after {res.summary.get('epochs', 0)} epochs; call train() again with "
                          f"out={str(run_dir)!r} to resume")
    return Run(run_dir)


def compare(data: str | Path = "digits", *, model: str = "auto", models: Sequence[str] | None = None,
            strategies: Sequence[str] | None = None, fractions: Sequence[float] | None = None, seeds: int = 1,
            budget: str | float | None = None, out: str | Path | None = None,
            overrides: dict[str, Any] | Sequence[str] | None = None, similarity: bool = True,
            workers: int = 0, text_col: str | None = None, label_col: str | None = None,
            progress: bool = True) -> "Study":
    """Run a study, as ``ajuste compare``: ``strategies`` × ``fractions`` × ``seeds`` on one backbone, then the
    recommendation, the report and ``best_model/``.

    ``strategies`` default to classical, linear-probe, two-stage and scratch-compact; ``fractions`` to 0.1, 0.3
    and 1. ``budget``: seconds, or a duration such as ``"30m"``. ``models``: several backbones, one study each in
    ``out/<backbone>/`` (a budget shared equally), then a page that compares them and names backbone and
    strategy together (`ajuste.report.backbones`). ``overrides`` apply to every cell. ``workers``: cells
    trained at once (0: one per core). ``text_col``/``label_col``: a table's columns, when not detected. An
    unfinished study in ``out`` resumes. Returns the ``Study`` (with several backbones: the winner's).
    """
    from ajuste.study.spec import DEFAULT_FRACTIONS, DEFAULT_STRATEGIES, StudySpec, parse_budget
    from ajuste.training.run import resolve_model_early

    if models is not None:
        if isinstance(models, str):
            raise ConfigError(f"models={models!r}: give a list of backbone names, e.g. ['efficientnet_lite0', "
                              f"'efficientnet_lite2']")
        if len(models) > 1:
            sets = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides or [])
            spec = StudySpec(source=str(data), model=models[0], strategies=list(strategies or DEFAULT_STRATEGIES),
                             fractions=[float(f) for f in (fractions or DEFAULT_FRACTIONS)], seeds=seeds,
                             budget_seconds=budget if isinstance(budget, (int, float)) or budget is None
                             else parse_budget(budget), sets=sets, text_col=text_col, label_col=label_col)
            study_dir = Path(out) if out is not None else default_study_dir(data, "backbones")
            advice, _ = run_compare_models(spec, list(models), study_dir, console=_console(progress),
                                           progress=progress, similarity=similarity, workers=workers)
            from ajuste.report.backbones import backbone_dir

            return Study(backbone_dir(study_dir, advice["winner_model"])) if advice.get("winner_model") \
                else Study(study_dir)
        model = models[0]
    if workers < 0:
        raise ConfigError(f"workers={workers}: give a number of cells trained at once (0: one per core)")
    sets = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides or [])
    model = resolve_model_early(_config(data, **{"model.name": model, "data.text_col": text_col,
                                                 "data.label_col": label_col}))[0].model.name
    spec = StudySpec(source=str(data), model=model, strategies=list(strategies or DEFAULT_STRATEGIES),
                     fractions=[float(f) for f in (fractions or DEFAULT_FRACTIONS)], seeds=seeds,
                     budget_seconds=budget if isinstance(budget, (int, float)) or budget is None
                     else parse_budget(budget), sets=sets, text_col=text_col, label_col=label_col)
    study_dir = Path(out) if out is not None else default_study_dir(data, model)
    return run_compare(spec, study_dir, console=_console(progress), progress=progress, similarity=similarity,
                       workers=workers)[0]


def run_compare(spec: Any, study_dir: Path, *, console: Any, progress: bool, similarity: bool = True,
                workers: int = 0, share_idle_cores: bool = False) -> tuple["Study", dict[str, Any], float]:
    """A study from its spec, as ``compare`` and the CLI run it: the cells, the report and ``best_model/``, and
    the report on the study's MLflow run when it logs to one. Returns the Study, its advice and the seconds."""
    from ajuste.report.html import build_report
    from ajuste.study.runner import run_study

    with locks.hold(study_dir, what="study", remove_if_unused=True):  # the report and best_model/ too
        res = run_study(spec=spec, study_dir=study_dir, console=console, progress=progress, similarity=similarity,
                        workers=workers, share_idle_cores=share_idle_cores)
        advice = build_report(study_dir)
        if res.mlflow_run_id:  # the report goes to the study's MLflow run, beside its cells' runs
            from ajuste.training import tracking_store

            tracking_store.log_to_run(res.mlflow_run_id, files=[study_dir / "report.html", study_dir / "results.md"],
                                      tags={"ajuste.recommendation": advice["text"],
                                            "ajuste.best_cell": advice.get("best_cell", "")})
    return Study(study_dir), advice, res.seconds


def run_compare_models(spec: Any, models: list[str], study_dir: Path, *, console: Any, progress: bool,
                       similarity: bool = True, workers: int = 0, ranking: dict[str, Any] | None = None,
                       share_idle_cores: bool = False) -> tuple[dict[str, Any], float]:
    """One study per backbone (``spec`` with its model replaced; a budget shared equally), then the page that
    compares them (`ajuste.report.backbones`). Returns its advice and the seconds."""
    import dataclasses
    import time

    from ajuste.report.backbones import backbone_dir, build_backbones_report
    from ajuste.strategies.base import baseline_strategies

    t0 = time.perf_counter()
    share = None if spec.budget_seconds is None else spec.budget_seconds / len(models)
    with locks.hold(study_dir, what="study", remove_if_unused=True):
        floors = baseline_strategies()
        for i, m in enumerate(models):
            if console is not None:
                console.print(f"[bold]backbone {m}[/]" + (f" (budget {share:.0f}s)" if share else ""))
            # the floor (no deep network) does not depend on the backbone: it runs in the first study only
            arms = [s for s in spec.strategies if i == 0 or s not in floors] or spec.strategies
            sub = dataclasses.replace(spec, model=m, budget_seconds=share, strategies=arms)
            run_compare(sub, backbone_dir(study_dir, m), console=console, progress=progress, similarity=similarity,
                        workers=workers, share_idle_cores=share_idle_cores)
        advice = build_backbones_report(study_dir, models, ranking=ranking)
    return advice, time.perf_counter() - t0


def tune(data: str | Path = "digits", *, strategy: str, trials: int = 20, sampler: str = "tpe",
         pruner: str = "auto", storage: str | None = None, model: str = "auto", out: str | Path | None = None,
         metric: str = "val_accuracy", timeout: str | float | None = None,
         overrides: dict[str, Any] | Sequence[str] | None = None, space: str | Path | None = None,
         progress: bool = True) -> "Search":
    """Search one strategy's hyperparameters with Optuna, as ``ajuste tune``; calling it again continues the
    search. ``sampler``: grid, random, tpe, gp, cmaes or nsga2; ``pruner``: auto (successive halving),
    sha, hyperband, median or none; ``storage``: an Optuna storage URL (default: SQLite in ``out``). Returns
    the ``Search``."""
    from ajuste.search.runner import default_study_name
    from ajuste.search.runner import tune as run_tune
    from ajuste.search.samplers import check_names
    from ajuste.search.storage import default_storage
    from ajuste.training.run import resolve_model_early

    check_names(sampler, pruner)
    cfg = _config(data, overrides=overrides, **{"model.name": model, "strategy.name": strategy})
    cfg, data_obj = resolve_model_early(cfg)
    name = default_study_name(cfg)
    out_dir = Path(out) if out is not None else Path("runs") / f"tune-{name}"
    out_dir.mkdir(parents=True, exist_ok=True)
    storage = storage or default_storage(out_dir)
    res = run_tune(cfg=cfg, out=out_dir, trials=trials, sampler=sampler, pruner=pruner, space=space, storage=storage,
                   study_name=name, timeout=timeout, metric=metric, seed=0, console=_console(progress),
                   data=data_obj)
    return Search(out=res.out, storage=storage, name=res.study_name, metric=res.metric, best=res.best)


def load(path: str | Path) -> "Run":
    """A trained model: a run directory, a study (its ``best_model/``), or an export in ajuste's format."""
    path = Path(path)
    if path.is_dir() and ajuste_dir_kind(path) == "study":
        path = path / "best_model"
    if (path / "export.json").is_file():
        fmt = read_json(path / "export.json", "restore it").get("format", "?")
        raise AjusteError(f"{path} is a {fmt} export, for its own runtime; load the run it came from, or an export "
                          f"in ajuste's format (run.export('ajuste', ...))")
    run = Run(path)
    run.loaded  # refuses, in one line, a directory that is not a finished run
    return run
