"""The classical arm on every shared data set: test accuracy, macro-F1 and cost of the floor a study draws.

    python bench/classical_floor.py [--sets sms-spam,trec] [--threads 2]

Each set is trained with `ajuste train DATA --strategy classical` at its default settings, on the same
train/validation/test split as every other run and study of that set (data.split_seed 0), so its test accuracy
stands beside the deep arms' in docs/results.md. Prints a Markdown table.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from _common import SHARED, cpu_description, set_threads

SETS = {
    "hymenoptera": "hymenoptera",
    "clothing-small": "clothing-small",
    "pneumoniamnist": "pneumoniamnist/pneumoniamnist.npz",
    "sms-spam": "sms-spam/SMSSpamCollection",
    "trec": "trec",
    "sst2": "sst2",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default=",".join(SETS))
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    from ajuste.config import RunConfig
    from ajuste.training.run import train_run

    print(f"CPU: {cpu_description()}, {args.threads} threads")
    print("| set | features | n train | test accuracy | test macro-F1 | chosen C | cost s | wall s |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        path = SHARED / SETS[name]
        if not path.exists():
            print(f"| {name} | (absent: {path}) | | | | | | |")
            continue
        cfg = RunConfig().override({"data.source": str(path), "strategy.name": "classical"})
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            s = train_run(cfg=cfg, out=Path(tmp) / "run", progress=False).summary
            chosen = (Path(tmp) / "run" / "metrics.jsonl").read_text().splitlines()[s["best_epoch"] - 1]
        wall = time.perf_counter() - t0
        c = chosen.split('"phase": "C=')[1].split('"')[0]
        print(f"| {name} | {s['model']} | {s['n_train']} | {s['test_accuracy']:.3f} | {s['test_macro_f1']:.3f} | {c} "
              f"| {s['cost_seconds']:.1f} | {wall:.1f} |", flush=True)


if __name__ == "__main__":
    main()
