"""The plain linear probe of issue 8's table, and what frozen features can reach without fine-tuning.

    python bench/frozen_probe.py [--data hymenoptera] [--eval val] [--sizes 224,256,288,320] [--views 5]

EfficientNet-Lite0's pooled features (offline ImageNet weights, frozen, bf16 autocast where the CPU has native
bf16) of an image folder's training split, at several input resolutions (the tutorials' evaluation transform:
resize to size / 0.875, centre crop), plus horizontally flipped copies and ``--views`` RandomResizedCrop+flip views of each training image.
Each variant fits a standardised logistic regression whose C is chosen by 5-fold cross-validation on the
training split alone (folds group an image with its flipped and augmented copies, so no image is on both sides
of a fold), then scores the ``--eval`` split once. The variant to prefer is the one the cross-validation picks:
the evaluation column is printed to show what each would have scored, not to choose among them.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common as C  # noqa: E402

CS = (0.001, 0.003, 0.01, 0.03, 0.1, 0.3, 1.0)


def folder_items(root: Path, split: str, classes: list[str]) -> list[tuple[Path, int]]:
    return [(f, ci) for ci, c in enumerate(classes) for f in sorted((root / split / c).iterdir()) if f.is_file()]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--data", default="hymenoptera", help="an image folder set under the shared data sets")
    ap.add_argument("--train-split", default="train")
    ap.add_argument("--eval", default="val", help="split scored once (hymenoptera: val is the test set)")
    ap.add_argument("--sizes", default="224,256,288,320")
    ap.add_argument("--views", type=int, default=5, help="augmented training views (at the first size)")
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args()
    C.set_threads(args.threads)

    import numpy as np
    import torch
    from PIL import Image
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from ajuste.backbones.factory import create_backbone
    from ajuste.training.execution import native_bf16

    root = C.dataset(args.data)
    classes = sorted(p.name for p in (root / args.train_split).iterdir() if p.is_dir())
    train, test = folder_items(root, args.train_split, classes), folder_items(root, args.eval, classes)
    bb = create_backbone("efficientnet_lite0", num_classes=len(classes)).eval()
    dc = bb.data_config()
    images = {f: Image.open(f).convert("RGB") for f, _ in train + test}

    @torch.inference_mode()
    def features(items: list, tf, flip: bool = False) -> np.ndarray:
        out = []
        for i in range(0, len(items), 32):
            x = torch.stack([tf(images[f]) for f, _ in items[i:i + 32]])
            x = (x.flip(-1) if flip else x).contiguous(memory_format=torch.channels_last)
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=native_bf16()):
                out.append(bb.features(x).float())
        return torch.cat(out).numpy()

    y_tr, y_te = np.array([c for _, c in train]), np.array([c for _, c in test])
    n = len(train)
    fold_of = np.random.RandomState(0).permutation(n) % 5  # one fold per image, shared by its copies

    def model(c: float):
        return make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=5000))

    def probe(x_tr: np.ndarray, tests: list[np.ndarray]) -> tuple[float, float, float]:
        copies = len(x_tr) // n
        y, img = np.tile(y_tr, copies), np.tile(np.arange(n), copies)
        cv = {}
        for c in CS:
            accs = []
            for k in range(5):
                fit, held = fold_of[img] != k, (fold_of[img] == k) & (np.arange(len(y)) < n)
                accs.append((model(c).fit(x_tr[fit], y[fit]).predict(x_tr[held]) == y[held]).mean())
            cv[c] = float(np.mean(accs))
        best = max(cv, key=lambda c: (cv[c], -c))  # ties: the stronger regularisation
        m = model(best).fit(x_tr, y)
        p = np.mean([m.predict_proba(t) for t in tests], axis=0)
        return best, cv[best], float((p.argmax(1) == y_te).mean())

    print(f"{C.cpu_description()}; {args.data}: {n} training images, {len(test)} in {args.eval!r}; "
          f"{args.threads} threads")
    rows = []
    sizes = [int(s) for s in args.sizes.split(",")]
    for size in sizes:
        aug, centre = C.tutorial_transforms(size, dc["mean"], dc["std"], dc["interpolation"])
        t0 = time.perf_counter()
        tr, trf = features(train, centre), features(train, centre, flip=True)
        te, tef = features(test, centre), features(test, centre, flip=True)
        print(f"  features at {size} px: {time.perf_counter() - t0:.0f} s", flush=True)
        rows.append((f"{size} px", *probe(tr, [te])))
        rows.append((f"{size} px, flip TTA", *probe(tr, [te, tef])))
        rows.append((f"{size} px, + flipped train, flip TTA", *probe(np.concatenate([tr, trf]), [te, tef])))
        if size == sizes[0] and args.views:
            torch.manual_seed(0)
            views = [features(train, aug) for _ in range(args.views)]
            rows.append((f"{size} px, + flipped + {args.views} augmented views, flip TTA",
                         *probe(np.concatenate([tr, trf, *views]), [te, tef])))
    pick = max(rows, key=lambda r: r[2])
    print()
    print(C.table(["variant", "C (by CV)", "5-fold CV acc (train)", f"{args.eval} acc"],
                  [[name + (" ← CV's pick" if name == pick[0] else ""), f"{c:g}", cv, acc]
                   for name, c, cv, acc in rows]))


if __name__ == "__main__":
    main()
