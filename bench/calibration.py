"""Temperature scaling on the shared sets: the fitted T and the test ECE and NLL before and after.

    python bench/calibration.py [--sets sms-spam,trec,pneumoniamnist] [--strategy linear-probe]

Each set is trained at its default settings with the given strategy (train.calibrate true, the default), on the
same split as every other run of that set. T is fitted on the validation split (Guo et al. 2017); the test split
is then scored with and without it. ECE: top-label, 15 equal-width bins. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from _common import SHARED, cpu_description, set_threads
from classical_floor import SETS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sms-spam,trec,pneumoniamnist")
    ap.add_argument("--strategy", default="linear-probe")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    from ajuste.config import RunConfig
    from ajuste.training.run import train_run

    print(f"CPU: {cpu_description()}, {args.threads} threads; strategy {args.strategy}")
    print("| set | model | n val | T | test accuracy | test ECE before → after | test NLL before → after |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        cfg = RunConfig().override({"data.source": str(SHARED / SETS[name]), "strategy.name": args.strategy})
        with tempfile.TemporaryDirectory() as tmp:
            s = train_run(cfg=cfg, out=Path(tmp) / "run", progress=False).summary
        c = s["calibration"]
        print(f"| {name} | {s['model']} | {c['n_val']} | {c['temperature']:.3f} | {s['test_accuracy']:.3f} | "
              f"{c['test_ece_before']:.4f} → {c['test_ece_after']:.4f} | "
              f"{c['test_nll_before']:.4f} → {c['test_nll_after']:.4f} |", flush=True)


if __name__ == "__main__":
    main()
