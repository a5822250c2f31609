"""Imbalanced classes: macro-F1 and per-class recall without and with train.class_balance, over seeds.

    python bench/class_balance.py [--sets sms-spam,clothing-small] [--strategy linear-probe] [--seeds 3]

Each set is trained at its default settings (the default backbone, train.monitor auto, which is macro-F1 on
both sets) with train.class_balance none, weights and sampler, seeds 0..N-1, on the same split. The runs of a
set share one activation-cache directory, so the frozen passes are computed once. Prints a Markdown table:
test macro-F1, accuracy and the recall of the rarest and commonest training class (mean ± std over seeds).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from _common import SHARED, cpu_description, set_threads
from classical_floor import SETS

BALANCES = ("none", "weights", "sampler")


def _fmt(values: list[float]) -> str:
    return f"{np.mean(values):.3f} ± {np.std(values, ddof=1):.3f}" if len(values) > 1 else f"{values[0]:.3f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="sms-spam,clothing-small")
    ap.add_argument("--strategy", default="linear-probe")
    ap.add_argument("--seeds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    set_threads(args.threads)
    from ajuste.config import RunConfig
    from ajuste.training.run import prepare_data, train_run

    print(f"CPU: {cpu_description()}, {args.threads} threads; strategy {args.strategy}, {args.seeds} seeds")
    print("| set | class_balance | metric | test macro-F1 | test accuracy | recall, rarest class | "
          "recall, commonest class | seconds a run |")
    print("|---|---|---|---|---|---|---|---|")
    for name in args.sets.split(","):
        path = SHARED / SETS[name]
        base = RunConfig().override({"data.source": str(path), "strategy.name": args.strategy})
        data, splits = prepare_data(base)
        counts = np.bincount(data.labels[splits["train"]], minlength=len(data.classes))
        rare, common = int(counts.argmin()), int(counts.argmax())
        with tempfile.TemporaryDirectory() as tmp:
            for balance in BALANCES:
                rows = []
                for seed in range(args.seeds):
                    cfg = base.override({"train.class_balance": balance, "train.seed": seed,
                                         "train.cache_dir": str(Path(tmp) / "cache")})
                    s = train_run(cfg=cfg, out=Path(tmp) / f"{balance}-{seed}", data=data, splits=splits,
                                  progress=False).summary
                    recall = [c["recall"] for c in s["test"]["per_class"]]
                    rows.append((s["test_macro_f1"], s["test_accuracy"], recall[rare], recall[common],
                                 s["cost_seconds"], s["metric"]))
                cols = list(zip(*rows))
                print(f"| {name} | {balance} | {rows[0][5]} | {_fmt(cols[0])} | {_fmt(cols[1])} | "
                      f"{_fmt(cols[2])} ({data.classes[rare]}, {counts[rare]} train) | "
                      f"{_fmt(cols[3])} ({data.classes[common]}, {counts[common]} train) | "
                      f"{np.mean(cols[4]):.0f} |", flush=True)


if __name__ == "__main__":
    main()
