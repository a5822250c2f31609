"""A small self-contained HTML report of a study: best trial, plots (PNG, base64-embedded), trials table.

The PNGs are also saved next to it (``plots/<name>.png``) for slides and notes.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path
from typing import Any

from ajuste.io import atomic_write_text
from ajuste.search.plots import PLOTS, study_figures
from ajuste.search.results import best_trial_or_none, objective_text, state_counts, trial_rows
from ajuste.search.storage import dashboard_command

_CSS = """
body{font:14px/1.45 system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2em auto;max-width:1000px;
     color:#222;padding:0 1em}
h1{font-size:1.5em;margin-bottom:.2em} h2{font-size:1.15em;margin-top:1.8em;border-bottom:1px solid #ddd}
.muted{color:#666} code{background:#f4f4f4;padding:1px 4px;border-radius:3px}
.rec{background:#eef6ee;border-left:5px solid #2e7d32;padding:.7em 1.1em;font-size:1.08em}
pre{background:#f4f4f4;padding:.5em .8em;overflow-x:auto;font-size:12.5px}
.scroll{overflow-x:auto;max-width:100%}
table{border-collapse:collapse;font-size:12.5px;margin:.5em 0}
td,th{border:1px solid #ddd;padding:3px 7px;text-align:right;font-variant-numeric:tabular-nums}
td.note{text-align:left;max-width:22em;white-space:normal}
th{background:#f6f6f6} td.l,th.l{text-align:left} tr.best td{background:#eaf6ea;font-weight:600}
.state-pruned{color:#a66b00} .state-fail{color:#b00020} figure{margin:1em 0} figcaption{font-weight:600}
img{max-width:100%;border:1px solid #eee}
"""


_METRIC_WORDS = {"val_accuracy": "validation accuracy", "val_loss": "validation loss"}


def _fmt(v: Any) -> str:
    if v is None or v == "":
        return ""
    if isinstance(v, float):
        return f"{v:.4g}"
    return str(v)


def _png(fig: Any) -> bytes:
    import matplotlib.pyplot as plt

    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def write_report(study: Any, path: Path, *, metric: str, storage: str) -> Path:
    path = Path(path)
    plots_dir = path.parent / "plots"
    plots_dir.mkdir(parents=True, exist_ok=True)
    figures = study_figures(study)
    best = best_trial_or_none(study)
    counts = state_counts(study)
    e = html.escape

    parts = [f"<!doctype html><html lang='en'><head><meta charset='utf-8'>"
             f"<meta name='viewport' content='width=device-width, initial-scale=1'>"
             f"<title>ajuste tune · {e(study.study_name)}</title>"
             f"<style>{_CSS}</style></head><body>",
             f"<h1>Study {e(study.study_name)}</h1>",
             f"<p class='muted'>storage <code>{e(storage)}</code> · objective: {e(metric)} "
             f"({e(study.direction.name.lower())}), {e(objective_text(metric))} · trials: "
             + ", ".join(f"{n} {e(k)}" for k, n in sorted(counts.items())) + "</p>"]
    parts.append("<h2>Best trial</h2>")
    if best is None:
        parts.append("<p>No complete trial yet.</p>")
    else:
        rows = "".join(f"<tr><td class='l'><code>{e(k)}</code></td><td>{e(_fmt(v))}</td></tr>"
                       for k, v in best.params.items())
        sets = " ".join(f"--set {k}={_fmt(v) if not isinstance(v, float) else repr(v)}" for k, v in best.params.items())
        # The answer first, in words: which settings to use and what they scored; the evidence follows.
        settings = ", ".join(f"{k} = {_fmt(v)}" for k, v in best.params.items())
        what = _METRIC_WORDS.get(metric, metric)
        verdict = "highest" if study.direction.name == "MAXIMIZE" else "lowest"
        parts.append(f"<div class='rec'><b>Use the settings of trial #{best.number}: {e(settings)}.</b> "
                     f"It reached {e(what)} {best.value:.4f}, the {verdict} of {counts.get('complete', 0)} complete "
                     f"trials, after {e(_fmt(best.user_attrs.get('epochs')))} epochs (best epoch "
                     f"{e(_fmt(best.user_attrs.get('best_epoch')))}).</div>"
                     f"<table><tr><th class='l'>param</th><th>value</th></tr>{rows}</table>"
                     f"<p>Retrain it (and evaluate on the test split):</p>"
                     f"<pre>ajuste train --from-study {e(str(path.parent))}</pre>"
                     f"<p>or by hand:</p><pre>{e(sets)}</pre>")
    parts.append("<h2>Plots</h2>")
    for stem, title in PLOTS:
        fig = figures.get(stem)
        if isinstance(fig, str) or fig is None:
            parts.append(f"<p class='muted'>{e(title)}: {e(fig or 'not drawn')}</p>")
            continue
        data = _png(fig)
        (plots_dir / f"{stem}.png").write_bytes(data)
        parts.append(f"<figure><figcaption>{e(title)}</figcaption>"
                     f"<img alt='{e(title)}' src='data:image/png;base64,{base64.b64encode(data).decode()}'>"
                     f"</figure>")
    cols, rows_ = trial_rows(study)
    # Columns empty in every row (no pruned trial, no note) only widen the table past the page.
    shown = [c for c in cols if c not in ("datetime_start", "datetime_complete")
             and any(r.get(c) not in (None, "") for r in rows_)]
    sign = -1 if study.direction.name == "MAXIMIZE" else 1
    rows_.sort(key=lambda r: (r["value"] is None, sign * r["value"] if r["value"] is not None else 0, r["number"]))
    # Header names break after their underscores (best_<wbr>epoch) rather than widen the table.
    parts.append(f"<h2>Trials ({len(rows_)})</h2><div class='scroll'><table><tr>"
                 + "".join(f"<th class='{'l' if c in ('state', 'worker', 'note') else ''}'>"
                           f"{e(c).replace('_', '_<wbr>').replace('.', '.<wbr>')}</th>" for c in shown)
                 + "</tr>")
    for r in rows_:
        cls = "best" if best is not None and r["number"] == best.number else ""
        cells = "".join(
            f"<td class='{'l' if c in ('state', 'worker') else 'note' if c == 'note' else ''}"
            f"{' state-' + e(str(r['state'])) if c == 'state' else ''}'>{e(_fmt(r.get(c)))}</td>" for c in shown)
        parts.append(f"<tr class='{cls}'>{cells}</tr>")
    parts.append("</table></div>")
    parts.append(f"<p class='muted'>Live view of the study: <code>pip install optuna-dashboard; "
                 f"{e(dashboard_command(storage))}</code></p></body></html>")
    atomic_write_text(path, "".join(parts))
    return path
