"""What the Python API hands back: a ``Run`` (a trained model), a ``Study`` (``ajuste compare``'s directory), a
``Search`` (``ajuste tune``'s), ``Prediction`` and ``Results``; each renders as HTML in Jupyter."""

from __future__ import annotations

import base64
import html
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ajuste.config import RunConfig
from ajuste.errors import AjusteError
from ajuste.io import ajuste_dir_kind, read_json, read_jsonl


@dataclass
class Prediction:
    """One input's predicted ``label``, its ``probability``, and every class's in ``probabilities``."""

    label: str
    """The most probable class."""
    probability: float
    """Its probability."""
    probabilities: dict[str, float] = field(repr=False)
    """Every class's probability, by name."""
    labels: list[str] | None = None
    """Multi-label runs: every label at or over its threshold (``label`` is then the most probable one)."""
    value: float | None = None
    """Regression runs: the predicted number, in the target's units (``label`` is then empty, ``probability``
    NaN)."""


class Run:
    """A finished run directory: its model, settings and test metrics; predict, evaluate and export with it."""

    path: Path
    """The run directory."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._loaded: Any = None

    @property
    def loaded(self) -> Any:
        """The rebuilt model and its preprocessing (``ajuste.training.run_load.LoadedRun``), loaded once."""
        if self._loaded is None:
            from ajuste.training.run_eval import inference_device
            from ajuste.training.run_load import load_run

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
        """Labels and probabilities, calibrated by the run's temperature (its ``calibration.json``; the labels are
        the network's arg-max either way). ``inputs``: one item or a list of them — texts for a text model; for an
        image model, image paths, PIL images or numpy arrays (uint8 0–255, or floats in [0, 1]; (H, W) or
        (H, W, C), or a stack (N, H, W[, C])). One item gives one ``Prediction``, a list or a stack a list."""
        from ajuste.training.predict_inputs import in_memory_items
        from ajuste.training.run_eval import predict_items

        items, single = in_memory_items(inputs, self.loaded)
        probs = predict_items(self.loaded, items)
        task = self.loaded.task
        if task.kind == "regression":
            out = [Prediction("", float("nan"), {}, value=float(v)) for v in probs]
        else:
            chosen = task.labels_of(probs) if task.kind == "multilabel" else [None] * len(probs)
            out = [Prediction(self.classes[int(p.argmax())], float(p.max()),
                              {c: float(v) for c, v in zip(self.classes, p)},
                              labels=None if c is None else [self.classes[k] for k in np.flatnonzero(c)])
                   for p, c in zip(probs, chosen)]
        return out[0] if single else out

    def evaluate(self, data: str | Path | None = None, *, text_col: str | None = None,
                 label_col: str | None = None) -> dict[str, Any]:
        """Metrics on ``data`` (a folder or table with the run's classes), or on the run's own test split."""
        from ajuste.training.run_eval import evaluate_run

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
        run = Run(self.path / "best_model")
        run.loaded  # refuses, in one line, a missing or damaged best_model/
        return run

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
