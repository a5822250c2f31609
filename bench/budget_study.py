"""What a budget costs in accuracy: the default study without a budget, then with a third of its time.

    python bench/budget_study.py --sets pneumoniamnist,sms-spam [--out bench-out] [--share 0.333] [--phase both]

`--phase full` runs only the studies without a budget; `--phase budget` reuses them (their spent.json) and runs
only the budgeted ones, so a change to the budgeted path can be measured against the same unbudgeted studies.

For each set: `ajuste compare DATA` (every default arm, fraction and seed, the domain-similarity measurement
included), its wall time as the study counted it (spent.json); then `ajuste compare DATA --budget T/3` in a fresh
directory. Prints the model each study handed over (arm, fraction, test accuracy) and the gap to the unbudgeted
study's best; the issue's goal is a gap under 1 point. Both studies run one after the other on the same machine,
at its default workers (one cell per core). Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from _common import SHARED, cpu_description
from classical_floor import SETS


def _handed(study) -> dict:
    advice = study.advice
    rec = next(r for r in study.results if r["cell"] == advice["best_cell"])
    return {"cell": rec["cell"], "test": rec["test_accuracy"], "stopped_early": bool(rec.get("stopped_early"))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="pneumoniamnist,sms-spam")
    ap.add_argument("--out", default="bench-out/budget")
    ap.add_argument("--share", type=float, default=1 / 3)
    ap.add_argument("--phase", choices=("both", "full", "budget"), default="both")
    args = ap.parse_args()
    import ajuste

    print(f"CPU: {cpu_description()}")
    print("| set | study without budget | its handed-over model (test) | budget | budgeted study | its handed-over "
          "model (test) | cells run / stopped early | gap |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        data = SHARED / SETS[name]
        full_dir, budget_dir = Path(args.out) / f"{name}-full", Path(args.out) / f"{name}-budget"
        if args.phase == "budget":
            full, wall = ajuste.Study(full_dir), float("nan")
        else:
            t0 = time.perf_counter()
            full = ajuste.compare(data, out=full_dir, progress=False)
            wall = time.perf_counter() - t0
        spent = json.loads((full_dir / "spent.json").read_text())["seconds"]
        budget = round(args.share * spent)
        if args.phase == "full":
            a = _handed(full)
            print(f"| {name} | {spent:.0f} s ({wall:.0f} s wall) | {a['cell']} ({a['test']:.3f}) | {budget} s | "
                  "| | | |", flush=True)
            continue
        t0 = time.perf_counter()
        cut = ajuste.compare(data, out=budget_dir, budget=budget, progress=False)
        cut_wall = time.perf_counter() - t0
        cut_spent = json.loads((budget_dir / "spent.json").read_text())["seconds"]
        a, b = _handed(full), _handed(cut)
        early = sum(bool(r.get("stopped_early")) for r in cut.results)
        print(f"| {name} | {spent:.0f} s ({wall:.0f} s wall) | {a['cell']} ({a['test']:.3f}) | {budget} s | "
              f"{cut_spent:.0f} s ({cut_wall:.0f} s wall) | {b['cell']}{' (stopped early)' if b['stopped_early'] else ''}"
              f" ({b['test']:.3f}) | {len(list(cut.results))} / {early} | {100 * (b['test'] - a['test']):+.1f} points |",
              flush=True)


if __name__ == "__main__":
    main()
