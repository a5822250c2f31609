"""The built-in ``"digits"`` source: scikit-learn's 8x8 digits, the default that needs no files."""

from __future__ import annotations

import gzip
import importlib.util
from pathlib import Path

import numpy as np

from ajuste.data.sources.records import _Raw


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, (N, 8, 8) values 0..16 and (N,) targets: read from the CSV that ships
    inside scikit-learn without importing it (3.3 s here, paid again by every study worker process);
    through ``load_digits`` if the file is not where scikit-learn keeps it."""
    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                table = np.loadtxt(fh, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _load_digits() -> _Raw:
    images, target = _digits_arrays()
    # images are float 0..16 (N, 8, 8); stretch to the uint8 0..255 range every image pipeline expects
    x = np.rint(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return _Raw(
        modality="image",
        inputs=x,
        labels=[str(int(t)) for t in target],
        splits={},
        where="in the built-in digits",
        describe="built-in digits",
        details="scikit-learn load_digits, 8x8 greyscale",
        unit="images",
    )
