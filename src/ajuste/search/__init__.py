"""Hyperparameter search with Optuna (`ajuste tune`).

- ``space``: search spaces (defaults per strategy, YAML overrides, grids), params = dotted config keys;
  ``params``: one searched field (``Param``) and how a YAML entry becomes one.
- ``samplers``: sampler and pruner by name.
- ``storage``: storage URLs (SQLite default, PostgreSQL for parallel workers), reachability check, study lock.
- ``objective``: one trial = one ``train_run``; per-epoch reports for pruners; release of each trial's model.
- ``runner``: `ajuste tune` from request to result: checks, data and space, the study opened, the trials run.
- ``resume``: creating a study, or joining one only with the same space, fixed settings, metric and data.
- ``trial_loop``: the budgeted loop of one worker; dead and interrupted trials re-queued.
- ``results``: what a study holds, read back (best trial and its config, counts, rows); ``outputs``: best.json,
  trials.csv and ``report``'s report.html.

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
