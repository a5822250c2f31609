"""Study plots. Each function returns a matplotlib Figure; none shows or saves it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np

from ajuste.strategies.base import baseline_strategies, scratch_strategies
from ajuste.study.advice import cost
from ajuste.study.scores import direction, metric_of, shown


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _plain_log_axis(axis: Any, ticks: list[float] | None = None) -> None:
    """Log-scale tick labels as plain numbers (0.3, 10, 976), not 3×10⁻¹: a reader compares them with a table."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullFormatter

    axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    axis.set_minor_formatter(NullFormatter())
    if ticks:
        axis.set_major_locator(FixedLocator(sorted(set(ticks))))


def _legend_outside(ax: Any) -> None:
    # Right of the axes, so it never hides a point (inside, "lower right" covered the largest fraction's points).
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, borderaxespad=0)


def _colors(strategies: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")

    scratch = sorted(scratch_strategies())  # greys, so any from-scratch arm reads apart from the fine-tuned ones
    ordered = sorted(s for s in strategies if s not in scratch)
    out = {s: cmap(i % 10) for i, s in enumerate(ordered)}
    out.update({s: _SCRATCH_GREYS[i % len(_SCRATCH_GREYS)] for i, s in enumerate(scratch)})
    out.update({s: _FLOOR_COLOUR for s in strategies if s in baseline_strategies()})
    return out


_FLOOR_COLOUR = "saddlebrown"


def _floor_line(ax: Any, rows: list[dict[str, Any]], key: str, what: str) -> None:
    """The classical floor across the plot: ``key`` of the floor arm at the largest fraction it ran (the mean
    over its seeds there), labelled with its value."""
    floors = [r for r in rows if r["strategy"] in baseline_strategies()]
    if not floors:
        return
    top = max(r["fraction"] for r in floors)
    at_top = [r for r in floors if r["fraction"] == top]
    value = shown(float(np.mean([r[key] for r in at_top])), rows)
    ax.axhline(value, color=_FLOOR_COLOUR, linestyle=":", linewidth=1.2,
               label=f"{at_top[0]['strategy']} floor ({what} {value:.3f})")


_SCRATCH_GREYS = ("black", "dimgrey", "grey", "darkgrey")


def _scratch_style(strategy: str) -> str:
    if strategy in baseline_strategies():
        return ":"
    return {"scratch": "--", "scratch-compact": "-."}.get(strategy, "-")


def data_efficiency(agg: list[dict[str, Any]], *, crossover: dict[str, Any] | None = None):
    """The study's metric on test (accuracy unless train.monitor names another score) vs number of training
    examples (log x), one line per strategy, ±1 std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    strategies = sorted({r["strategy"] for r in agg})
    colors = _colors(strategies)
    for s in strategies:
        rows = sorted((r for r in agg if r["strategy"] == s), key=lambda r: r["n_train"])
        n = [r["n_train"] for r in rows]
        m = np.array([shown(r["test_score"], r) for r in rows])
        sd = np.array([r["test_score_std"] for r in rows])
        ax.plot(n, m, marker="o", label=s, color=colors[s], linestyle=_scratch_style(s))
        if (sd > 0).any():
            ax.fill_between(n, m - sd, m + sd, color=colors[s], alpha=0.15)
    if crossover and crossover.get("status") == "measured":
        # Level from the smallest size run is not a catch-up: the line then marks where it already was.
        how = "level or ahead from here" if crossover.get("from_start") else "catches up"
        ax.axvline(crossover["n_train"], color="grey", linestyle=":",
                   label=f"{crossover.get('scratch', 'scratch')} {how}")
    _floor_line(ax, agg, "test_score", "test")
    ax.set_xscale("log")
    # Ticks at the measured sizes only: those are the rows of the results tables.
    _plain_log_axis(ax.xaxis, [r["n_train"] for r in agg])
    ax.tick_params(axis="x", labelrotation=0)
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel(f"test {metric_of(agg)}{direction(agg)}")
    ax.set_title("Data efficiency: fine-tuned vs from scratch")
    ax.grid(True, which="major", alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def accuracy_vs_time(agg: list[dict[str, Any]]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.5))
    strategies = sorted({r["strategy"] for r in agg})
    colors = _colors(strategies)
    # Marker area grows with the fraction relative to the largest one, so 0.05 vs 0.25 is visible.
    top = max(r["fraction"] for r in agg)
    for s in strategies:
        rows = [r for r in agg if r["strategy"] == s]
        ax.scatter([max(cost(r), 0.1) for r in rows], [shown(r["test_score"], r) for r in rows],
                   s=[15 + 110 * r["fraction"] / top for r in rows], color=colors[s], label=s, alpha=0.8,
                   edgecolors="white", linewidths=0.5)
    _floor_line(ax, agg, "test_score", "test")
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_xlabel("seconds on its own: training and its frozen passes (log scale; marker size = data fraction)")
    ax.set_ylabel(f"test {metric_of(agg)}{direction(agg)}")
    ax.set_title(f"{metric_of(agg)[0].upper()}{metric_of(agg)[1:]} vs cost")
    ax.grid(True, which="major", alpha=0.3)
    _legend_outside(ax)
    fig.tight_layout()
    return fig


def learning_curves(records: list[dict[str, Any]], *, fraction: float | None = None):
    """Train/val loss per epoch for each strategy (seed 0) at one fraction: over-fitting shows as a gap."""
    plt = _plt()
    if fraction is None:
        fraction = max(r["fraction"] for r in records)
    at = [r for r in records if r["fraction"] == fraction and r["seed"] == 0]
    # the floor arm has no epochs (its "history" is the regularisation strengths it tried): a line, not a panel
    rows = sorted((r for r in at if r["strategy"] not in baseline_strategies()), key=lambda r: r["strategy"])
    n = max(1, len(rows))
    cols = 2 if n == 4 else min(3, n)  # 2×2 rather than 3 + 1: wider panels at the report's width
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        h = r["history"]
        ep = [x["epoch"] + 1 for x in h]
        # Markers: a run of one or two epochs is a point, and a line alone would draw nothing.
        mark = "o" if len(h) <= 12 else None
        ax.plot(ep, [x["train_loss"] for x in h], label="train loss", marker=mark, markersize=4)
        ax.plot(ep, [x["val_loss"] for x in h], label="val loss", marker=mark, markersize=4)
        # Phase boundaries (e.g. two-stage: head → all).
        for i in range(1, len(h)):
            if h[i]["phase"] != h[i - 1]["phase"]:
                ax.axvline(ep[i] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{r['strategy']} ({r['n_train']} ex.)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        if len(h) == 1:  # else matplotlib pads a single x into ticks 0.96 … 1.04
            ax.set_xticks(ep)
        _floor_line(ax, at, "val_loss", "val loss")
        ax.ticklabel_format(axis="y", useOffset=False)  # no "+2.302" offset above flat losses
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"Learning curves at fraction {fraction:g} (dotted: phase change)", fontsize=11)
    fig.tight_layout()
    return fig


def confusion(matrix: list[list[int]], classes: list[str], *, title: str = "Confusion matrix"):
    plt = _plt()
    import textwrap

    m = np.asarray(matrix)
    # At least 5 in wide: with 2 classes a smaller figure cut the title off at both ends.
    size = min(10.0, max(5.0, 2.5 + 0.45 * len(classes)))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues")
    labels = [c[:14] for c in classes]
    slanted = max((len(c) for c in labels), default=0) > 3  # short labels ("0".."9") read better upright
    ax.set_xticks(range(len(classes)), labels=labels, rotation=45 if slanted else 0, ha="right" if slanted else
                  "center", fontsize=8)
    ax.set_yticks(range(len(classes)), labels=[c[:14] for c in classes], fontsize=8)
    if len(classes) <= 20:
        thresh = m.max() / 2 if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=11 if len(classes) <= 4 else 7,
                        color="white" if m[i, j] > thresh else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("\n".join(textwrap.wrap(title, width=int(9 * size))), fontsize=11)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def seeds_by_fraction(records: list[dict[str, Any]]) -> dict[float, int]:
    out: dict[float, set] = defaultdict(set)
    for r in records:
        out[r["fraction"]].add(r["seed"])
    return {k: len(v) for k, v in out.items()}
