"""Linear probe, 10 epochs: ajuste vs a tutorial-style PyTorch loop, and vs one forward pass (the floor).

    python bench/linear_probe.py [--train 400] [--val 100] [--threads 1] [--epochs 10]

Data: clothing-small (../shared/datasets), a stratified subset of its train and validation folders, the same
files for every side. Model: EfficientNet-Lite0 @224 with its offline ImageNet weights.

- ajuste: ``train_run`` with ``strategy.name=linear-probe``, ``train.epochs=10`` (patience 10: all epochs run),
  everything else default — whole call timed, from building the model to the end of training (image
  decoding, the one frozen pass over train and val, 10 head epochs and their validation).
- tutorial: the PyTorch transfer-learning tutorial's "ConvNet as fixed feature extractor": ImageFolder-style
  dataset (every epoch opens, decodes and augments every JPEG: RandomResizedCrop + flip), frozen backbone run in
  every epoch in NCHW fp32, new classifier trained with SGD(lr=1e-3, momentum=0.9) + StepLR(7, 0.1), validation
  every epoch. Batch 32 (the tutorial's 4 would be slower still) and no worker processes (1-thread budget).
- floor: one frozen forward pass over the training images, nothing else — channels_last, bf16 where the CPU has
  native bf16, else fp32 (the table says which). Shown with and without decoding the JPEGs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train", type=int, default=400, help="training images (stratified subset; 0 = all 3068)")
    ap.add_argument("--val", type=int, default=100, help="validation images (0 = all 341)")
    ap.add_argument("--epochs", type=int, default=10)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--skip-tutorial", action="store_true", help="only ajuste and the floor (quick check)")
    args = ap.parse_args()
    C.set_threads(args.threads)

    import torch

    from ajuste.backbones.factory import create_backbone
    from ajuste.config import RunConfig
    from ajuste.data.pipeline import load_image_file, make_preprocessing
    from ajuste.training.execution import autocast, native_bf16
    from ajuste.training.run import train_run

    source = C.dataset("clothing-small")
    cfg = RunConfig().override({"data.source": str(source), "model.name": "efficientnet_lite0",
                                "strategy.name": "linear-probe", "train.epochs": args.epochs,
                                "train.patience": args.epochs, "train.threads": args.threads,
                                "data.batch_size": 32})
    data, splits = C.load_subset(cfg, args)
    n_train, n_val = len(splits["train"]), len(splits["val"])
    print(f"clothing-small: {n_train} train / {n_val} val images, {len(data.classes)} classes, 224 px, "
          f"{args.epochs} epochs")

    rows = []
    # --- ajuste ------------------------------------------------------------------------------------------
    with C.Timer() as t_ajuste:
        res = train_run(cfg=cfg, data=data, splits=splits, progress=False, evaluate_test=False)
    ajuste_acc = res.summary["val_accuracy"]
    del res

    # --- floor: one frozen forward pass over the training images ------------------------------------------
    bb = create_backbone("efficientnet_lite0", num_classes=len(data.classes))
    pre = make_preprocessing(data, bb, image_size=None, max_length=128)
    bf16 = native_bf16()
    with C.Timer() as t_decode:
        imgs = []
        for i in splits["train"]:
            img = load_image_file(data.inputs[i], pre)
            s = pre.image_size
            _, h, w = img.shape
            top, left = (h - s) // 2, (w - s) // 2
            imgs.append(img[:, top:top + s, left:left + s])
    mean = torch.tensor(pre.mean).view(1, 3, 1, 1) * 255
    std = torch.tensor(pre.std).view(1, 3, 1, 1) * 255
    bb.eval().to(memory_format=torch.channels_last)

    def one_pass(model) -> float:
        with C.Timer() as t, torch.no_grad():
            for i in range(0, len(imgs), 64):
                x = ((torch.stack(imgs[i:i + 64]).float() - mean) / std).contiguous(memory_format=torch.channels_last)
                with autocast(torch.bfloat16 if bf16 else None):
                    model.features(x)
        return t.seconds

    forward_s = one_pass(bb)
    probe = torch.randn(2, 3, pre.image_size, pre.image_size).contiguous(memory_format=torch.channels_last)
    folded_s = one_pass(bb.inference_copy(probe))
    del imgs, bb
    floor_kind = "bf16" if bf16 else "fp32"

    # --- tutorial ------------------------------------------------------------------------------------------
    tutorial_s = tutorial_acc = None
    if not args.skip_tutorial:
        tutorial_s, tutorial_acc = tutorial(data, splits, pre, args.epochs)

    floor_full = t_decode.seconds + forward_s
    rows.append(["ajuste linear-probe", t_ajuste.seconds, ajuste_acc, t_ajuste.seconds / forward_s,
                 t_ajuste.seconds / floor_full])
    if tutorial_s is not None:
        rows.append(["tutorial loop (frozen backbone every epoch, NCHW fp32)", tutorial_s, tutorial_acc,
                     tutorial_s / forward_s, tutorial_s / floor_full])
    rows.append([f"floor: one forward pass over train ({floor_kind}, channels_last)", forward_s, "",
                 1.0, forward_s / floor_full])
    rows.append([f"floor + decoding the {n_train} JPEGs once", floor_full, "", floor_full / forward_s, 1.0])
    rows.append(["one forward pass with BatchNorm folded (what ajuste runs frozen)", folded_s, "",
                 folded_s / forward_s, folded_s / floor_full])
    print()
    print(C.table(["", "seconds", "val acc", "× forward pass", "× forward + decode"], rows))
    print()
    print(f"ajuste / one forward pass: {t_ajuste.seconds / forward_s:.2f}× "
          f"(with decoding: {t_ajuste.seconds / floor_full:.2f}×; goal ≤ 1.3×); "
          f"/ one folded forward pass + decoding: {t_ajuste.seconds / (folded_s + t_decode.seconds):.2f}×")
    if tutorial_s is not None:
        print(f"tutorial / ajuste: {tutorial_s / t_ajuste.seconds:.1f}× faster (goal ≥ 8×); "
              f"val accuracy {ajuste_acc:.3f} vs {tutorial_acc:.3f}")


def tutorial(data, splits, pre, epochs: int) -> tuple[float, float]:
    import timm
    import torch

    from ajuste.backbones.zoo import efficientnet_lite_state_dict

    train_tf, val_tf = C.tutorial_transforms(pre.image_size, list(pre.mean), list(pre.std), pre.interpolation)
    paths = list(data.inputs)
    train_ds = C.PathsDataset([paths[i] for i in splits["train"]], [int(data.labels[i]) for i in splits["train"]],
                              train_tf)
    val_ds = C.PathsDataset([paths[i] for i in splits["val"]], [int(data.labels[i]) for i in splits["val"]], val_tf)
    with C.Timer() as t:
        model = timm.create_model("tf_efficientnet_lite0", pretrained=False)
        model.load_state_dict(efficientnet_lite_state_dict(0))
        for p in model.parameters():
            p.requires_grad = False
        model.reset_classifier(len(data.classes))  # new layer: requires_grad=True
        optimizer = torch.optim.SGD(model.get_classifier().parameters(), lr=0.001, momentum=0.9)
        _, best = C.tutorial_epochs(model, optimizer, train_ds, val_ds, epochs)
    return t.seconds, best


if __name__ == "__main__":
    main()
