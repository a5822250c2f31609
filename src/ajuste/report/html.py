"""The study report: one self-contained HTML file (plots embedded), plus PNGs and a Markdown table."""

from __future__ import annotations

import base64
import html
import io
import json
import math
import re
from pathlib import Path
from typing import Any

from ajuste.errors import AjusteError
from ajuste.io import atomic_write_json, atomic_write_text, read_json, read_jsonl
from ajuste.metrics import label_of
from ajuste.report import plots, reliability
from ajuste.study.advice import (
    aggregate,
    cost,
    handed_over,
    handed_over_text,
    pre_post,
    recommend,
    stopped_early,
)
from ajuste.study.runner import export_best
from ajuste.study.scores import direction, fmt, metric_of, shown, test_score, val_score
from ajuste.study.spec import StudySpec

CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;max-width:1100px;margin:2em auto;padding:0 1em;
color:#1d2330;line-height:1.45}
h1{font-size:1.6em;margin-bottom:.2em} h2{margin-top:1.8em;border-bottom:1px solid #dde;padding-bottom:.2em}
.rec{background:#eef6ee;border-left:5px solid #2e7d32;padding:.8em 1.2em;font-size:1.1em}
.rec ul{margin:.4em 0 0 1em;font-size:.93em}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;margin:.6em 0;font-size:.9em} td,th{border:1px solid #ccd;padding:.25em .6em;text-align:right}
th{background:#f2f4f8} td:first-child,th:first-child,td.l,th.l{text-align:left}
td{font-variant-numeric:tabular-nums}
img{max-width:100%;border:1px solid #eee;margin:.5em 0} .muted{color:#667;font-size:.9em}
.win{font-weight:bold;background:#f4fbf4}
"""


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110)
    plt.close(fig)
    return buf.getvalue()


def _img(data: bytes, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(data).decode()}">'


def _fmt(mean: float, std: float, seeds: int, digits: int = 3) -> str:
    return f"{mean:.{digits}f} ± {std:.{digits}f}" if seeds > 1 else f"{mean:.{digits}f}"


_NUMBER = re.compile(r"^[-+]?[\d,.]+( ± [\d.]+)?( pts)?$")


def _table(headers: list[str], rows: list[list[str]], win_rows: set[int] | None = None) -> str:
    """Numbers right-aligned, words left-aligned; a table wider than the page scrolls inside its own box."""
    # A header sits over its column: left over words, right over numbers (as the first row shows them).
    left = [not _NUMBER.match(str(c)) for c in rows[0]] if rows else [False] * len(headers)
    head = "".join(f"<th{' class=l' if i and left[i] else ''}>{html.escape(h)}</th>" for i, h in enumerate(headers))
    body = []
    for i, r in enumerate(rows):
        cls = ' class="win"' if win_rows and i in win_rows else ""
        cells = "".join(f"<td{'' if _NUMBER.match(str(c)) else ' class=l'}>{html.escape(str(c))}</td>" for c in r)
        body.append(f"<tr{cls}>{cells}</tr>")
    return f"<div class='scroll'><table><tr>{head}</tr>{''.join(body)}</table></div>"


def load_study(study_dir: Path) -> tuple[Any, list[dict], dict | None, list[dict]]:
    study_dir = Path(study_dir)
    if not study_dir.exists():
        raise AjusteError(f"{study_dir} does not exist; give the directory `ajuste compare` wrote (its --out)")
    if not (study_dir / "study.json").is_file():
        raise AjusteError(f"{study_dir} is not a study directory (no study.json); run `ajuste compare` first")
    spec = StudySpec.load(study_dir / "study.json")
    records = read_jsonl(study_dir / "results.jsonl")
    sim_path = study_dir / "similarity.json"
    sim = read_json(sim_path, "delete it and re-run `ajuste compare` to measure again") if sim_path.is_file() else None
    skip_path = study_dir / "skipped.json"
    skipped = read_json(skip_path, "delete it; it only lists cells a budget left out") if skip_path.is_file() else []
    return spec, records, sim, skipped


def build_report(study_dir: Path, *, export: bool = True) -> dict[str, Any]:
    """Advice, plots (PNG + embedded), tables; the best run copied to best_model/. Returns the advice."""
    study_dir = Path(study_dir)
    spec, records, sim, skipped = load_study(study_dir)
    if not records:
        raise AjusteError(f"{study_dir} has no finished cells yet; run `ajuste compare` to fill it")
    agg = aggregate(records)
    advice = recommend(records, sim)
    best_rec = None
    if advice["winner"]:
        best_rec = handed_over(records, advice)
        advice["best_cell"] = best_rec["cell"]
        advice["best_model"] = handed_over_text(best_rec, advice)
        if export:
            export_best(study_dir, best_rec["cell"])
    classes = _classes(study_dir, best_rec)

    figs = {
        "data_efficiency": plots.data_efficiency(agg, crossover=advice.get("crossover")),
        "accuracy_vs_time": plots.accuracy_vs_time(agg),
    }
    for f in sorted({r["fraction"] for r in records}, reverse=True):
        figs[f"learning_curves_f{f:g}"] = plots.learning_curves(records, fraction=f)
    if best_rec is not None and best_rec.get("confusion") is not None:  # none for multi-label or regression
        figs["confusion_best"] = plots.confusion(best_rec["confusion"], classes,
                                                 title=f"Confusion matrix of the best model ({best_rec['cell']})")
        calibrated = reliability.diagram_source(study_dir / best_rec["run_dir"])
        if calibrated is not None:
            figs["reliability_best"] = reliability.reliability_diagram(
                calibrated[0], title=f"Reliability of the best model ({best_rec['cell']}), {calibrated[1]}")
    pngs = {name: _png(fig) for name, fig in figs.items()}
    for name, data in pngs.items():
        (study_dir / f"{name}.png").write_bytes(data)

    atomic_write_text(study_dir / "report.html", _render(spec, agg, records, advice, sim, skipped, pngs))
    atomic_write_text(study_dir / "results.md", results_markdown(agg, advice))

    atomic_write_json(study_dir / "advice.json", advice)
    return advice


def _classes(study_dir: Path, best_rec: dict | None) -> list[str]:
    if best_rec is None:
        return []
    p = study_dir / best_rec["run_dir"] / "labels.json"
    if p.is_file():
        return json.loads(p.read_text())
    return [str(i) for i in range(len(best_rec.get("confusion") or []))]


EARLY = "stopped early"  # the mark of a cell (or an arm's seeds) a budget's time limit cut short


def _arm(r: dict[str, Any]) -> str:
    """An aggregated row's strategy, marked when a time limit cut any of its seeds short."""
    if not r.get("stopped_early"):
        return r["strategy"]
    seeds = f" ({r['stopped_early']} of {r['seeds']} seeds)" if r["seeds"] > 1 else ""
    return f"{r['strategy']} ({EARLY}{seeds})"


def _shown(r: dict[str, Any], key: str) -> float:
    """An aggregate's column as shown: the study's score (``test_score``) with an error positive again."""
    return shown(r[key], r) if key in ("test_score", "val_score") else r[key]


def _score_columns(agg: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """(label, aggregate key) of the test columns: the study's metric first, then accuracy and macro-F1."""
    metric = agg[0].get("metric", "accuracy") if agg else "accuracy"
    out = [(metric_of(agg) + direction(agg), "test_score")]
    out += [(label_of(m), k) for m, k in (("accuracy", "test_accuracy"), ("macro_f1", "test_macro_f1")) if m != metric
            and any(isinstance(r.get(k), float) and math.isfinite(r[k]) for r in agg)]  # not for regression
    return out


def results_markdown(agg: list[dict[str, Any]], advice: dict[str, Any]) -> str:
    scores = _score_columns(agg)
    lines = ["| fraction | n train | strategy | " + " | ".join(f"test {label}" for label, _ in scores)
             + " | seconds alone | trainable params | peak MB | seeds |",
             "|---|---|---|" + "---|" * len(scores) + "---|---|---|---|"]
    for r in agg:
        lines.append(f"| {r['fraction']:g} | {r['n_train']} | {_arm(r)} | "
                     + "".join(f"{_fmt(_shown(r, k), r[k + '_std'], r['seeds'])} | " for _, k in scores)
                     + f"{r['cost_seconds']:.0f} | {r['trainable_params']:,} | {r['peak_memory_mb']:.0f} | "
                     f"{r['seeds']} |")
    if any(r.get("stopped_early") for r in agg):
        lines += ["", f"*{EARLY}*: the budget's time limit ended its training before its planned epochs "
                      f"(train.max_seconds); its best epoch so far was kept and tested."]
    lines += ["", f"**Recommendation**: {advice['text']}", ""] + [f"- {x}" for x in advice["reasons"]]
    return "\n".join(lines) + "\n"


def _early_count(records: list[dict]) -> str:
    n = sum(stopped_early(r) for r in records)
    return f" ({n} {EARLY} by the budget's time limit)" if n else ""


def _skipped(skipped: list[dict]) -> list[str]:
    if not skipped:
        return []
    return ["<h2>Skipped by the time budget</h2><p class='muted'>cells not run: the budget planner runs a full-data "
            "model first, then the arms that could still win (successive halving), then the rest of the curve</p>",
            _table(["cell", "estimated s", "budget left s", "why"],
                   [[s["cell"], "?" if s["estimate_seconds"] is None else s["estimate_seconds"], s["left_seconds"],
                     s.get("reason", "would not fit")] for s in skipped])]


def _render(spec: Any, agg: list[dict], records: list[dict], advice: dict, sim: dict | None, skipped: list[dict],
            pngs: dict[str, bytes]) -> str:
    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'><title>ajuste study: "
             f"{html.escape(Path(str(spec.source)).name)}</title><style>{CSS}</style></head><body>"]
    parts.append(f"<h1>Fine-tune or train from scratch? — {html.escape(Path(str(spec.source)).name)}</h1>")
    parts.append(f"<p class='muted'>model {html.escape(spec.model)} · strategies {html.escape(', '.join(spec.strategies))}"
                 f" · fractions {', '.join(f'{f:g}' for f in spec.fractions)} · seeds {spec.seeds} · "
                 f"{len(records)} runs{_early_count(records)}</p>")
    reasons = "".join(f"<li>{html.escape(r)}</li>" for r in advice["reasons"])
    cell = html.escape(advice.get("best_cell", ""))
    best = (f"<p>Best model: <code>best_model/</code> (from <code>runs/{cell}</code>: "
            f"{html.escape(advice.get('best_model', ''))}) — <code>ajuste predict STUDY_DIR/best_model INPUT...</code>"
            f"</p>" if cell else "")
    parts.append(f"<h2>Recommendation</h2><div class='rec'><b>{html.escape(advice['text'])}</b>"
                 f"<ul>{reasons}</ul></div>{best}")
    parts.append("<h2>Data efficiency</h2>" + _img(pngs["data_efficiency"], "data-efficiency curve"))
    if advice.get("crossover"):
        parts.append(f"<p><b>Does training from scratch catch up?</b> "
                     f"{html.escape(advice['crossover']['text'])}</p>")

    label, scores = metric_of(agg), _score_columns(agg)
    parts.append(f"<h2>Results per fraction</h2><p class='muted'>mean ± std over seeds; the winner is chosen on "
                 f"validation {html.escape(label)}, the test split's is reported.</p>")
    for f in sorted({r["fraction"] for r in agg}):
        rows = [r for r in agg if r["fraction"] == f]
        best_i = max(range(len(rows)), key=lambda i: rows[i]["val_score"])
        table = [[_arm(r), *[_fmt(_shown(r, k), r[k + "_std"], r["seeds"]) for _, k in scores],
                  _fmt(shown(r["val_score"], r), r["val_score_std"], r["seeds"]), f"{r['cost_seconds']:.1f}",
                  f"{r['trainable_params']:,}", f"{r['peak_memory_mb']:.0f}", r["seeds"]] for r in rows]
        parts.append(f"<h3>fraction {f:g} ({rows[0]['n_train']} training examples)</h3>")
        parts.append(_table(["strategy", *[f"test {c}" for c, _ in scores], f"val {label}", "seconds alone",
                             "trainable params", "peak MB", "seeds"], table, {best_i}))
    pp = pre_post(agg)
    if pp:
        parts.append("<h2>Before vs after fine-tuning</h2><p class='muted'>pre: linear probe on the frozen "
                     "pretrained backbone; post: the best fine-tuned arm (chosen on validation).</p>")
        parts.append(_table(["fraction", "n train", "pre (linear probe)", "post", "post strategy", "gain"],
                            [[f"{r['fraction']:g}", r["n_train"], f"{r['pre']:.3f}", f"{r['post']:.3f}",
                              r["post_strategy"], f"{100 * r['gain']:+.1f} pts"] for r in pp]))
    if sim:
        p, r = sim["pretrained"], sim["random"]
        parts.append("<h2>Domain similarity</h2>")
        parts.append(_table(["features", "linear-probe val accuracy", "LogME"],
                            [["pretrained", f"{p['probe_accuracy']:.3f}", f"{p['logme']:.3f}"],
                             ["random init", f"{r['probe_accuracy']:.3f}", f"{r['logme']:.3f}"]]))
        parts.append(f"<p>Similarity: <b>{html.escape(sim['similarity'])}</b> (pretrained features remove "
                     f"{100 * sim['gain']:.0f}% of the random-feature probe's error; measured on "
                     f"{sim['n_train']} train / {sim['n_val']} val examples in {sim['seconds']}s).</p>")
    parts.append("<h2>Learning curves</h2><p class='muted'>train and validation loss per epoch (seed 0); a widening "
                 "gap is over-fitting.</p>")
    parts.extend(_img(data, name.replace("_", " ")) for name, data in pngs.items() if name.startswith("learning_curves"))
    parts.append(f"<h2>{html.escape(label[0].upper() + label[1:])} vs training time</h2>"
                 + _img(pngs["accuracy_vs_time"], f"{label} vs time"))
    if "confusion_best" in pngs:
        parts.append("<h2>Best model</h2>" + _img(pngs["confusion_best"], "confusion matrix"))
    if "reliability_best" in pngs:
        parts.append(reliability.HEADING + _img(pngs["reliability_best"], "reliability diagram"))
    parts.extend(_skipped(skipped))
    retried = [r for r in records if r.get("oom_retry")]
    if retried:
        parts.append("<h2>Retried at a smaller batch</h2><p class='muted'>these cells ran out of memory at the "
                     "study's batch size and were trained again at a smaller one with gradient accumulation (the "
                     "same effective batch)</p>")
        parts.append(_table(["cell", "batch asked", "batch run", "accumulation"],
                            [[r["cell"], r["oom_retry"]["asked_batch_size"], r["oom_retry"]["batch_size"],
                              r["oom_retry"]["grad_accum"]] for r in retried]))
    parts.append("<h2>All runs</h2>")
    parts.append(_table(["cell", "n train", f"test {label}", "test ECE (before scaling)", f"val {label}", "epochs",
                         "best epoch", "seconds alone", "ended", "run"],
                        [[r["cell"], r["n_train"], fmt(test_score(r), r, 4), reliability.cell_ece(r),
                          fmt(val_score(r), r, 4), r["epochs"],
                          r["best_epoch"], f"{cost(r):.1f}", f"{EARLY} (time limit)" if stopped_early(r) else "finished",
                          r["run_dir"]]
                         # In the order of the per-fraction tables, not the order the cells finished in.
                         for r in sorted(records, key=lambda r: (r["fraction"], r["strategy"], r["seed"]))]))
    parts.append("<p class='muted'>Generated by ajuste. Regenerate with <code>ajuste report STUDY_DIR</code>.</p>")
    parts.append("</body></html>")
    return "\n".join(parts)
