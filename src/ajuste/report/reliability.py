"""Calibration in the study report: the reliability diagram of the handed-over model (accuracy against confidence
in 15 equal-width bins, before and after temperature scaling) and each cell's ECE for the tables."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajuste.report.plots import _plt
from ajuste.training import calibration

HEADING = ("<h3>Calibration</h3><p class='muted'>temperature scaling (one T fitted on validation NLL) keeps every "
           "label and moves the probabilities; a point on the diagonal is a bin whose confidence equals its "
           "accuracy. ECE: top-label, 15 equal-width bins.</p>")


def cell_ece(record: dict[str, Any]) -> str:
    """A study cell's test ECE after temperature scaling, with the ECE before it in brackets; "—" for a cell
    recorded before calibration existed or trained with train.calibrate=false."""
    c = record.get("calibration") or {}
    if c.get("test_ece_after") is None:
        return "—"
    return f"{c['test_ece_after']:.3f} ({c['test_ece_before']:.3f})"


def diagram_source(run_dir: Path) -> tuple[dict[str, Any], str] | None:
    """The reliability bins a run recorded in calibration.json: its test split's when it was tested, else its
    validation split's (which T was fitted on: flattering); None without calibration.json."""
    record = calibration.read(run_dir)
    if not isinstance(record, dict):
        return None
    for split, name in (("test", "test split"), ("val", "validation split, which T was fitted on")):
        if isinstance(record.get(split), dict) and "reliability" in record[split]:
            return record[split], name
    return None


def reliability_diagram(scores: dict[str, Any], *, title: str = "Reliability diagram"):
    """Accuracy against mean confidence per bin, before and after temperature scaling, with the diagonal of
    perfect calibration; ``scores`` is one split's record (``training.calibration.scores``). A Figure."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.6, 5.0))
    ax.plot([0, 1], [0, 1], ls="--", color="#999", lw=1, label="perfectly calibrated")
    n_bins = scores.get("ece_bins", 15)
    t = scores["temperature"]
    for key, colour, marker, label in (("before", "#d62728", "o", "before (T = 1)"),
                                       ("after", "#1f77b4", "s", f"after (T = {t:.3g})")):
        bins = scores["reliability"][key]
        pts = [(c, a, n) for c, a, n in zip(bins["confidence"], bins["accuracy"], bins["count"]) if n]
        if not pts:
            continue
        xs, ys, ns = zip(*pts)
        ece = scores[f"ece_{key}"]
        ax.plot(xs, ys, marker=marker, color=colour, lw=1.2, label=f"{label}: ECE {ece:.3f}")
        total = sum(ns)
        # marker area ∝ the bin's share of the examples: a point from 2 examples weighs little in the ECE
        ax.scatter(xs, ys, s=[20 + 300 * n / total for n in ns], color=colour, alpha=0.25)
    ax.set_xlim(0, 1.02)
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"confidence (top-label probability, {n_bins} equal-width bins)")
    ax.set_ylabel("accuracy in the bin")
    ax.set_title(title, fontsize=10)
    ax.legend(loc="upper left", fontsize=8)
    fig.tight_layout()
    return fig
