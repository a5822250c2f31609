"""Study plots. Each function returns a matplotlib Figure; none shows or saves it."""

from __future__ import annotations

from collections import defaultdict
from typing import Any

import numpy as np


def _plt():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _colors(strategies: list[str]) -> dict[str, Any]:
    plt = _plt()
    cmap = plt.get_cmap("tab10")
    ordered = sorted(s for s in strategies if s != "scratch")
    out = {s: cmap(i % 10) for i, s in enumerate(ordered)}
    out["scratch"] = "black"
    return out


def data_efficiency(agg: list[dict[str, Any]], *, crossover: dict[str, Any] | None = None):
    """Test accuracy vs number of training examples (log x), one line per strategy, ±1 std over seeds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    strategies = sorted({r["strategy"] for r in agg})
    colors = _colors(strategies)
    for s in strategies:
        rows = sorted((r for r in agg if r["strategy"] == s), key=lambda r: r["n_train"])
        n = [r["n_train"] for r in rows]
        m = np.array([r["test_accuracy"] for r in rows])
        sd = np.array([r["test_accuracy_std"] for r in rows])
        ax.plot(n, m, marker="o", label=s, color=colors[s], linestyle="--" if s == "scratch" else "-")
        if (sd > 0).any():
            ax.fill_between(n, m - sd, m + sd, color=colors[s], alpha=0.15)
    if crossover and crossover.get("status") == "measured":
        ax.axvline(crossover["n_train"], color="grey", linestyle=":", label="scratch catches up")
    ax.set_xscale("log")
    ax.set_xlabel("training examples (log scale)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Data efficiency: fine-tuned vs from scratch")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    return fig


def accuracy_vs_time(agg: list[dict[str, Any]]):
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    strategies = sorted({r["strategy"] for r in agg})
    colors = _colors(strategies)
    for s in strategies:
        rows = [r for r in agg if r["strategy"] == s]
        ax.scatter([max(r["train_seconds"], 0.1) for r in rows], [r["test_accuracy"] for r in rows],
                   s=[20 + 60 * r["fraction"] for r in rows], color=colors[s], label=s, alpha=0.8)
    ax.set_xscale("log")
    ax.set_xlabel("training time, seconds (log scale; marker size = data fraction)")
    ax.set_ylabel("test accuracy")
    ax.set_title("Accuracy vs training time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def learning_curves(records: list[dict[str, Any]], *, fraction: float | None = None):
    """Train/val loss per epoch for each strategy (seed 0) at one fraction: over-fitting shows as a gap."""
    plt = _plt()
    if fraction is None:
        fraction = max(r["fraction"] for r in records)
    rows = sorted((r for r in records if r["fraction"] == fraction and r["seed"] == 0), key=lambda r: r["strategy"])
    n = max(1, len(rows))
    cols = min(3, n)
    nrows = (n + cols - 1) // cols
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.2 * nrows), squeeze=False)
    for ax, r in zip(axes.flat, rows):
        h = r["history"]
        ep = [x["epoch"] + 1 for x in h]
        ax.plot(ep, [x["train_loss"] for x in h], label="train loss")
        ax.plot(ep, [x["val_loss"] for x in h], label="val loss")
        # Phase boundaries (e.g. two-stage: head → all).
        for i in range(1, len(h)):
            if h[i]["phase"] != h[i - 1]["phase"]:
                ax.axvline(ep[i] - 0.5, color="grey", linestyle=":", linewidth=1)
        ax.set_title(f"{r['strategy']} ({r['n_train']} ex.)", fontsize=10)
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(rows):]:
        ax.axis("off")
    fig.suptitle(f"Learning curves at fraction {fraction:g} (dotted: phase change)", fontsize=11)
    fig.tight_layout()
    return fig


def confusion(matrix: list[list[int]], classes: list[str], *, title: str = "Confusion matrix"):
    plt = _plt()
    m = np.asarray(matrix)
    size = min(10, 2.5 + 0.45 * len(classes))
    fig, ax = plt.subplots(figsize=(size, size * 0.85))
    im = ax.imshow(m, cmap="Blues")
    ax.set_xticks(range(len(classes)), labels=[c[:14] for c in classes], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(len(classes)), labels=[c[:14] for c in classes], fontsize=8)
    if len(classes) <= 20:
        thresh = m.max() / 2 if m.size else 0
        for i in range(m.shape[0]):
            for j in range(m.shape[1]):
                ax.text(j, i, str(m[i, j]), ha="center", va="center", fontsize=7,
                        color="white" if m[i, j] > thresh else "black")
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    return fig


def seeds_by_fraction(records: list[dict[str, Any]]) -> dict[float, int]:
    out: dict[float, set] = defaultdict(set)
    for r in records:
        out[r["fraction"]].add(r["seed"])
    return {k: len(v) for k, v in out.items()}
