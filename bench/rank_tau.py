"""Does `ajuste rank` predict fine-tuning? Kendall's τ between each estimator's score and two-stage test accuracy.

    python bench/rank_tau.py --sets hymenoptera,pneumoniamnist,clothing-small --out DIR \
        [--fractions clothing-small=0.3] [--models efficientnet_lite0,efficientnet_lite1,efficientnet_lite2]
    python bench/rank_tau.py --sets sms-spam,trec,sst2 --out DIR --models minilm-l6,MODELDIR \
        [--fractions trec=0.3,sst2=0.2]

The candidates default per modality (--image-models, --text-models); --models, when given, is used for every set.
A candidate may be a local Hugging Face model folder (bench/fetch_mpnet.py makes one); tables name it by the
folder's last component.

For each set: `ajuste rank DATA --models M --out DIR/<set>-rank.json` (default 90 s cap), then
`ajuste compare DATA --models M --strategies two-stage --fractions F --seeds 1 --no-similarity --out
DIR/<set>-compare` (a study directory resumes, so a re-run trains only what is missing; a rank JSON that exists is
reused). Each backbone's truth is its two-stage test accuracy (mean over seeds at F); each predictor is an
estimator's score, or the backbone's parameter count / forward MFLOPs (the "bigger is better" baselines). Kendall's
τ (scipy.stats.kendalltau, τ-b) and weighted τ (scipy.stats.weightedtau, hyperbolic weights on rank, as the
LogME paper reports them) per set and predictor; a Markdown table on stdout, everything in DIR/rank_tau.json.

With three candidates τ takes only the values −1, −1/3, 1/3, 1, with two only ±1 (the table says right or wrong):
one set's τ is one ordering, not a statistic.
The pooled line is the summary: mean τ, the pairs of backbones the accuracy separates that a predictor orders the
wrong way round, and the sets where its top-1 ties the best accuracy.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "datasets"
SETS = {
    "hymenoptera": "hymenoptera",
    "pneumoniamnist": "pneumoniamnist/pneumoniamnist.npz",
    "clothing-small": "clothing-small",
    "sms-spam": "sms-spam/SMSSpamCollection",
    "trec": "trec",
    "sst2": "sst2",
}
TEXT_SETS = {"sms-spam", "trec", "sst2"}
DEFAULT_FRACTION = {"hymenoptera": "1", "pneumoniamnist": "1", "clothing-small": "0.3",
                    "sms-spam": "0.1", "trec": "0.3", "sst2": "0.1"}
MODELS = {"image": "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
          # The only text encoder that loads offline from the package; add a folder (bench/fetch_mpnet.py) for a τ.
          "text": "minilm-l6"}
ESTIMATORS = ("logme", "hscore", "nleep", "leep", "nce")
BASELINES = ("params_m", "mflops")  # bigger is better: the predictor a ranking has to beat


def ajuste(*args: str, log: Path) -> float:
    """Run ``python -m ajuste ARGS`` with this checkout's src first on PYTHONPATH; its seconds of wall time.
    Output goes to ``log`` (appended: a resumed study keeps its history)."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO / "src"),
                                                                      os.environ.get("PYTHONPATH")]))}
    t0 = time.perf_counter()
    with open(log, "a") as fh:
        fh.write(f"\n$ ajuste {' '.join(args)}\n")
        fh.flush()
        proc = subprocess.run([sys.executable, "-m", "ajuste", *args], env=env, stdout=fh, stderr=subprocess.STDOUT)
    if proc.returncode:
        raise SystemExit(f"ajuste {args[0]} failed (exit {proc.returncode}): see {log}")
    return time.perf_counter() - t0


def test_accuracies(study: Path, models: list[str]) -> dict[str, dict]:
    """Per backbone: mean two-stage test and validation accuracy over the seeds at the study's largest fraction,
    and the same on the study's metric (``score``: macro-F1 where the labels are imbalanced, e.g. sms-spam and
    trec, which is what the study selects on; accuracy elsewhere)."""
    sys.path.insert(0, str(REPO / "src"))
    from ajuste.io import read_jsonl
    from ajuste.study.scores import with_scores

    out = {}
    for m in models:
        path = study / re.sub(r"[^A-Za-z0-9_.-]+", "-", m) / "results.jsonl"  # report.backbones.backbone_dir
        recs = [r for r in with_scores(read_jsonl(path)) if r["strategy"] == "two-stage"] if path.is_file() else []
        if not recs:
            continue
        top = max(r["fraction"] for r in recs)
        recs = [r for r in recs if r["fraction"] == top]
        def mean(key: str, fallback: str) -> float:
            return sum(r.get(key, r[fallback]) for r in recs) / len(recs)

        out[m] = {"test": mean("test_accuracy", "test_score"), "val": mean("val_accuracy", "val_score"),
                  "test_score": mean("test_score", "test_score"), "val_score": mean("val_score", "val_score"),
                  "fraction": top, "seeds": len(recs), "metric": recs[0].get("metric", "accuracy"),
                  "train_seconds": [r.get("train_seconds", r.get("cost_seconds")) for r in recs]}
    return out


def taus(pred: list[float], truth: list[float]) -> tuple[float, float]:
    """(Kendall's τ-b, weighted τ) of a predictor against the truth; nan where undefined (fewer than 2, a
    constant side)."""
    from scipy.stats import kendalltau, weightedtau

    if len(pred) < 2 or len(set(pred)) < 2 or len(set(truth)) < 2:
        return math.nan, math.nan
    return float(kendalltau(pred, truth).statistic), float(weightedtau(pred, truth).statistic)


def analyse(name: str, rank: dict, acc: dict[str, dict]) -> dict:
    rows = {r["model"]: r for r in rank["rows"] if r.get("status") == "ok"}
    models = [m for m in acc if m in rows]
    truth = [acc[m]["test"] for m in models]
    best = max(models, key=lambda m: acc[m]["test"]) if models else None
    metric = acc[models[0]]["metric"] if models else "accuracy"
    result = {"set": name, "models": models, "test": {m: acc[m]["test"] for m in models},
              "val": {m: acc[m]["val"] for m in models}, "metric": metric,
              "test_score": {m: acc[m]["test_score"] for m in models}, "predictors": {}}
    for p in ESTIMATORS + BASELINES:
        vals = {m: (rows[m]["scores"].get(p) if p in ESTIMATORS else rows[m].get(p)) for m in models}
        if any(v is None for v in vals.values()):
            continue
        tau, wtau = taus([vals[m] for m in models], truth)
        # against validation too: what a study selects on (test is read afterwards; the two can disagree)
        vtau, vwtau = taus([vals[m] for m in models], [acc[m]["val"] for m in models])
        # against the test score on the study's metric (macro-F1 on imbalanced labels): the same as τ elsewhere
        stau, swtau = taus([vals[m] for m in models], [acc[m]["test_score"] for m in models])
        top = max(models, key=lambda m: vals[m])
        # Pairs the accuracy separates (a tie in accuracy is no evidence either way) and how many of them the
        # predictor orders the other way round; a top-1 is right when it ties the best accuracy.
        pairs = [(a, b) for i, a in enumerate(models) for b in models[i + 1:] if acc[a]["test"] != acc[b]["test"]]
        wrong = sum((vals[a] - vals[b]) * (acc[a]["test"] - acc[b]["test"]) < 0 for a, b in pairs)
        result["predictors"][p] = {"scores": vals, "tau": tau, "weighted_tau": wtau, "tau_val": vtau,
                                   "weighted_tau_val": vwtau, "tau_score": stau, "weighted_tau_score": swtau,
                                   "top1": top,
                                   "top1_right": acc[top]["test"] == acc[best]["test"],
                                   "pairs": len(pairs), "wrong_pairs": int(wrong)}
    return result


def fmt(x: float) -> str:
    return "undef." if math.isnan(x) else f"{x:+.2f}"


def short(model: str) -> str:
    """A table's name for a candidate: a folder by its last component, a Lite without its family prefix."""
    if model.startswith(("/", "./", "../", "~")) or Path(model).is_dir():
        model = Path(model.rstrip("/")).name
    return model.replace("efficientnet_", "")


def cell(r: dict, p: str, tau: str, wtau: str) -> str:
    """One set's τ / τw for a predictor; with two candidates both are ±1, so the cell says the one ordering."""
    if p not in r["predictors"]:
        return "–"
    x = r["predictors"][p]
    if len(r["models"]) == 2 and not math.isnan(x[tau]):
        return f"{'right' if x[tau] > 0 else 'wrong'} ({fmt(x[tau])})"
    return f"{fmt(x[tau])} / {fmt(x[wtau])}"


def print_tables(results: list[dict]) -> None:
    preds = [p for p in ESTIMATORS + BASELINES if any(p in r["predictors"] for r in results)]
    label = {"logme": "LogME", "hscore": "H-score", "nleep": "NLEEP", "leep": "LEEP", "nce": "NCE",
             "params_m": "parameter count", "mflops": "forward MFLOPs"}
    print("\n| set | test accuracy (two-stage) | " + " | ".join(label[p] for p in preds) + " |")
    print("|---|---|" + "---|" * len(preds))
    for r in results:
        accs = ", ".join(f"{short(m)} {r['test'][m]:.3f}" for m in r["models"])
        cells = [cell(r, p, "tau", "weighted_tau") for p in preds]
        print(f"| {r['set']} | {accs} | " + " | ".join(cells) + " |")
    pooled = []
    for p in preds:
        rs = [r["predictors"][p] for r in results if p in r["predictors"]]
        t = [x["tau"] for x in rs if not math.isnan(x["tau"])]
        w = [x["weighted_tau"] for x in rs if not math.isnan(x["weighted_tau"])]
        pooled.append(f"{sum(t) / len(t):+.2f} / {sum(w) / len(w):+.2f}; wrong pairs "
                      f"{sum(x['wrong_pairs'] for x in rs)}/{sum(x['pairs'] for x in rs)}; top-1 "
                      f"{sum(x['top1_right'] for x in rs)}/{len(rs)}" if t else "–")
    print("| pooled: mean τ / τw; pairs ordered wrongly of those the accuracy separates; top-1 right | | "
          + " | ".join(pooled) + " |")
    print("\nAgainst validation accuracy (what the study selects on):")
    for r in results:
        cells = [cell(r, p, "tau_val", "weighted_tau_val") for p in preds]
        vals = ", ".join(f"{short(m)} {r['val'][m]:.3f}" for m in r["models"])
        print(f"| {r['set']} | {vals} | " + " | ".join(cells) + " |")
    other = [r for r in results if r.get("metric", "accuracy") != "accuracy"]
    if other:
        print("\nAgainst the test score on the study's metric, where it is not accuracy:")
        for r in other:
            cells = [cell(r, p, "tau_score", "weighted_tau_score") for p in preds]
            vals = ", ".join(f"{short(m)} {r['test_score'][m]:.3f}" for m in r["models"])
            print(f"| {r['set']} ({r['metric']}) | {vals} | " + " | ".join(cells) + " |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--models", default="", help="candidates for every set (default: per modality, below)")
    ap.add_argument("--image-models", default=MODELS["image"], help=f"default {MODELS['image']}")
    ap.add_argument("--text-models", default=MODELS["text"], help=f"default {MODELS['text']}")
    ap.add_argument("--fractions", default="", help="per-set overrides, set=F[,set=F] (defaults: "
                    + ", ".join(f"{k} {v}" for k, v in DEFAULT_FRACTION.items()) + ")")
    ap.add_argument("--out", type=Path, required=True, help="where the rank JSONs and studies go (resumable)")
    ap.add_argument("-j", "--workers", default="1", help="compare's -j (default 1: one cell at a time)")
    ap.add_argument("--only-analyse", action="store_true", help="train nothing: read what DIR holds")
    ap.add_argument("--only-rank", action="store_true", help="rank (where DIR has no rank JSON yet), train nothing")
    args = ap.parse_args()
    fractions = {**DEFAULT_FRACTION, **dict(kv.split("=", 1) for kv in args.fractions.split(",") if kv)}
    args.out.mkdir(parents=True, exist_ok=True)
    summary_path = args.out / "rank_tau.json"
    summary = json.loads(summary_path.read_text()) if summary_path.is_file() else {"sets": {}}
    results = []
    for name in [s.strip() for s in args.sets.split(",") if s.strip()]:
        if name not in SETS:
            raise SystemExit(f"unknown set {name!r}: one of {', '.join(SETS)}")
        listed = args.models or (args.text_models if name in TEXT_SETS else args.image_models)
        models = [m.strip() for m in listed.split(",") if m.strip()]
        data = SHARED / SETS[name]
        if not data.exists():
            raise SystemExit(f"{data} not found (see {SHARED}/README.md)")
        rank_json, study, log = args.out / f"{name}-rank.json", args.out / f"{name}-compare", args.out / f"{name}.log"
        entry = summary["sets"].setdefault(name, {})
        if not args.only_analyse:
            if not rank_json.is_file():
                entry["rank_wall_s"] = round(ajuste("rank", str(data), "--models", ",".join(models),
                                                    "--out", str(rank_json), log=log), 1)
                print(f"{name}: rank {entry['rank_wall_s']:.0f} s", flush=True)
        if not args.only_analyse and not args.only_rank:
            wall = ajuste("compare", str(data), "--models", ",".join(models), "--strategies", "two-stage",
                          "--fractions", fractions[name], "--seeds", "1", "--no-similarity", "-j", args.workers,
                          "--out", str(study), log=log)
            entry.setdefault("compare_wall_s", []).append(round(wall, 1))  # one per (resumed) invocation
            print(f"{name}: compare {wall:.0f} s", flush=True)
        if not rank_json.is_file():
            raise SystemExit(f"{rank_json} not found: run without --only-analyse first")
        rank = json.loads(rank_json.read_text())
        res = analyse(name, rank, test_accuracies(study, models))
        backbones = study / "backbones.json"
        advice = json.loads(backbones.read_text())["advice"] if backbones.is_file() else None
        entry.update(res, fraction=fractions[name], rank_examples=rank["examples"], advice=advice,
                     params_m={r["model"]: r.get("params_m") for r in rank["rows"]})
        results.append(res)
        summary_path.write_text(json.dumps(summary, indent=1, default=str))
    print_tables(results)
    print(f"\nJSON: {summary_path}")


if __name__ == "__main__":
    main()
