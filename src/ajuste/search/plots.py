"""Plots of a study (Optuna's matplotlib backend). Each returns a Figure; none shows or saves."""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np

# (file stem, title) of the plots the report shows, in order.
PLOTS = (
    ("history", "Optimisation history"),
    ("importances", "Parameter importances"),
    ("parallel", "Parallel coordinates"),
    ("curves", "Learning curves (objective per epoch)"),
)


def _agg() -> None:
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "pdf", "svg", "ps", "cairo"):
        import matplotlib.pyplot as plt

        plt.switch_backend("Agg")


def _figure(ax: Any, size: tuple[float, float]):
    # Some optuna plots return an array of Axes.
    if isinstance(ax, np.ndarray):
        ax = ax.flat[0]
    fig = ax.figure
    fig.set_size_inches(*size)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # tight_layout warns about twin axes; the result is still right
        fig.tight_layout()
    return fig


def _call(fn_name: str, study: Any, size: tuple[float, float] = (8, 4.5), **kw: Any):
    _agg()
    import matplotlib
    import optuna.visualization.matplotlib as vm

    # rc_context: optuna's plots switch the global style to ggplot; keep that out of other plots.
    with warnings.catch_warnings(), matplotlib.rc_context():
        warnings.simplefilter("ignore")  # optuna marks its matplotlib backend experimental
        return _figure(getattr(vm, fn_name)(study, **kw), size)


def plot_history(study: Any):
    return _call("plot_optimization_history", study)


def plot_importances(study: Any):
    """fANOVA importances; needs at least two complete trials with different params."""
    return _call("plot_param_importances", study)


def plot_parallel(study: Any):
    # One vertical axis per param (plus the objective): widen with the number of params.
    n = len({k for t in study.get_trials(deepcopy=False) for k in t.params}) + 1
    return _call("plot_parallel_coordinate", study, size=(max(8.0, 1.6 * n), 5.0))


def plot_curves(study: Any):
    return _call("plot_intermediate_values", study)


def study_figures(study: Any) -> dict[str, Any]:
    """{stem: Figure or the reason it could not be drawn (str)}."""
    from optuna.trial import TrialState

    fns = {"history": plot_history, "importances": plot_importances, "parallel": plot_parallel,
           "curves": plot_curves}
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    out: dict[str, Any] = {}
    for stem, _ in PLOTS:
        if not complete:
            out[stem] = "no complete trial yet"
            continue
        if stem == "importances" and len(complete) < 2:
            out[stem] = "needs at least two complete trials"
            continue
        try:
            out[stem] = fns[stem](study)
        except Exception as exc:  # noqa: BLE001 - a missing plot must not lose the study's results
            out[stem] = f"not drawn: {' '.join(str(exc).split())[:200]}"
    return out
