"""Hyperparameter search with Optuna (`ajuste tune`).

- ``space``: search spaces (defaults per strategy, YAML overrides, grids), params = dotted config keys.
- ``samplers``: sampler and pruner by name.
- ``storage``: storage URLs (SQLite default, PostgreSQL for parallel workers), reachability check, study lock.
- ``objective``: one trial = one ``train_run``; per-epoch reports for pruners; release of each trial's model.
- ``runner``: the budgeted, resumable search loop and its outputs (best.json, trials.csv, report.html).

Optuna is imported inside functions only: ``ajuste --help`` stays fast.
"""

from __future__ import annotations

__all__ = ["tune", "SearchSpace", "Param"]


def __getattr__(name: str):
    if name == "tune":
        from ajuste.search.runner import tune

        return tune
    if name in ("SearchSpace", "Param"):
        from ajuste.search import space

        return getattr(space, name)
    raise AttributeError(name)
