"""The ``.npz`` source: arrays saved with numpy.savez (``x``/``y``, ``images``/``labels``, keras-style
``x_train``/``y_train``... or MedMNIST-style ``{train,val,test}_images`` + ``_labels``), checked and turned into
uint8 images and string labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from ajuste.data.sources.common import _SPLIT_ORDER, _listing
from ajuste.data.sources.records import _Raw
from ajuste.errors import DataError

_NPZ_SPLIT_KEYS = {
    # MedMNIST style
    "train_images": ("train", "train_labels"),
    "val_images": ("val", "val_labels"),
    "test_images": ("test", "test_labels"),
    # keras.datasets style (mnist.npz)
    "x_train": ("train", "y_train"),
    "x_val": ("val", "y_val"),
    "x_test": ("test", "y_test"),
}
_NPZ_PLAIN_KEYS = (("x", "y"), ("images", "labels"), ("X", "y"), ("X", "Y"))


def _load_npz(path: Path) -> _Raw:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # .npz is a zip archive; np.load would otherwise try other formats
        raise DataError(f"{path} is not a .npz (zip) archive; save the arrays with numpy.savez(path, x=..., y=...)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"cannot read {path} as a .npz archive ({type(exc).__name__}: {exc}); re-save it with numpy.savez"
        ) from None
    with archive:
        keys = set(archive.files)
        parts: list[tuple[str, str, str]] = []  # (split, image key, label key)
        for xk, (split, yk) in _NPZ_SPLIT_KEYS.items():
            if xk in keys:
                if yk not in keys:
                    raise DataError(f"{path} has '{xk}' but no '{yk}'; save the labels under '{yk}'")
                parts.append((split, xk, yk))
        if parts and not any(s == "train" for s, _, _ in parts):
            names = ", ".join(k for _, k, _ in parts)
            raise DataError(f"{path} has {names} but no train split; add train_images/train_labels")
        if not parts:
            for xk, yk in _NPZ_PLAIN_KEYS:
                if xk in keys and yk in keys:
                    parts.append(("", xk, yk))
                    break
        if not parts:
            raise DataError(
                f"{path} has arrays {_listing(sorted(keys), limit=10)}; expected x/y, images/labels, "
                "or train_images/train_labels (+ val_, test_); rename the arrays with numpy.savez"
            )
        xs, ys, warnings = [], [], []
        for _, xk, yk in parts:
            try:
                x, y = archive[xk], archive[yk]
            except ValueError as exc:  # object arrays need pickle, which we refuse for safety
                raise DataError(
                    f"cannot load '{xk}'/'{yk}' from {path} ({exc}); save plain numeric arrays, not objects"
                ) from None
            xs.append(_npz_images(x, path, xk, warnings))
            ys.append(_npz_labels(y, path, yk, len(xs[-1])))
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(
            f"image shapes differ between splits in {path}: "
            + ", ".join(f"{xk} {x.shape[1:]}" for (_, xk, _), x in zip(parts, xs))
            + "; resize them to one size"
        )
    x_all = np.concatenate(xs) if len(xs) > 1 else xs[0]
    labels = [lab for y in ys for lab in y]
    splits: dict[str, np.ndarray] = {}
    start = 0
    for (split, _, _), y in zip(parts, ys):
        if split:
            splits[split] = np.arange(start, start + len(y), dtype=np.int64)
        start += len(y)
    splits = {k: splits[k] for k in _SPLIT_ORDER if k in splits}
    return _Raw(
        modality="image",
        inputs=x_all,
        labels=labels,
        splits=splits,
        where=f"in {path}",
        describe=f"npz {path}",
        details=f"{'x'.join(map(str, x_all.shape[1:]))} images",
        unit="images",
        warnings=warnings,
    )


def _npz_images(x: np.ndarray, path: Path, key: str, warnings: list[str]) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]  # (N,H,W,1) -> (N,H,W)
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise DataError(
            f"'{key}' in {path} has shape {x.shape}; expected images (N,H,W), (N,H,W,1) or (N,H,W,3)"
        )
    if x.dtype == np.uint8:
        return x
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' in {path} has values {lo:g}..{hi:g}; expected uint8 pixels 0..255")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all() and lo >= 0:
        if hi <= 1.0:
            warnings.append(f"'{key}' in {path} is {x.dtype} in 0..1; scaled to uint8 0..255")
            return np.rint(x * 255.0).astype(np.uint8)
        if hi <= 255.0:
            warnings.append(f"'{key}' in {path} is {x.dtype} in 0..255; rounded to uint8")
            return np.rint(x).astype(np.uint8)
    raise DataError(f"'{key}' in {path} is {x.dtype} with values {lo:g}..{hi:g}; save images as uint8 0..255")


def _npz_labels(y: np.ndarray, path: Path, key: str, n: int) -> list[str]:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # MedMNIST stores labels as (N, 1)
    if y.ndim != 1:
        raise DataError(
            f"'{key}' in {path} has shape {y.shape}; expected one label per image (N,) — "
            "multi-label or one-hot labels are not supported (use argmax for one-hot)"
        )
    if len(y) != n:
        raise DataError(f"'{key}' in {path} has {len(y)} labels for {n} images; they must match")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return [str(int(v)) for v in y]
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DataError(f"'{key}' in {path} contains NaN/inf labels; remove those examples")
        return [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in y]
    if y.dtype.kind in "US":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()]
    raise DataError(f"'{key}' in {path} has dtype {y.dtype}; save labels as integers or strings")
