"""Resident memory over the trials of one `ajuste tune` process (optuna #1178/#4934: memory growing per trial).

    python bench/tune_memory.py [--trials 12] [--model efficientnet_lite0] [--no-release]

Each trial records the process RSS right after it ended (user attr ``rss_mb``); this prints them and the
growth from the 3rd trial to the last (the first trials pay one-off costs: imports, allocator pools).
``--no-release`` turns off ajuste's per-trial gc + malloc_trim to show what they buy.
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import time
from pathlib import Path

SPACE = """
extends: none
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  data.batch_size: [16, 32, 64]
  model.dropout: {type: float, low: 0.0, high: 0.5}
"""


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--trials", type=int, default=12)
    ap.add_argument("--model", default="efficientnet_lite0")
    ap.add_argument("--image-size", type=int, default=64)
    ap.add_argument("--fraction", type=float, default=0.1)
    ap.add_argument("--no-release", action="store_true")
    args = ap.parse_args()

    import optuna

    from ajuste.config import RunConfig
    from ajuste.search import objective
    from ajuste.search.runner import tune

    if args.no_release:
        objective.release_memory = lambda: None
    out = Path(tempfile.mkdtemp(prefix="ajuste-tune-mem-"))
    try:
        (out / "space.yaml").write_text(SPACE)
        cfg = RunConfig().override({"data.source": "digits", "model.name": args.model, "strategy.name": "full",
                                    "data.image_size": args.image_size, "data.fraction": args.fraction,
                                    "train.epochs": 1, "train.threads": 1, "train.min_steps": 0})
        t0 = time.perf_counter()
        res = tune(cfg=cfg, out=out / "t", trials=args.trials, sampler="random", pruner="none",
                   space=out / "space.yaml", report=False)
        seconds = time.perf_counter() - t0
        study = optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{out / 't' / 'study.db'}")
        rss = [t.user_attrs["rss_mb"] for t in study.trials]
        print(f"{args.model} @{args.image_size}px, fraction {args.fraction}, {args.trials} trials, "
              f"release={'off' if args.no_release else 'on'}, {seconds:.0f}s")
        print("RSS after each trial (MB):", " ".join(f"{r:.0f}" for r in rss))
        if len(rss) >= 4:
            print(f"growth trial 3 → {len(rss)}: {rss[-1] - rss[2]:+.1f} MB "
                  f"({(rss[-1] - rss[2]) / (len(rss) - 3):+.2f} MB/trial); max {max(rss):.0f} MB")
    finally:
        shutil.rmtree(out, ignore_errors=True)


if __name__ == "__main__":
    main()
