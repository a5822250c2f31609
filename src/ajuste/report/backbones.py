"""A study across backbones (``compare --models a,b``): one study per backbone in ``<study>/<backbone>/``, then
this page: the backbone × strategy table, each backbone's best model against its cost per prediction (measured
here, on the test split), and the recommendation that names backbone and strategy together, with the capacity
reason ("lite2 gained 0.4 points over lite0 at 2.1× the inference cost").

Each backbone's study is a whole study (cells, advice, report, best_model/) and resumes as one; this page is
rebuilt from their files."""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Any

import numpy as np

from ajuste.io import atomic_write_json, atomic_write_text, read_jsonl
from ajuste.report.html import _png
from ajuste.report.plots import _plt
from ajuste.strategies.base import baseline_strategies
from ajuste.study.advice import handed_over
from ajuste.study.runner import export_best
from ajuste.study.scores import direction, fmt, gap_text, metric_of, shown, with_scores
from ajuste.training.prepare import prepare_data
from ajuste.training.run_eval import predict_items
from ajuste.training.run_load import load_run

PREDICTION_PROBE = 64  # test examples timed per backbone (after one warm-up pass)


def backbone_dir(study_dir: Path, model: str) -> Path:
    """A backbone's study inside a multi-backbone one: named after the model (``timm/resnet50`` →
    ``timm-resnet50``); a local folder by its last component and a digest of its full path (two folders of one
    name stay two studies), never a name that starts with a dash."""
    import hashlib
    import re

    name = model
    if model.startswith(("/", "./", "../", "~")) or Path(model).expanduser().is_dir():
        where = str(Path(model).expanduser().resolve())
        name = f"{Path(where).name}-{hashlib.sha1(where.encode()).hexdigest()[:6]}"
    return Path(study_dir) / (re.sub(r"[^A-Za-z0-9_.-]+", "-", name).lstrip("-.") or "model")


def build_backbones_report(study_dir: Path, models: list[str], *, ranking: dict[str, Any] | None = None) -> dict:
    """Read each backbone's study, time its best model's predictions, write backbones.json, report.html and the
    overall best_model/; returns the advice (``text``, ``winner_model``, ``winner``, ``reasons``)."""
    study_dir = Path(study_dir)
    rows, table, floors = [], {}, []
    probes: dict[tuple, Any] = {}  # the backbones' studies share their data: its test examples read once
    for model in models:
        d = backbone_dir(study_dir, model)
        records = with_scores(read_jsonl(d / "results.jsonl")) if (d / "results.jsonl").is_file() else []
        floors += [r for r in records if r["strategy"] in baseline_strategies()]
        # the backbone's best deep arm (the floor does not use the backbone), by validation, as its study hands over
        best = handed_over(records, {"winner": None})
        if best is None or best["strategy"] in baseline_strategies():
            continue
        top = max(r["fraction"] for r in records)
        for s in sorted({r["strategy"] for r in records}):
            vals = [r["test_score"] for r in records if r["strategy"] == s and r["fraction"] == top]
            if vals:
                table.setdefault(model, {})[s] = float(np.mean(vals))
        rows.append({"model": model, "strategy": best["strategy"], "fraction": best["fraction"], "cell": best["cell"],
                     "val_score": best["val_score"], "test_score": best["test_score"], "metric": best.get("metric"),
                     "cost_seconds": best.get("cost_seconds"), "total_params": best.get("total_params"),
                     "seconds_per_prediction": prediction_seconds(d / "runs" / best["cell"], probes),
                     "dir": d.name})
    advice = _advise(rows, ranking, max(floors, key=lambda r: r["val_score"]) if floors else None)
    atomic_write_json(study_dir / "backbones.json", {"models": models, "rows": rows, "table": table,
                                                      "ranking": ranking, "advice": advice})
    if advice.get("winner_model"):
        win = next(r for r in rows if r["model"] == advice["winner_model"])
        export_best(backbone_dir(study_dir, win["model"]), win["cell"], into=study_dir)
    png = _png(_cost_plot(rows)) if rows else None
    if png:
        (study_dir / "score_vs_prediction_cost.png").write_bytes(png)
    atomic_write_text(study_dir / "report.html", _render(rows, table, advice, png))
    return advice


def prediction_seconds(run_dir: Path, probes: dict[tuple, Any] | None = None) -> float | None:
    """Seconds per example of ``run_dir``'s predictions on its own test split (``PREDICTION_PROBE`` examples,
    after a warm-up pass), on this machine: what the model costs where it will be used. ``probes`` keeps the test
    examples read for one data configuration, for the next run on the same data."""
    if not (run_dir / "model.safetensors").is_file():
        return None
    run = load_run(run_dir)
    d = run.config.data
    key = (str(d.source), d.text_col, d.label_col, d.task, d.split_seed, d.val_size, d.test_size)
    probes = {} if probes is None else probes
    if key not in probes:
        data, splits = prepare_data(run.config.override({"data.fraction": 1.0}))
        idx = splits["test"][:PREDICTION_PROBE]
        probes[key] = data.inputs[idx] if isinstance(data.inputs, np.ndarray) else [data.inputs[i] for i in idx]
    items = probes[key]
    predict_items(run, items[:8])  # warm-up: first-call allocations, lazy imports
    t0 = time.perf_counter()
    predict_items(run, items)
    return (time.perf_counter() - t0) / max(1, len(items))


def _advise(rows: list[dict[str, Any]], ranking: dict[str, Any] | None, floor: dict[str, Any] | None) -> dict:
    if not rows:
        return {"text": "no backbone finished a cell of a deep arm", "reasons": [], "winner_model": None}
    win = max(rows, key=lambda r: (r["val_score"], -(r["seconds_per_prediction"] or 0.0)))
    label = metric_of(rows)
    text = (f"Use {win['model']} with {win['strategy']}: test {label} {fmt(win['test_score'], win)} "
            f"(validation {fmt(win['val_score'], win)})")
    reasons = []
    if floor is not None:
        beaten = win["val_score"] > floor["val_score"]
        reasons.append(f"the {floor['strategy']} floor (no deep network, the same whatever the backbone): test "
                       f"{label} {fmt(floor['test_score'], floor)}, validation {fmt(floor['val_score'], floor)}"
                       + ("" if beaten else f" — at least as good as every backbone on validation: see "
                                            f"{backbone_dir(Path('.'), rows[0]['model']).name}/report.html"))
    timed = [r for r in rows if r["seconds_per_prediction"]]
    cheap = min(timed, key=lambda r: r["seconds_per_prediction"]) if timed else None
    if cheap is not None and cheap is not win and win["seconds_per_prediction"]:
        ratio = win["seconds_per_prediction"] / cheap["seconds_per_prediction"]
        gain = win["test_score"] - cheap["test_score"]
        reasons.append(f"{win['model']} gained {gap_text(gain, rows)} over {cheap['model']} ({cheap['strategy']}) "
                       f"at {ratio:.1f}× the inference cost ({1e3 * win['seconds_per_prediction']:.2f} vs "
                       f"{1e3 * cheap['seconds_per_prediction']:.2f} ms per prediction here)")
    elif cheap is win and len(rows) > 1:
        reasons.append(f"{win['model']} is also the cheapest to run of the {len(rows)} backbones "
                       f"({1e3 * win['seconds_per_prediction']:.2f} ms per prediction here)")
    for r in sorted(rows, key=lambda r: -r["val_score"]):
        if r is not win:
            reasons.append(f"{r['model']}: best arm {r['strategy']}, test {label} {fmt(r['test_score'], r)} "
                           f"(validation {fmt(r['val_score'], r)})")
    if ranking and ranking.get("order"):
        reasons.append(f"chosen from the transferability ranking: {', '.join(ranking['order'])}")
    return {"text": text, "reasons": reasons, "winner_model": win["model"], "winner": win["strategy"],
            "metric": label}


def _cost_plot(rows: list[dict[str, Any]]) -> Any:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 4))
    pts = [r for r in rows if r["seconds_per_prediction"]]
    ax.scatter([1e3 * r["seconds_per_prediction"] for r in pts], [shown(r["test_score"], r) for r in pts])
    for r in pts:
        ax.annotate(f"{r['model']} ({r['strategy']})", (1e3 * r["seconds_per_prediction"], shown(r["test_score"], r)),
                    textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("ms per prediction (measured here, test split)")
    ax.set_ylabel(f"test {metric_of(rows)}{direction(rows)} (best arm)")
    ax.set_title("Score against the cost of a prediction")
    fig.tight_layout()
    return fig


def _render(rows: list[dict[str, Any]], table: dict[str, dict[str, float]], advice: dict[str, Any],
            png: bytes | None) -> str:
    import base64

    esc = html.escape
    strategies = sorted({s for t in table.values() for s in t})
    head = "".join(f"<th>{esc(s)}</th>" for s in strategies)
    body = "".join(f"<tr><td><a href='{esc(r['dir'])}/report.html'>{esc(r['model'])}</a></td>"
                   + "".join(f"<td>{fmt(table.get(r['model'], {}).get(s, float('nan')), rows)}</td>"
                             for s in strategies)
                   + f"<td>{1e3 * (r['seconds_per_prediction'] or float('nan')):.2f}</td></tr>" for r in rows)
    parts = ["<html><head><meta charset='utf-8'><title>ajuste: backbones</title></head><body>",
             f"<h1>Which backbone, which strategy</h1><p><b>{esc(advice['text'])}</b></p>",
             "<ul>" + "".join(f"<li>{esc(x)}</li>" for x in advice["reasons"]) + "</ul>",
             f"<h2>Test {esc(advice.get('metric', ''))}{direction(rows)} at the largest fraction (mean over "
             f"seeds)</h2>",
             f"<table border='1'><tr><th>backbone</th>{head}<th>ms / prediction</th></tr>{body}</table>"]
    if png:
        parts.append(f"<img src='data:image/png;base64,{base64.b64encode(png).decode()}'>")
    parts.append("</body></html>")
    return "\n".join(parts)
