"""What the larger offline image backbones cost: ajuste's end-to-end training and frozen passes, Lite0 vs Lite1/2.

    python bench/backbone_cost.py [--train 256] [--val 64] [--epochs 2] [--threads 1] [--models efficientnet_lite0,...]

Data: clothing-small, stratified subsets, each backbone at its own input size (224 / 240 / 260 px). For each
backbone, ``train_run`` with ``strategy.name=full`` and the defaults otherwise (light augmentation, batch 32,
frozen BatchNorm folded, decoded images kept in memory), then a ``linear-probe`` run whose cost is the frozen
pass over the training and validation images. Every backbone runs back to back in this process, and the ratios
are to the first one (Lite0), so a noisy machine moves all of them together.

Reported: training images per second of the end-to-end epochs after the first (the first also decodes the
images), and the linear probe's wall time (its frozen pass plus seconds of head training).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=256, help="training images (0 = all 3068)")
    ap.add_argument("--val", type=int, default=64, help="validation images (0 = all 341)")
    ap.add_argument("--epochs", type=int, default=2, help="end-to-end epochs (≥ 2: the first decodes images)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--models", default="efficientnet_lite0,efficientnet_lite1,efficientnet_lite2",
                    help="the first is the reference")
    args = ap.parse_args()
    if args.epochs < 2:
        ap.error("--epochs must be ≥ 2: the first epoch also decodes the images")
    C.set_threads(args.threads)

    from ajuste.config import RunConfig
    from ajuste.io import read_jsonl
    from ajuste.training.run import train_run

    models = [m.strip() for m in args.models.split(",") if m.strip()]
    base = RunConfig().override({"data.source": str(C.dataset("clothing-small")), "train.threads": args.threads,
                                 "train.min_steps": 0, "data.batch_size": 32})
    data, splits = C.load_subset(base, args)
    n_train, n_val = len(splits["train"]), len(splits["val"])
    print(f"clothing-small: {n_train} train / {n_val} val images; full fine-tuning {args.epochs} epochs, batch 32; "
          f"then a linear probe")

    rows, ref = [], None
    for model in models:
        cfg = base.override({"model.name": model})
        with tempfile.TemporaryDirectory(prefix="ajuste-bench-backbone-") as tmp:
            full = train_run(cfg=cfg.override({"strategy.name": "full", "train.epochs": args.epochs,
                                               "train.patience": args.epochs, "data.augment": "light"}),
                             out=Path(tmp) / "full", data=data, splits=splits, progress=False, evaluate_test=False)
            size = full.pipeline.pre.image_size
            steady = [h["seconds"] for h in read_jsonl(Path(tmp) / "full" / "metrics.jsonl")][1:]
            img_s = n_train * len(steady) / sum(steady)
            del full
            t0 = time.perf_counter()
            train_run(cfg=cfg.override({"strategy.name": "linear-probe"}), out=Path(tmp) / "probe", data=data,
                      splits=splits, progress=False, evaluate_test=False)
            probe_s = time.perf_counter() - t0
        ref = ref or (img_s, probe_s)
        rows.append([model, size, img_s, ref[0] / img_s, probe_s, probe_s / ref[1]])
        print(f"  {model}: {img_s:.2f} img/s end to end, linear probe {probe_s:.1f} s", flush=True)
    print()
    print(C.table(["backbone", "px", "end-to-end img/s", "cost × first", "linear probe s", "× first"], rows))


if __name__ == "__main__":
    main()
