"""Full fine-tuning of EfficientNet-Lite0 @224: ajuste vs the tutorial loop, training images per second.

    python bench/full_ft.py [--train 256] [--val 64] [--epochs 2] [--threads 1] [--with-bf16]

Data: clothing-small, stratified subsets; offline ImageNet weights on both sides; batch 32; light augmentation
on both sides (RandomResizedCrop + flip).

- ajuste: ``train_run`` with ``strategy.name=full``, defaults otherwise (channels_last for a convnet, decoded
  images kept in memory, frozen BatchNorm statistics folded into the convolutions while training, bf16 only
  where native); run a second time with ``train.fold_bn=false`` to show the folding's share.
- tutorial: the PyTorch transfer-learning tutorial's "finetuning the ConvNet" loop: ImageFolder-style dataset
  (every epoch decodes every JPEG), NCHW fp32, ``model.train()``, SGD(lr=1e-3, momentum=0.9) + StepLR, no
  worker processes (1-thread budget).

An epoch is timed the same way on both sides: training on every training image plus validation on the
validation images; images/s = training images / epoch seconds. Epoch 1 of ajuste includes decoding the
images it then keeps; later epochs are the steady state.
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
    ap.add_argument("--train", type=int, default=256, help="training images (0 = all 3068)")
    ap.add_argument("--val", type=int, default=64, help="validation images (0 = all 341)")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--with-bf16", action="store_true",
                    help="also run ajuste with train.bf16=on (bf16 autocast training, where the CPU has native bf16)")
    args = ap.parse_args()
    C.set_threads(args.threads)

    from ajuste.config import RunConfig
    from ajuste.io import read_jsonl
    from ajuste.training.run import train_run

    source = C.dataset("clothing-small")
    cfg = RunConfig().override({"data.source": str(source), "model.name": "efficientnet_lite0",
                                "strategy.name": "full", "train.epochs": args.epochs, "train.patience": args.epochs,
                                "train.threads": args.threads, "train.min_steps": 0, "data.batch_size": 32,
                                "data.augment": "light"})
    data, splits = C.load_subset(cfg, args)
    n_train = len(splits["train"])
    print(f"clothing-small: {n_train} train / {len(splits['val'])} val images, 224 px, full fine-tuning, "
          f"{args.epochs} epochs, batch 32")

    # ajuste as shipped, then with the training-time BatchNorm folding off: its share of the speed-up.
    runs = {}
    variants = [("ajuste full", {}), ("ajuste full, train.fold_bn=false", {"train.fold_bn": False})]
    if args.with_bf16:
        variants.append(("ajuste full, train.bf16=on", {"train.bf16": "on"}))
    for name, extra in variants:
        with tempfile.TemporaryDirectory(prefix="ajuste-bench-full-") as tmp:
            res = train_run(cfg=cfg.override(extra), out=Path(tmp) / "run", data=data, splits=splits,
                            progress=False, evaluate_test=False)
            runs[name] = ([h["seconds"] for h in read_jsonl(Path(tmp) / "run" / "metrics.jsonl")],
                          res.summary["val_accuracy"])
            pre = res.pipeline.pre
            del res
    ajuste_epochs, ajuste_acc = runs["ajuste full"]
    tut_epochs, tut_acc = tutorial(data, splits, pre, args.epochs)
    runs["tutorial loop (NCHW fp32)"] = (tut_epochs, tut_acc)

    rows = []
    for name, (epochs, acc) in runs.items():
        rows.append([name] + [n_train / s for s in epochs] + [acc])
    print()
    print(C.table([""] + [f"img/s epoch {i + 1}" for i in range(args.epochs)] + ["val acc"], rows))
    last = args.epochs - 1
    print()
    print(f"ajuste / tutorial, images/s: epoch 1 {tut_epochs[0] / ajuste_epochs[0]:.2f}×, "
          f"last epoch {tut_epochs[last] / ajuste_epochs[last]:.2f}×, all epochs "
          f"{sum(tut_epochs) / sum(ajuste_epochs):.2f}× (goal ≥ 1.6×); val accuracy {ajuste_acc:.3f} vs {tut_acc:.3f}")
    unfolded = runs["ajuste full, train.fold_bn=false"][0]
    print(f"BatchNorm folding while training: {sum(unfolded) / sum(ajuste_epochs):.2f}× over all epochs")
    if args.with_bf16:
        bf16 = runs["ajuste full, train.bf16=on"][0]
        print(f"bf16 autocast training vs ajuste's default: {sum(ajuste_epochs) / sum(bf16):.2f}× the images/s")


def tutorial(data, splits, pre, epochs: int) -> tuple[list[float], float]:
    import timm
    import torch

    from ajuste.backbones.zoo import efficientnet_lite_state_dict

    train_tf, val_tf = C.tutorial_transforms(pre.image_size, list(pre.mean), list(pre.std), pre.interpolation)
    paths = list(data.inputs)
    train_ds = C.PathsDataset([paths[i] for i in splits["train"]], [int(data.labels[i]) for i in splits["train"]],
                              train_tf)
    val_ds = C.PathsDataset([paths[i] for i in splits["val"]], [int(data.labels[i]) for i in splits["val"]], val_tf)
    model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
    model.load_state_dict(efficientnet_lite_state_dict(0))
    model.reset_classifier(len(data.classes))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.001, momentum=0.9)
    return C.tutorial_epochs(model, optimizer, train_ds, val_ds, epochs)


if __name__ == "__main__":
    main()
