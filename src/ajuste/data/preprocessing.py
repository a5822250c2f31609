"""What turns a raw input into a model input (resolution, normalisation, crop, text length): saved with a run."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from ajuste.data.sources import LabelledData


@dataclass
class Preprocessing:
    """Everything needed to turn a raw input into a model input; saved in a run directory."""

    modality: str
    image_size: int = 224
    base_size: int = 256  # shorter side before the centre crop (image_size / crop_pct)
    square: bool = False  # arrays (digits, MedMNIST) are resized to a square, not cropped
    mean: tuple[float, ...] = (0.5, 0.5, 0.5)
    std: tuple[float, ...] = (0.5, 0.5, 0.5)
    interpolation: str = "bicubic"
    max_length: int = 128
    text_pair: bool = False  # inputs are (first, second) texts, encoded as the tokenizer's pair

    def to_dict(self) -> dict[str, Any]:
        # text_pair only when set: a single-text run's preprocessing.json (and the cache keys built on it) stay
        # as they were before pairs existed
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()
                if k != "text_pair" or v}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "Preprocessing":
        d = dict(d)
        for k in ("mean", "std"):
            if k in d:
                d[k] = tuple(d[k])
        return cls(**d)


def auto_image_size(data: LabelledData, default: int) -> int:
    """Backbone default for photos; for small arrays (8×8 digits, 28×28 MedMNIST) a smaller input:
    4× upsampling rounded to a multiple of 16, at least 48. Saves 10×+ compute where the extra
    pixels would carry no information."""
    if isinstance(data.inputs, np.ndarray):
        native = max(data.inputs.shape[1], data.inputs.shape[2])
        return int(min(default, max(48, 16 * math.ceil(4 * native / 16))))
    return default


def make_preprocessing(data: LabelledData, backbone: Any, *, image_size: int | None, max_length: int) -> Preprocessing:
    if data.modality == "text":
        limit = backbone.data_config()["max_length"]
        return Preprocessing("text", max_length=min(max_length, limit), text_pair=data.pairs)
    dc = backbone.data_config()
    size = image_size or auto_image_size(data, dc["input_size"])
    square = isinstance(data.inputs, np.ndarray)
    base = size if square else int(math.floor(size / dc["crop_pct"]))
    return Preprocessing("image", image_size=size, base_size=base, square=square, mean=tuple(dc["mean"]),
                         std=tuple(dc["std"]), interpolation=dc["interpolation"])
