"""Partial fine-tuning (top 2 layer groups + head) with vs without the frozen-prefix activation cache.

    python bench/partial_cache.py [--train 400] [--val 100] [--epochs 3] [--threads 1] [--unfreeze 2] [--text]
                                  [--model efficientnet_lite0]

Data: clothing-small, stratified subsets of train and validation; EfficientNet-Lite0 @224 (``--model``: another
offline backbone at its own size), offline ImageNet weights; ``data.augment=none`` on both sides (the cache needs a deterministic training transform; with
augmentation only validation is cached). The same ``train_run`` three times: ``train.cache=auto``, ``off``,
and ``off`` with ``train.fold_bn=false`` (the frozen prefix run as the model stands, no fast path at all).
Per-epoch seconds are the loop's own (training + validation of an epoch); the cached run also pays, once,
the frozen pass that fills the cache, shown separately, and the total says whether it paid for itself.

``--text``: the same on sms-spam with MiniLM-L6 (top 2 of 6 transformer layers; activations stored per
token without padding).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=400, help="training images (0 = all 3068)")
    ap.add_argument("--val", type=int, default=100, help="validation images (0 = all 341)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--unfreeze", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--cache-dtype", default="bf16", choices=["bf16", "fp16", "fp32"])
    ap.add_argument("--bf16", default="auto", choices=["auto", "on", "off"], help="train.bf16 on both sides")
    ap.add_argument("--text", action="store_true", help="sms-spam with MiniLM-L6 instead of clothing-small")
    ap.add_argument("--model", default="efficientnet_lite0",
                    help="image backbone, at its own input size (efficientnet_lite1: 240 px, lite2: 260 px)")
    args = ap.parse_args()
    C.set_threads(args.threads)

    from ajuste.config import RunConfig
    from ajuste.io import read_jsonl
    from ajuste.training import cache
    from ajuste.training.run import train_run

    if args.text:
        source, model, what = C.dataset("sms-spam") / "SMSSpamCollection", "minilm-l6", "sms-spam texts, MiniLM-L6"
    else:
        source, model = C.dataset("clothing-small"), args.model
        what = f"clothing-small images, {model}"
    base = RunConfig().override({"data.source": str(source), "model.name": model,
                                 "strategy.name": "partial", "strategy.unfreeze": args.unfreeze,
                                 "train.epochs": args.epochs, "train.patience": args.epochs,
                                 "train.threads": args.threads, "data.augment": "none", "train.min_steps": 0,
                                 "train.cache_dtype": args.cache_dtype, "train.bf16": args.bf16})
    data, splits = C.load_subset(base, args)
    print(f"{len(splits['train'])} train / {len(splits['val'])} val {what}, partial top "
          f"{args.unfreeze} groups, {args.epochs} epochs, cache storage {args.cache_dtype}")

    results = {}
    with tempfile.TemporaryDirectory(prefix="ajuste-bench-partial-") as tmp:
        # "plain": no cache and no BatchNorm folding, the frozen prefix run as the model stands.
        for mode, extra in (("auto", {"train.cache": "auto"}), ("off", {"train.cache": "off"}),
                            ("plain", {"train.cache": "off", "train.fold_bn": False})):
            cache.clear()
            cfg = base.override(extra)
            out = Path(tmp) / mode
            with C.Timer() as t:
                res = train_run(cfg=cfg, out=out, data=data, splits=splits, progress=False, evaluate_test=False)
            hist = read_jsonl(out / "metrics.jsonl")
            epochs = [h["seconds"] for h in hist]
            results[mode] = {"wall": t.seconds, "train": res.summary["train_seconds"], "epochs": epochs,
                             "acc": res.summary["val_accuracy"], "cached": all(h["cached"] for h in hist)}
            del res

    on, off, plain = results["auto"], results["off"], results["plain"]

    def steady(epochs: list[float]) -> float:
        # Epoch 1 of the live run also decodes the JPEGs (the cached run decoded them while filling the cache).
        rest = epochs[1:] or epochs
        return sum(rest) / len(rest)

    per_on, per_off, per_plain = steady(on["epochs"]), steady(off["epochs"]), steady(plain["epochs"])
    rows = [
        ["cache on (auto)", per_on, " ".join(f"{s:.1f}" for s in on["epochs"]), on["wall"], on["acc"],
         on["cached"]],
        ["cache off", per_off, " ".join(f"{s:.1f}" for s in off["epochs"]), off["wall"], off["acc"], off["cached"]],
        ["cache off, train.fold_bn=false", per_plain, " ".join(f"{s:.1f}" for s in plain["epochs"]), plain["wall"],
         plain["acc"], plain["cached"]],
    ]
    print()
    print(C.table(["", "s / epoch (2nd on)", "each epoch (s)", "whole run (s)", "val acc", "trained from cache"],
                  rows))
    print()
    print(f"per epoch: {per_off / per_on:.1f}× faster with the cache (goal ≥ 3×); whole run incl. decoding, the "
          f"cache's one frozen pass and model set-up: {off['wall'] / on['wall']:.2f}×; "
          f"val accuracy {on['acc']:.3f} vs {off['acc']:.3f}")
    print(f"per epoch vs neither cache nor BatchNorm folding: {per_plain / per_on:.1f}× faster "
          f"(folding alone: {per_plain / per_off:.2f}×)")


if __name__ == "__main__":
    main()
