"""What `ajuste tune` leaves in ``out`` once a worker stops, read from the study: ``best.json`` (the best trial,
its params and the full config to retrain it), ``trials.csv`` and ``report.html``. (``tune.json``, what was
asked, is the runner's: it is written before the first trial.)

Every write holds ``out``'s lock (``writing``), so workers of one machine finishing together take turns.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from ajuste import locks
from ajuste.io import atomic_write_json, atomic_write_text
from ajuste.search.report import write_report
from ajuste.search.results import ATTR_DATA, best_config, best_trial_or_none, objective_text, state_counts, trial_rows
from ajuste.search.storage import redact


def writing(out: Path):
    """``out``'s lock while this worker writes there: a no-op when it holds it already (default storage);
    with a shared server, a worker finishing at the same moment as another on this machine waits its turn."""
    return locks.hold(out, what="search", wait=120)


def write_outputs(study: Any, out: Path, *, metric: str, url: str) -> dict[str, Path]:
    out = Path(out)
    files = {"tune": out / "tune.json", "best": out / "best.json", "trials": out / "trials.csv"}
    with writing(out):
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
    cols, rows = trial_rows(study)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=cols)
    w.writeheader()
    for r in rows:
        w.writerow({k: ("" if v is None else v) for k, v in r.items()})
    atomic_write_text(path, buf.getvalue())
    return path
