"""The budget planner of a study (``compare --budget``): which cell runs next, and until when.

Without a budget the runner runs every cell in its fixed order (``runner.plan_cells``); with one, this module
decides, each time a worker is free, by these rules (docs/guide.md, "How a budget is spent"):

1. **A full-data candidate first.** The floor arms (``classical``: seconds) and the cheapest deep arm (lowest
   ``cost_rank``: the linear probe, normally) at the largest fraction, seed 0, run before anything else, so a
   model trained on all the data exists early. The floor arms take no part in rules 2 and 3: the rest of their
   curve comes with rule 4.
2. **Successive halving over the arms across the fractions** (Jamieson & Talwalkar 2016, "Non-stochastic best
   arm identification and hyperparameter optimization", AISTATS; the fractions are the resource, as the
   epochs are in Li et al. 2018, "Hyperband"). Every arm runs at the smallest fraction; at each fraction an
   arm goes on to the next one when it could still be the best there: among the better half of the arms, or
   within noise of the best (``NOISE_Z`` standard errors of the difference of two validation accuracies on
   the same validation split). With several workers an arm is promoted as soon as the cells finished at its
   fraction keep it (the asynchronous rule of Li et al. 2020, "A system for massively parallel hyperparameter
   tuning", ASHA), so no worker waits for a whole fraction to end.
3. **More seeds where the answer is close.** When the two best arms at the largest fraction are within noise,
   their next seeds run (paired, the arm with fewer first), up to ``SEEDS_WHEN_CLOSE`` seeds each (or the
   study's ``--seeds``, when more): one seed cannot tell them apart, and two paired seeds are what the advice
   needs for a confidence estimate. Further seeds would rarely change the answer within a budget.
4. **Then the rest of the data-efficiency curve**: the cells of the arms halving left behind, and the extra
   seeds the study asked for, cheapest first (``runner.plan_cells`` order). An arm outside noise of the best at
   some fraction (``Planner.hopeless``) gets no cell of this fill at a larger fraction: the budget goes to the
   arms that could still win.

The most useful cell left runs even when it would not fit whole: every cell is given the time left as its
limit (``train.max_seconds``: it stops after the last epoch that fits, keeps its best epoch and is marked as
stopped early). A cell is passed over only when not even one of its epochs fits (an arm not measured yet runs
its first cell while any time is left: that is how its cost is learned); the study ends when no cell is left,
or none fits. Costs are wall seconds learned from the finished cells of this study (`CostModel`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np

from ajuste.strategies.base import arm_strategy
from ajuste.study.advice import stopped_early
from ajuste.study.cells import cost_rank
from ajuste.study.scores import val_score, validation_noise
from ajuste.study.spec import Cell, StudySpec

# Two validation accuracies on the same split are "within noise" when they differ by less than this many
# standard errors of their difference (about a 95% two-sided band).
NOISE_Z = 2.0
# Seeds of the two close arms at the largest fraction (beyond the study's --seeds, when it asked fewer).
SEEDS_WHEN_CLOSE = 3


class CostModel:
    """Wall seconds of a cell by strategy: ``fixed + rate × (training examples × planned epochs)``, fitted to the
    finished cells of the strategy (least squares once two sizes were run; else through the origin from the
    largest cell run, which over-estimates larger cells rather than under). A strategy not run yet borrows the highest rate of those
    run, scaled by the strategies' ``cost_rank``. A cell its time limit stopped early is a lower bound only: it
    teaches its strategy's rate only while nothing else does. ``overhead`` is what a cell typically takes
    outside its fit (building the model, the test pass; the median over the cells), kept back from a cell's time
    limit."""

    def __init__(self) -> None:
        self.points: dict[str, list[tuple[float, float]]] = {}
        self.cut: dict[str, list[tuple[float, float]]] = {}
        self.overheads: list[float] = []

    def observe(self, strategy: str, n_train: int, seconds: float, epochs: int, *, cut: bool = False,
                overhead: float | None = None) -> None:
        (self.cut if cut else self.points).setdefault(strategy, []).append((float(n_train * max(1, epochs)),
                                                                            float(seconds)))
        if overhead is not None:
            self.overheads.append(max(0.0, float(overhead)))

    def observe_record(self, rec: dict[str, Any], planned_epochs: int) -> None:
        wall = float(rec.get("wall_seconds", rec["train_seconds"]))
        # outside the fit: the wall time less training and the frozen passes this cell computed itself
        fit = float(rec.get("cost_seconds", rec["train_seconds"])) - float(rec.get("shared_seconds", 0.0))
        self.observe(rec["strategy"], rec["n_train"], wall, planned_epochs, cut=stopped_early(rec),
                     overhead=wall - fit)

    def overhead(self) -> float:
        # the median: a process's first cell also pays one-time start-up costs (imports, first model build)
        return float(np.median(self.overheads)) if self.overheads else 0.0

    def measured(self, strategy: str) -> bool:
        return strategy in self.points or strategy in self.cut

    def _fit(self, strategy: str) -> tuple[float, float] | None:
        """(fixed seconds, seconds per example-epoch) of one strategy, or None when it has no cell."""
        pts = self.points.get(strategy) or self.cut.get(strategy)
        if not pts:
            return None
        xs = np.array([x for x, _ in pts])
        ys = np.array([y for _, y in pts])
        if len(set(xs.tolist())) >= 2:
            rate, fixed = np.polyfit(xs, ys, 1)
            if rate > 0 and fixed >= 0:
                return float(fixed), float(rate)
        # Through the origin from the largest cell (the slowest per example of those): a small cell's rate
        # holds its start-up costs, the first cell of a process its warm-up, which a larger one spreads.
        top = xs == xs.max()
        return 0.0, float(max(ys[top] / max(xs.max(), 1.0)))

    def estimate(self, strategy: str, n_train: int, epochs: int) -> float | None:
        x = n_train * max(1, epochs)
        own = self._fit(strategy)
        if own is not None:
            return own[0] + own[1] * x
        known = {s: self._fit(s) for s in set(self.points) | set(self.cut)}
        if not known:
            return None
        rate = max(f[1] / cost_rank(s) for s, f in known.items()) * cost_rank(strategy)
        return max(f[0] for f in known.values()) + rate * x


@dataclass
class Choice:
    cell: Cell
    max_seconds: float  # the cell's train.max_seconds
    why: str
    estimate: float | None


def within_noise(a: dict[str, Any], b: dict[str, Any], n_val: int | None) -> bool:
    """Two arms' mean validation accuracies (``val``, ``std``, ``seeds``) that one split cannot tell apart."""
    se = math.hypot(validation_noise(a["val"], n_val, a["std"], a["seeds"], a.get("metric", "accuracy")),
                    validation_noise(b["val"], n_val, b["std"], b["seeds"], b.get("metric", "accuracy")))
    return abs(a["val"] - b["val"]) <= NOISE_Z * se


def kept(results: dict[str, dict[str, Any]], n_val: int | None, *, complete: bool = True) -> list[str]:
    """Successive halving's cut at one fraction, the arms that go on (best first), from ``results`` (arm → its
    ``val``, ``std``, ``seeds`` there). Once every arm expected there has finished: the better half (rounded up)
    or within noise of the best, whichever keeps more. While some still run (several workers), ASHA's rule: the
    better half of those finished, rounded down (one finished cell promotes nothing yet)."""
    order = sorted(results, key=lambda s: -results[s]["val"])
    if not complete:
        return order[:len(order) // 2]
    if not order:
        return []
    best = results[order[0]]
    half = math.ceil(len(order) / 2)
    return [s for i, s in enumerate(order) if i < half or within_noise(results[s], best, n_val)]


class Planner:
    """The next cell under a budget (the rules above). ``records`` is the study's list of finished cells (it
    grows as cells end); ``size(cell)`` its (training examples, planned epochs); ``left()`` the seconds of the
    budget left; ``trained(cell)`` the epoch seconds an unfinished run of the cell already holds (its time
    limit counts them)."""

    def __init__(self, spec: StudySpec, *, size: Callable[[Cell], tuple[int, int]], records: list[dict[str, Any]],
                 cost: CostModel, n_val: int | None, left: Callable[[], float],
                 trained: Callable[[Cell], float] = lambda cell: 0.0) -> None:
        self.spec, self.size, self.records, self.cost = spec, size, records, cost
        self.n_val, self.left, self.trained = n_val, left, trained
        ranked = sorted(spec.strategies, key=lambda s: (cost_rank(s), spec.strategies.index(s)))
        # The floor arms (classical) cost seconds: their full-data cells run first, beside the anchor, and the rest
        # of their curve with the fill; halving and extra seeds are among the deep arms, which they would crowd
        # out (on digits at 10% the floor leads the arm that wins at full data).
        self.floors = [s for s in ranked if arm_strategy(s).baseline]
        self.arms = [s for s in ranked if s not in self.floors] or ranked
        self.top = max(spec.fractions)
        self.max_seeds = max(spec.seeds, SEEDS_WHEN_CLOSE)

    def _results(self, fraction: float) -> dict[str, dict[str, Any]]:
        """Arm → mean validation score (the study's metric) over its finished seeds at ``fraction``, their spread
        and count."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.spec.strategies:
            rs = [r for r in self.records if r["strategy"] == s and r["fraction"] == fraction]
            vals = [val_score(r) for r in rs]
            if vals:
                out[s] = {"val": float(np.mean(vals)), "std": float(np.std(vals, ddof=1)) if len(vals) > 1 else 0.0,
                          "seeds": len(vals), "metric": rs[0].get("metric", "accuracy")}
        return out

    def _halving(self, busy: set[str]) -> list[tuple[Cell, str]]:
        fractions = sorted(self.spec.fractions)
        out = [(Cell(s, fractions[0], 0), f"all arms at fraction {fractions[0]:g}") for s in self.arms]
        expected = set(self.arms)  # the arms that run at this fraction: all at the first, then those kept
        for lo, hi in zip(fractions, fractions[1:]):
            results = self._results(lo)
            expected |= set(results) | {s for s in self.arms if Cell(s, lo, 0).key in busy}
            keep = kept(results, self.n_val, complete=expected <= set(results))
            out += [(Cell(s, hi, 0), f"could still be the best at fraction {lo:g}") for s in keep]
            expected = set(keep)
        return out

    def _seeds(self, busy: set[str]) -> list[tuple[Cell, str]]:
        results = {s: r for s, r in self._results(self.top).items() if arm_strategy(s).seeded}
        if len(results) < 2 or any(f"-f{self.top:g}-s" in k for k in busy):
            return []  # wait for the cells of the largest fraction still running
        a, b = sorted(results, key=lambda s: -results[s]["val"])[:2]
        if not within_noise(results[a], results[b], self.n_val):
            return []
        out = []
        for s in sorted((a, b), key=lambda s: results[s]["seeds"]):
            seed = results[s]["seeds"]
            if seed < self.max_seeds:
                out.append((Cell(s, self.top, seed), f"within noise of {b if s == a else a} at fraction "
                                                              f"{self.top:g}: another seed"))
        return out

    def candidates(self, busy: set[str]) -> list[tuple[Cell, str]]:
        """Every cell that may run now, most useful first, with why."""
        first = "a full-data model first" if self.top == 1.0 else f"a model on the largest fraction ({self.top:g}) first"
        anchor = [(Cell(s, self.top, 0), "the floor (no deep network), at all the data") for s in self.floors]
        anchor.append((Cell(self.arms[0], self.top, 0), first))
        out_of_it = self.hopeless()
        fill = sorted((c for c in self.spec.cells() if not c.fraction > out_of_it.get(c.strategy, 1.0)),
                      key=lambda c: (c.seed > 0, c.fraction, cost_rank(c.strategy), c.seed))
        ordered = anchor + self._halving(busy) + self._seeds(busy) + [(c, "the data-efficiency curve") for c in fill]
        taken = {r["cell"] for r in self.records} | set(busy)
        out, seen = [], set()
        for cell, why in ordered:
            if cell.key not in taken and cell.key not in seen:
                seen.add(cell.key)
                out.append((cell, why))
        return out

    def hopeless(self) -> dict[str, float]:
        """Deep arm → the smallest fraction at which it is outside noise of the best arm finished there. More cells
        finishing can only confirm it (the best can only rise), so it holds while others still run. The fill (rule
        4) runs none of its cells at larger fractions; halving may still promote it (the better half). On sst2 a
        from-scratch arm far behind at 10% (0.65 vs 0.81 on validation) took a free worker for 120 s of a 333 s
        budget at 30%, sharing the cores with the leading arm, while the halving waited for that arm's cell."""
        out: dict[str, float] = {}
        for f in sorted(self.spec.fractions)[:-1]:
            results = {s: r for s, r in self._results(f).items() if s in self.arms}
            if not results:
                continue
            best = max(results.values(), key=lambda r: r["val"])
            for s, r in results.items():
                if s not in out and not within_noise(r, best, self.n_val):
                    out[s] = f
        return out

    def next(self, busy: set[str]) -> Choice | None:
        """The cell to start now with its time limit, or None (none left, or none of which an epoch fits)."""
        left = self.left()
        reserve = self.cost.overhead()
        for cell, why in self.candidates(busy):
            n, epochs = self.size(cell)
            est = self.cost.estimate(cell.strategy, n, epochs)
            if est is None and (self.records or busy):
                return None  # nothing measured yet: the first cell runs alone, to measure it
            if not self.cost.measured(cell.strategy):
                # An arm never run: its estimate borrows another arm's rate through the cost ranks, a rough
                # guess (a linear probe's wall time is mostly one forward pass). Its cell runs while any time is
                # left, as the cheapest way to measure it, within the time left.
                if est is not None and left <= reserve:
                    continue
            elif self.cost.estimate(cell.strategy, n, 1) + reserve > left:
                continue  # not even one epoch fits: a cheaper cell may
            limit = self.trained(cell) + max(left - reserve, 1.0)
            return Choice(cell, round(limit, 1), why, est)
        return None

    def skipped(self) -> list[dict[str, Any]]:
        """The study's cells not run, with their estimated seconds, the budget left and why."""
        left = self.left()
        done = {r["cell"] for r in self.records}
        fractions = sorted(self.spec.fractions)
        out_of_it = self.hopeless()
        out = []
        for cell in self.spec.cells():
            if cell.key in done:
                continue
            n, epochs = self.size(cell)
            est = self.cost.estimate(cell.strategy, n, epochs)
            reason = "no time left"
            i = fractions.index(cell.fraction)
            below = self._results(fractions[i - 1]) if i > 0 else {}
            if cell.strategy in out_of_it and cell.fraction > out_of_it[cell.strategy]:
                reason = (f"outside noise of the best arm at fraction {out_of_it[cell.strategy]:g}: not run under a "
                          f"budget")
            elif cell.strategy in below and cell.strategy not in kept(below, self.n_val):
                reason = f"dropped by successive halving at fraction {fractions[i - 1]:g}, then no time left"
            out.append({"cell": cell.key, "estimate_seconds": None if est is None else round(est, 1),
                        "left_seconds": round(max(0.0, left), 1), "reason": reason})
        return out
