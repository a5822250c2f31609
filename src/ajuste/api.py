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

import base64
import html
import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

from ajuste import locks
from ajuste.config import RunConfig, load_config
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import ajuste_dir_kind, read_json, read_jsonl

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
    from ajuste.train.run import resolve_model_early, train_run

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
            workers: int = 0, progress: bool = True) -> "Study":
    """Run a study, as ``ajuste compare``: ``strategies`` × ``fractions`` × ``seeds`` on one backbone, then the
    recommendation, the report and ``best_model/``.

    ``strategies`` default to classical, linear-probe, two-stage and scratch-compact; ``fractions`` to 0.1, 0.3
    and 1. ``budget``: seconds, or a duration such as ``"30m"``. ``models``: one backbone, as ``model`` (several
    are not supported yet: run one study per backbone). ``overrides`` apply to every cell. ``workers``: cells
    trained at once (0: one per core). An unfinished study in ``out`` resumes. Returns the ``Study``.
    """
    from ajuste.report.html import build_report
    from ajuste.study.runner import run_study
    from ajuste.study.spec import DEFAULT_FRACTIONS, DEFAULT_STRATEGIES, StudySpec, parse_budget
    from ajuste.train.run import resolve_model_early

    if models is not None:
        if isinstance(models, str) or len(models) != 1:
            raise ConfigError(f"models={models!r}: a study runs on one backbone for now; give one name (or "
                              f"model=...), and one study per backbone")
        model = models[0]
    if workers < 0:
        raise ConfigError(f"workers={workers}: give a number of cells trained at once (0: one per core)")
    sets = [f"{k}={v}" for k, v in overrides.items()] if isinstance(overrides, dict) else list(overrides or [])
    model = resolve_model_early(_config(data, **{"model.name": model}))[0].model.name
    spec = StudySpec(source=str(data), model=model, strategies=list(strategies or DEFAULT_STRATEGIES),
                     fractions=[float(f) for f in (fractions or DEFAULT_FRACTIONS)], seeds=seeds,
                     budget_seconds=budget if isinstance(budget, (int, float)) or budget is None
                     else parse_budget(budget), sets=sets)
    study_dir = Path(out) if out is not None else default_study_dir(data, model)
    con = _console(progress)
    with locks.hold(study_dir, what="study", remove_if_unused=True):  # the report and best_model/ too
        run_study(spec=spec, study_dir=study_dir, console=con, progress=progress, similarity=similarity,
                  workers=workers)
        build_report(study_dir)
    return Study(study_dir)


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
    from ajuste.train.run import resolve_model_early

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


# --- results -----------------------------------------------------------------------------------------------


@dataclass
class Prediction:
    """One input's predicted ``label``, its ``probability``, and every class's in ``probabilities``."""

    label: str
    """The most probable class."""
    probability: float
    """Its probability."""
    probabilities: dict[str, float] = field(repr=False)
    """Every class's probability, by name."""


class Run:
    """A finished run directory: its model, settings and test metrics; predict, evaluate and export with it."""

    path: Path
    """The run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._loaded: Any = None

    @property
    def loaded(self) -> Any:
        """The rebuilt model and its preprocessing (``ajuste.train.run_load.LoadedRun``), loaded once."""
        if self._loaded is None:
            from ajuste.train.run_eval import inference_device
            from ajuste.train.run_load import load_run

            self._loaded = load_run(self.path)
            self._loaded.backbone.to(inference_device(self._loaded.config))
        return self._loaded

    @property
    def config(self) -> RunConfig:
        """The resolved settings the run trained with."""
        return self.loaded.config

    @property
    def summary(self) -> dict[str, Any]:
        """Everything summary.json records: strategy, model, data sizes, epochs, seconds, parameters..."""
        return dict(self.loaded.summary or {})

    @property
    def metrics(self) -> dict[str, Any]:
        """Test metrics, keyed as ``ajuste evaluate --json`` keys them (``accuracy``, ``macro_f1``, ...)."""
        return dict(self.summary.get("test") or {})

    @property
    def classes(self) -> list[str]:
        """The class names, in the order of the model's outputs."""
        return list(self.loaded.classes)

    def predict(self, inputs: Any) -> Prediction | list[Prediction]:
        """Labels and probabilities. ``inputs``: one item or a list of them — texts for a text model; for an
        image model, image paths, PIL images or numpy arrays (uint8 0–255, or floats in [0, 1]; (H, W) or
        (H, W, C), or a stack (N, H, W[, C])). One item gives one ``Prediction``, a list or a stack a list."""
        from ajuste.train.predict_inputs import in_memory_items
        from ajuste.train.run_eval import predict_items

        items, single = in_memory_items(inputs, self.loaded)
        probs = predict_items(self.loaded, items)
        out = [Prediction(self.classes[int(p.argmax())], float(p.max()),
                          {c: float(v) for c, v in zip(self.classes, p)}) for p in probs]
        return out[0] if single else out

    def evaluate(self, data: str | Path | None = None, *, text_col: str | None = None,
                 label_col: str | None = None) -> dict[str, Any]:
        """Metrics on ``data`` (a folder or table with the run's classes), or on the run's own test split."""
        from ajuste.train.run_eval import evaluate_run

        return evaluate_run(self.path, None if data is None else str(data), text_col=text_col, label_col=label_col)

    def export(self, format: str = "ajuste", out: str | Path | None = None, *, merge: bool = False,
               overwrite: bool = False) -> Path:
        """Write the model for inference (``ajuste``, ``hf``, ``onnx`` or ``torchscript``), checked to give the
        run's logits; returns the directory (default: <run>-<format> beside the run)."""
        from ajuste.export import export_run

        target = Path(out) if out is not None else self.path.with_name(f"{self.path.name}-{format}")
        return export_run(run_dir=self.path, out=target, format=format, merge=merge, overwrite=overwrite).out

    def __repr__(self) -> str:
        s = self.summary
        return (f"Run({str(self.path)!r}: {s.get('strategy')} on {s.get('model')}, test accuracy "
                f"{s.get('test_accuracy', float('nan')):.4f})")

    def _repr_html_(self) -> str:
        s, m = self.summary, self.metrics
        rows = [("path", str(self.path)), ("strategy", s.get("strategy")), ("model", s.get("model")),
                ("training examples", s.get("n_train")), ("test accuracy", _num(m.get("accuracy"))),
                ("test macro-F1", _num(m.get("macro_f1"))), ("epochs", s.get("epochs")),
                ("train seconds", s.get("train_seconds")), ("trainable parameters", s.get("trainable_params"))]
        return "<b>ajuste run</b>" + _html_table(["", ""], [[k, v] for k, v in rows])


class Study:
    """A study directory of ``ajuste compare``: its recommendation, results, report and handed-over model."""

    path: Path
    """The study directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        if ajuste_dir_kind(self.path) != "study":
            raise AjusteError(f"{self.path} is not a study of `ajuste compare` (no study.json)")

    @property
    def advice(self) -> dict[str, Any]:
        """The report's advice.json: the recommendation's text, reasons, runner-up, hand-over..."""
        path = self.path / "advice.json"
        if not path.is_file():
            raise AjusteError(f"{self.path} has no advice yet; finish it with ajuste.compare (same out)")
        return read_json(path, "re-run ajuste.compare with the same out to write it again")

    @property
    def recommendation(self) -> dict[str, Any]:
        """``strategy``, ``model``, ``text``, ``reasons`` and ``confidence`` of the recommendation."""
        a, spec = self.advice, json.loads((self.path / "study.json").read_text())
        return {"strategy": a.get("winner"), "model": spec.get("model"), "text": a.get("text"),
                "reasons": list(a.get("reasons", [])), "confidence": a.get("confidence")}

    @property
    def results(self) -> "Results":
        """One record per finished cell (strategy, fraction, seed, accuracies, seconds...)."""
        return Results(read_jsonl(self.path / "results.jsonl"))

    @property
    def best_model(self) -> Run:
        """The handed-over model (``best_model/``)."""
        return load(self.path / "best_model")

    @property
    def report_path(self) -> Path:
        """The HTML report."""
        return self.path / "report.html"

    def __repr__(self) -> str:
        return f"Study({str(self.path)!r}: {self.recommendation['text']})"

    def _repr_html_(self) -> str:
        rec = self.recommendation
        from ajuste.study.advice import aggregate

        rows = [[r["strategy"], f"{r['fraction']:g}", r["n_train"], _num(r["test_accuracy"]), _num(r["val_accuracy"]),
                 f"{r['cost_seconds']:.0f}"] for r in aggregate(list(self.results))]
        parts = [f"<b>{html.escape(str(rec['text']))}</b>", "<ul>"]
        parts += [f"<li>{html.escape(r)}</li>" for r in rec["reasons"]]
        parts.append("</ul>")
        parts.append(_html_table(["strategy", "fraction", "n train", "test acc", "val acc", "seconds alone"], rows))
        plot = self.path / "data_efficiency.png"
        if plot.is_file():
            data = base64.b64encode(plot.read_bytes()).decode()
            parts.append(f'<img alt="data efficiency" src="data:image/png;base64,{data}" style="max-width:720px">')
        return "\n".join(parts)


class Results(list):
    """A study's records: a list of dicts, and ``to_pandas()`` when pandas is installed."""

    def to_pandas(self) -> Any:
        """The records as a pandas DataFrame (one row per cell)."""
        try:
            import pandas as pd
        except ImportError:
            raise AjusteError("to_pandas() needs pandas: pip install pandas") from None
        return pd.DataFrame([{k: v for k, v in r.items() if k not in ("history", "confusion")} for r in self])


@dataclass
class Search:
    """An ``ajuste tune`` search: its best trial and the Optuna study behind it."""

    out: Path
    """The search's output directory (best.json, trials.csv, report.html)."""
    storage: str
    """The Optuna storage URL the trials are in."""
    name: str
    """The Optuna study's name."""
    metric: str
    """What the trials maximise or minimise: ``val_accuracy`` or ``val_loss``."""
    best: dict[str, Any] | None
    """The best trial so far (``number``, ``value``, ``params``), None before one completes."""

    @property
    def best_params(self) -> dict[str, Any]:
        """The best trial's hyperparameters (dotted config keys)."""
        return dict(self.best["params"]) if self.best else {}

    @property
    def best_value(self) -> float | None:
        """The best trial's ``metric``."""
        return self.best["value"] if self.best else None

    @property
    def study(self) -> Any:
        """The ``optuna.Study``, loaded from its storage."""
        import optuna

        return optuna.load_study(study_name=self.name, storage=self.storage)


# --- helpers ---------------------------------------------------------------------------------------------


def _num(x: Any) -> str:
    return "" if x is None else f"{x:.4f}"


def _html_table(headers: list[str], rows: list[list[Any]]) -> str:
    head = "".join(f"<th>{html.escape(str(h))}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(v))}</td>" for v in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
