"""From cell results to a recommendation with reasons.

Selection uses the study's metric on validation only (``val_score``: train.monitor's metric, accuracy unless it
names another score, ajuste.metrics); the test split's score is reported, never used to choose.
"""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ajuste.strategies.base import baseline_strategies, scratch_strategies
from ajuste.study.scores import fmt, gap_text, metric_of, shown, val_score, validation_noise, with_scores


def _scratch_arms() -> frozenset[str]:
    # The strategies that start from random weights; every other arm starts from pretrained weights.
    return scratch_strategies()


def stopped_early(rec: dict[str, Any]) -> bool:
    """A cell whose training a budget's time limit cut short (train.max_seconds; records from before the flag:
    never)."""
    return bool(rec.get("stopped_early"))


def _key(r: dict[str, Any]) -> str:
    return r.get("cell") or f"{r['strategy']}-f{r['fraction']:g}-s{r['seed']}"


def aggregate(records: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean ± std over seeds per (strategy, fraction)."""
    groups: dict[tuple[str, float], list[dict]] = defaultdict(list)
    for r in with_scores(records):
        groups[(r["strategy"], r["fraction"])].append(r)
    rows = []
    for (strategy, fraction), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        row: dict[str, Any] = {"strategy": strategy, "fraction": fraction, "seeds": len(rs),
                               "n_train": int(np.mean([r["n_train"] for r in rs]))}
        for key in ("test_score", "test_accuracy", "test_macro_f1", "val_score", "val_accuracy", "train_seconds",
                    "cost_seconds", "peak_memory_mb"):
            vals = np.array([cost(r) if key == "cost_seconds" else r[key] for r in rs], dtype=float)
            row[key] = float(vals.mean())
            row[key + "_std"] = float(vals.std(ddof=1)) if len(vals) > 1 else 0.0
        row["n_val"] = rs[0].get("n_val")
        row["metric"] = rs[0].get("metric", "accuracy")
        row["stopped_early"] = sum(stopped_early(r) for r in rs)  # seeds cut short by a budget's time limit
        row["trainable_params"] = int(rs[0]["trainable_params"])
        row["total_params"] = int(rs[0]["total_params"])
        rows.append(row)
    return rows


def cost(record: dict[str, Any]) -> float:
    """What a cell's arm costs on its own: training plus the frozen passes that filled its activation cache,
    also when another cell computed them (records from before cost_seconds: training only)."""
    return float(record.get("cost_seconds", record["train_seconds"]))


def _power_fit(ns: np.ndarray, accs: np.ndarray) -> tuple[float, float] | None:
    """Fit error(n) = k · n^(-a) in log-log space; None when it cannot be fitted (too few points)."""
    err = np.clip(1.0 - accs, 1e-3, 1.0)
    if len(ns) < 2 or len(set(ns.tolist())) < 2:
        return None
    slope, intercept = np.polyfit(np.log(ns), np.log(err), 1)
    return float(math.exp(intercept)), float(-slope)


def best_scratch_arm(agg: list[dict[str, Any]]) -> str | None:
    """The from-scratch arm that validation prefers at the largest fraction it ran (None: none ran)."""
    rows = [r for r in agg if r["strategy"] in _scratch_arms()]
    if not rows:
        return None
    top = max(r["fraction"] for r in rows)
    return max((r for r in rows if r["fraction"] == top), key=lambda r: r["val_score"])["strategy"]


def full_size(agg: list[dict[str, Any]]) -> int:
    """Training examples of the whole training split, from the cells run (a budget may have skipped the
    full-data ones): a fraction's cell has about fraction × that many."""
    top = max(agg, key=lambda r: (r["fraction"], r["n_train"]))
    return int(top["n_train"]) if top["fraction"] >= 1 else int(round(top["n_train"] / top["fraction"]))


def crossover(agg: list[dict[str, Any]], finetuned: str, scratch: str = "scratch") -> dict[str, Any]:
    """Where (if anywhere) the from-scratch arm ``scratch`` catches up with the fine-tuned arm,
    measured or extrapolated (against the training examples the user has, not only the sizes run)."""
    by = {(r["strategy"], r["fraction"]): r for r in agg}
    fractions = sorted({r["fraction"] for r in agg if r["strategy"] == scratch} &
                       {r["fraction"] for r in agg if r["strategy"] == finetuned})
    if not fractions:
        return {"status": "unknown", "text": f"{scratch} was not run at the same fractions; no crossover measured"}
    for f in fractions:
        s, t = by[(scratch, f)], by[(finetuned, f)]
        tol = max(0.005, s["test_score_std"] + t["test_score_std"])
        if s["test_score"] >= t["test_score"] - tol:
            where = ("is level with or ahead of {ft} already at the smallest size run, {n} training examples"
                     if f == fractions[0] else "catches up with {ft} at {n} training examples")
            return {"status": "measured", "fraction": f, "n_train": s["n_train"], "scratch": scratch,
                    "from_start": f == fractions[0],
                    "text": f"{scratch} {where.format(ft=finetuned, n=s['n_train'])} "
                            f"(fraction {f:g}: {fmt(s['test_score'], s)} vs {fmt(t['test_score'], t)})"}
    ns = np.array([by[(scratch, f)]["n_train"] for f in fractions], dtype=float)
    fs = _power_fit(ns, np.array([by[(scratch, f)]["test_score"] for f in fractions]))
    ft = _power_fit(ns, np.array([by[(finetuned, f)]["test_score"] for f in fractions]))
    have = max(full_size(agg), int(ns.max()))
    text = "not within the data you have" if ns.max() >= have else \
        f"not within the sizes run (up to {int(ns.max())} of your {have} training examples)"
    out: dict[str, Any] = {"status": "not-reached", "text": text}
    if fs and ft and fs[1] > ft[1] + 1e-6:
        n_star = (fs[0] / ft[0]) ** (1.0 / (fs[1] - ft[1]))
        if math.isfinite(n_star) and n_star > ns.max():
            out["extrapolated_n"] = float(n_star)
            if n_star > have:
                times = n_star / have
                out["text"] = (f"{text}; extrapolating the learning curves, {scratch} would catch up at about "
                               f"{_human(n_star)} training examples ({times:.{0 if times >= 10 else 1}f}× the "
                               f"{have} you have)")
            else:
                out["text"] = (f"{text}; extrapolating the learning curves, {scratch} would catch up at about "
                               f"{_human(n_star)} training examples, within the {have} you have: the full-data "
                               f"cells would measure it")
    elif fs and ft:
        out["text"] = f"{text}; on the measured curves {scratch} is not closing the gap"
    return out


def more_data(agg: list[dict[str, Any]], strategy: str) -> str:
    rows = sorted((r for r in agg if r["strategy"] == strategy), key=lambda r: r["n_train"])
    fit = _power_fit(np.array([r["n_train"] for r in rows], float), np.array([r["test_score"] for r in rows]))
    if not fit or len(rows) < 3:
        return "too few fractions to extrapolate what more data would buy"
    n = rows[-1]["n_train"]
    k, a = fit
    now, later = 1 - k * n ** -a, 1 - k * (2 * n) ** -a
    return (f"doubling the data ({n} → {2 * n} examples) would take {strategy} from about {100 * now:.1f}% to "
            f"{100 * min(later, 1.0):.1f}% (power-law fit of the learning curve)")


def _human(n: float) -> str:
    return f"{n / 1e6:.1f}M" if n >= 1e6 else f"{n / 1e3:.0f}k" if n >= 1e4 else f"{n:.0f}"


def data_size_reason(n: int) -> str:
    if n < 1000:
        return f"{n} training examples is small data: fine-tuning a pretrained model is the safe choice"
    if n < 100_000:
        return f"{n} training examples is medium-sized: fine-tuning usually wins; scratch may need much more data"
    return f"{n} training examples: enough that training from scratch is viable, if compute allows"


def recommend(records: list[dict[str, Any]], similarity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The winning arm at the largest fraction run (selected on the study's metric on validation), with
    reasons."""
    records = with_scores(records)
    agg = aggregate(records)
    if not agg:
        return {"winner": None, "text": "no finished cells", "reasons": []}
    top_fraction = max(r["fraction"] for r in agg)
    arms = sorted((r for r in agg if r["fraction"] == top_fraction), key=lambda r: -r["val_score"])
    win, tie = one_standard_error_choice(candidates(arms))
    runner = next((r for r in arms if r is not win), None)
    level = bool(runner) and not tie and f"{fmt(win['val_score'], win)}" == f"{fmt(runner['val_score'], runner)}"
    if level and runner["cost_seconds"] < win["cost_seconds"]:
        win, runner = runner, win  # equal as far as the advice prints: the cheaper arm
    reasons: list[str] = []
    margin = (win["test_score"] - runner["test_score"]) if runner else 0.0
    val_margin = (win["val_score"] - runner["val_score"]) if runner else 0.0
    confidence = _confidence(records, win["strategy"], runner["strategy"] if runner else None, top_fraction)
    text = (f"Use {win['strategy']}: test {metric_of(agg)} {fmt(win['test_score'], win)}"
            + (f" ± {win['test_score_std']:.3f}" if win["seeds"] > 1 else "")
            + f" with {win['n_train']} training examples")
    if tie:
        text += tie
    elif level:
        slower = runner["cost_seconds"] / max(win["cost_seconds"], 1e-3)
        text += (f"; tied on validation with {runner['strategy']} ({fmt(win['val_score'], win)} each), the cheaper arm "
                 f"is chosen ({runner['strategy']} took {slower:.1f}× longer to train; test "
                 f"{fmt(runner['test_score'], runner)})")
    elif runner:
        if margin >= 0:
            text += f", {gap_text(margin, agg)} over {runner['strategy']} ({fmt(runner['test_score'], runner)})"
        else:  # validation chose it, the test split disagrees: say both rather than "-0.7 points over"
            text += (f", ahead on validation ({fmt(win['val_score'], win)} vs {fmt(runner['val_score'], runner)})"
                     f" though {gap_text(margin, agg).lstrip('+-')} behind {runner['strategy']} on test "
                     f"({fmt(runner['test_score'], runner)})")
        text += f"; confidence {confidence['level']} ({confidence['text']})"
    text += _caveats(win, text)
    early = [_key(r) for r in records if stopped_early(r)]
    if early:
        reasons.append(f"stopped early by the budget's time limit, so trained for less than planned: "
                       f"{', '.join(early)}")
    size = data_size_reason(win["n_train"])
    scratch_arms = _scratch_arms()
    if win["strategy"] in scratch_arms and win["n_train"] < 100_000:
        # the rule of thumb and the measurement disagree: say so rather than contradict the advice
        size += f"; here, though, {win['strategy']} matched the fine-tuned arms on your data (measured below)"
    elif win["strategy"] in baseline_strategies():
        size += f"; here, though, {win['strategy']} (no deep network) matched the deep arms on your data (below)"
    reasons.append(size)
    if similarity:
        p, r = similarity["pretrained"], similarity["random"]
        reasons.append(f"domain similarity is {similarity['similarity']}: a linear probe on pretrained features "
                       f"scores {p['probe_accuracy']:.3f} vs {r['probe_accuracy']:.3f} on random features "
                       f"(LogME {p['logme']:.2f} vs {r['logme']:.2f})")
    floor = floor_reason(arms, win)
    if floor:
        reasons.append(floor)
    ft_arms = [r for r in arms if r["strategy"] not in scratch_arms | baseline_strategies()]
    best_ft = ft_arms[0]["strategy"] if ft_arms else None
    scratch = best_scratch_arm(agg)
    cross = crossover(agg, best_ft, scratch) if best_ft and scratch else None
    if cross:
        reasons.append(f"fine-tuned vs scratch: {cross['text']}")
    reasons.append(_compute_reason(arms, win))
    shared = sum(r.get("shared_seconds", 0.0) for r in records)
    if shared >= 1:
        reasons.append(f"cells sharing frozen-layer activations saved this study {shared:.0f}s; each arm's time "
                       f"above counts them, as if it ran alone")
    more = more_data(agg, win["strategy"])
    reasons.append(more)
    return {"winner": win["strategy"], "fraction": top_fraction, "margin": margin, "val_margin": val_margin,
            "runner_up": runner["strategy"] if runner else None, "confidence": confidence, "text": text,
            "reasons": reasons, "crossover": cross, "best_finetuned": best_ft}


def _caveats(win: dict[str, Any], text: str) -> str:
    """What the recommendation rests on, when that is thin: one seed, a cell stopped early."""
    out = ""
    if win["seeds"] == 1 and "one seed" not in text:
        out += "; this rests on one seed (--seeds 3 measures the spread)"
    if win.get("stopped_early"):
        out += (f"; {win['strategy']} at this fraction was stopped early by the budget's time limit (a longer "
                f"run may do better)")
    return out


def candidates(arms: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The arms a recommendation chooses among: the deep arms, and the floor (classical) only where it beats
    every one of them beyond the noise of its validation accuracy. Within noise the floor is named, not chosen:
    on pneumoniamnist it was level on validation (0.970 vs two-stage's 0.967, ±0.011) and 8 points behind on the
    test split (0.859 vs 0.940), whose images come from elsewhere; a validation split cannot show how hand-made
    features carry over. ``arms`` keeps its order (best on validation first)."""
    floors = [r for r in arms if r["strategy"] in baseline_strategies()]
    deep = [r for r in arms if r["strategy"] not in baseline_strategies()]
    if not floors or not deep:
        return arms
    best_floor = max(floors, key=lambda r: r["val_score"])
    beats = best_floor["val_score"] - max(r["val_score"] for r in deep) > standard_error(best_floor)
    return [best_floor] if beats else deep


def handed_over(records: list[dict[str, Any]], advice: dict[str, Any]) -> dict[str, Any] | None:
    """The finished cell whose model the study hands over: the most accurate on validation of the candidate arms'
    cells (the floor's only when it is the recommendation, ``candidates``). A cell trained on a fraction counts: a
    budget may have skipped its arm's full-data cell, or that one may be worse (the validation split is the same
    for every cell). Ties go to the recommended arm, then to more data, then to the cheaper cell."""
    if not records:
        return None
    records = with_scores(records)
    floor_won = advice.get("winner") in baseline_strategies()
    pool = [r for r in records if floor_won or r["strategy"] not in baseline_strategies()] or records
    return max(pool, key=lambda r: (r["val_score"], r["strategy"] == advice.get("winner"), r["fraction"],
                                    -cost(r)))


def handed_over_text(cell: dict[str, Any], advice: dict[str, Any]) -> str:
    """Which run best_model/ is, in a sentence: its arm, the share of the training data it saw, and why."""
    label = metric_of([cell])
    text = (f"{cell['strategy']} trained on {cell['n_train']} examples (fraction {cell['fraction']:g}), validation "
            f"{label} {fmt(val_score(cell), cell)}")
    if cell["strategy"] != advice.get("winner") or cell["fraction"] != advice.get("fraction"):
        best = "the most accurate" if label == "accuracy" else f"the best by {label}"
        text += (f"; handed over as {best} on validation of all finished cells (the recommendation "
                 "weighs cost, at the largest fraction run)")
    if stopped_early(cell):
        text += "; its training was stopped early by the budget's time limit"
    return text


def one_standard_error_choice(arms: list[dict[str, Any]]) -> tuple[dict[str, Any], str]:
    """The one-standard-error rule (Breiman et al.; Hastie et al., ESL 7.10): among the arms whose
    validation accuracy is within one standard error of the best, take the cheapest to train. A
    0.4-point lead measured on a few hundred validation examples and one seed is noise, and the
    cheaper arm is then the better advice. The standard error is the binomial one of the best arm's
    accuracy on the validation split (or the spread over seeds, when larger). ``arms`` is sorted by
    validation accuracy; returns (chosen arm, sentence for the recommendation or "")."""
    best = arms[0]
    n_val = best.get("n_val")
    if not n_val or len(arms) < 2:
        return best, ""
    p = best["val_score"]
    se = standard_error(best)
    tied = [r for r in arms if p - r["val_score"] <= se]
    if len(tied) < 2:
        return best, ""
    cheapest = min(tied, key=lambda r: r["cost_seconds"])
    if cheapest is best:
        return best, ""
    others = ", ".join(f"{r['strategy']} (test {fmt(r['test_score'], r)})" for r in tied if r is not cheapest)
    slower = best["cost_seconds"] / max(cheapest["cost_seconds"], 1e-3)
    return cheapest, (f"; tied on validation with {others} (within one standard error, ±{se:.3f} on "
                      f"{n_val} validation examples) and the cheapest of them ({best['strategy']}, the "
                      f"nominal best, took {slower:.1f}× longer to train)")


def floor_reason(arms: list[dict[str, Any]], win: dict[str, Any]) -> str | None:
    """The deep arms against the classical floor at the largest fraction run: what they gain over it, or that it
    is within noise of them (one standard error of the best deep arm's validation accuracy) at a fraction of
    their cost, which the user should know. None without a floor arm or a deep arm."""
    floors = [r for r in arms if r["strategy"] in baseline_strategies()]
    deep = [r for r in arms if r["strategy"] not in baseline_strategies()]
    if not floors or not deep:
        return None
    floor = max(floors, key=lambda r: r["val_score"])
    best = max(deep, key=lambda r: r["val_score"])
    p, se = best["val_score"], standard_error(best)
    ratio = best["cost_seconds"] / max(floor["cost_seconds"], 1e-3)
    name = floor["strategy"]
    cheaper = f"at 1/{ratio:.0f} of" if ratio >= 1.5 else "at about"
    if floor["val_score"] - p > standard_error(floor):
        return (f"the {name} floor (no deep network) beats every deep arm on validation "
                f"({fmt(floor['val_score'], floor)} vs {fmt(p, best)} for {best['strategy']}; test "
                f"{fmt(floor['test_score'], floor)} vs {fmt(best['test_score'], best)}) {cheaper} the best one's "
                f"cost: these features suit this data better than the pretrained ones")
    if p - floor["val_score"] <= se:
        return (f"the {name} floor (no deep network) is within noise of the best deep arm, {best['strategy']}, on "
                f"validation ({fmt(floor['val_score'], floor)} vs {fmt(p, best)}, ±{se:.3f}; test "
                f"{fmt(floor['test_score'], floor)} vs {fmt(best['test_score'], best)}) {cheaper} its cost: if that "
                f"cost matters, check the floor on data from where the model will be used "
                f"(runs/{floor['strategy']}-f{floor['fraction']:g}-s0)")
    gain = best["test_score"] - floor["test_score"]
    return (f"over the {name} floor (no deep network: test {fmt(floor['test_score'], floor)} in "
            f"{floor['cost_seconds']:.0f}s), {best['strategy']} gains {gap_text(gain, deep)} at {ratio:.0f}× "
            f"the cost")


def standard_error(arm: dict[str, Any]) -> float:
    """The noise of an aggregated arm's validation accuracy (``validation_noise``; 0 without a validation size)."""
    if not arm.get("n_val"):
        return 0.0
    return validation_noise(arm["val_score"], arm["n_val"], arm.get("val_score_std", 0.0),
                            arm.get("seeds", 1), arm.get("metric", "accuracy"))


def _compute_reason(arms: list[dict[str, Any]], win: dict[str, Any]) -> str:
    cheap = min(arms, key=lambda r: r["cost_seconds"])
    parts = [f"{win['strategy']} takes {win['cost_seconds']:.0f}s on its own (its frozen passes included) with "
             f"{win['trainable_params']:,} trainable parameters, peak memory {win['peak_memory_mb']:.0f} MB"]
    speed = win["cost_seconds"] / max(cheap["cost_seconds"], 1e-3)
    if cheap["strategy"] != win["strategy"] and shown(win["test_score"], win) != win["test_score"]:  # an error
        parts.append(f"{cheap['strategy']} reaches test {metric_of(win)} {fmt(cheap['test_score'], cheap)} against "
                     f"{fmt(win['test_score'], win)}, {speed:.0f}× faster")
    elif cheap["strategy"] != win["strategy"] and win["test_score"] > 0:
        share = cheap["test_score"] / win["test_score"]
        parts.append(f"{cheap['strategy']} reaches {100 * share:.0f}% of its {metric_of([win])} {speed:.0f}× faster")
    return "; ".join(parts)


def _confidence(records: list[dict[str, Any]], a: str, b: str | None, fraction: float) -> dict[str, Any]:
    if b is None:
        return {"level": "n/a", "text": "only one arm"}
    ra = {r["seed"]: r["val_score"] for r in records if r["strategy"] == a and r["fraction"] == fraction}
    rb = {r["seed"]: r["val_score"] for r in records if r["strategy"] == b and r["fraction"] == fraction}
    seeds = sorted(set(ra) & set(rb))
    if len(seeds) < 2:
        return {"level": "low", "text": "one seed; run --seeds 3 for a confidence estimate"}
    wins = sum(ra[s] > rb[s] for s in seeds)
    diffs = np.array([ra[s] - rb[s] for s in seeds])
    sd = diffs.std(ddof=1)
    t = diffs.mean() / (sd / math.sqrt(len(diffs))) if sd > 0 else (math.inf if diffs.mean() > 0 else 0.0)
    level = "high" if wins == len(seeds) and t > 3 else "medium" if wins > len(seeds) / 2 else "low"
    label = metric_of([r for r in records if r["strategy"] == a])
    return {"level": level, "text": f"wins on {wins} of {len(seeds)} seeds in validation {label}"}


def pre_post(agg: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Per fraction: the pretrained model's linear probe (before any backbone update) vs the best
    fine-tuned arm (after), by validation choice."""
    out = []
    for f in sorted({r["fraction"] for r in agg}):
        rows = [r for r in agg if r["fraction"] == f]
        lp = next((r for r in rows if r["strategy"] == "linear-probe"), None)
        ft = [r for r in rows if r["strategy"] not in _scratch_arms() | baseline_strategies() | {"linear-probe"}]
        if lp is None or not ft:
            continue
        best = max(ft, key=lambda r: r["val_score"])
        out.append({"fraction": f, "n_train": lp["n_train"], "pre": lp["test_score"], "post": best["test_score"],
                    "post_strategy": best["strategy"], "gain": best["test_score"] - lp["test_score"]})
    return out
