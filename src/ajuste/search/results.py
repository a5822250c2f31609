"""What a study of `ajuste tune` holds, read back: the attributes tune stores on it, its best trial and that
trial's full config, the count of trials by state, and one row per trial.

The runner, the storage (``--from-study``), the outputs and the HTML report all read a study through these,
so this module imports none of them.
"""

from __future__ import annotations

from typing import Any

from ajuste.config import RunConfig
from ajuste.errors import AjusteError

ATTR_SPACE, ATTR_CONFIG, ATTR_METRIC = "ajuste.space", "ajuste.config", "ajuste.metric"
ATTR_DATA = "ajuste.data_digest"  # the examples the trials were scored on, by content (ajuste.data.fingerprint)


def study_metric(study: Any) -> str:
    return study.user_attrs.get(ATTR_METRIC, "val_accuracy")


def best_config(study: Any, trial: Any) -> RunConfig:
    """The run config of a trial: the study's base config with the trial's params applied."""
    raw = study.user_attrs.get(ATTR_CONFIG)
    if raw is None:
        raise AjusteError(f"study {study.study_name!r} was not created by `ajuste tune` (no base config)")
    return RunConfig.from_dict(raw, where=f"study {study.study_name}").override(dict(trial.params))


def best_trial_or_none(study: Any) -> Any:
    from optuna.trial import TrialState

    if not study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
        return None
    return study.best_trial


def best_summary(study: Any) -> dict[str, Any] | None:
    best = best_trial_or_none(study)
    if best is None:
        return None
    return {"number": best.number, "value": best.value, "params": dict(best.params)}


def state_counts(study: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in study.get_trials(deepcopy=False):
        counts[t.state.name.lower()] = counts.get(t.state.name.lower(), 0) + 1
    return counts


def objective_text(metric: str) -> str:
    what = "validation accuracy" if metric == "val_accuracy" else "validation loss"
    return f"{what} at the trial's kept epoch (the best by train.monitor: the weights fit keeps)"


def trial_rows(study: Any) -> tuple[list[str], list[dict[str, Any]]]:
    names: list[str] = []
    for t in study.get_trials(deepcopy=False):
        for k in t.params:
            if k not in names:
                names.append(k)
    cols = ["number", "state", "value", *names, "epochs", "best_epoch", "val_loss", "val_accuracy",
            "pruned_at_epoch", "seconds", "worker", "rss_mb", "note", "datetime_start", "datetime_complete"]
    rows = []
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        steps = sorted(t.intermediate_values)
        row: dict[str, Any] = {
            "number": t.number, "state": t.state.name.lower(), "value": t.value,
            "epochs": ua.get("epochs", len(steps) or None), "best_epoch": ua.get("best_epoch"),
            "val_loss": ua.get("val_loss"), "val_accuracy": ua.get("val_accuracy"),
            "pruned_at_epoch": steps[-1] + 1 if t.state.name == "PRUNED" and steps else None,
            "seconds": round(t.duration.total_seconds(), 2) if t.duration else None,
            "worker": ua.get("worker"), "rss_mb": ua.get("rss_mb"),
            "note": ua.get("error") or ua.get("diverged") or ("interrupted" if ua.get("interrupted") else ""),
            "datetime_start": t.datetime_start.isoformat(timespec="seconds") if t.datetime_start else None,
            "datetime_complete": t.datetime_complete.isoformat(timespec="seconds") if t.datetime_complete else None,
        }
        if t.state.name == "PRUNED" and t.value is None and steps:
            row["value"] = t.intermediate_values[steps[-1]]
        row.update({k: t.params.get(k) for k in names})
        rows.append(row)
    return cols, rows
