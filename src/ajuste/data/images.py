"""Images: decoded and resized once to a base resolution and kept in memory as uint8 (C, H, W) tensors while
they fit, so epochs only pay for augmentation and normalisation."""

from __future__ import annotations

import sys
import warnings
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torch.utils.data import Dataset
from torchvision.transforms import InterpolationMode, v2

from ajuste.data.batches import target
from ajuste.data.preprocessing import Preprocessing
from ajuste.data.sources import LabelledData
from ajuste.errors import DataError

_INTERP = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


def _interp(name: str):
    return getattr(InterpolationMode, _INTERP.get(name, "BILINEAR"))


def load_image_file(path: Any, pre: Preprocessing) -> torch.Tensor:
    """Decode one image file (or take a PIL image in memory) to uint8 (3, H, W) with the shorter side at
    ``pre.base_size``.

    Upright (EXIF orientation applied), first frame of an animation, any PIL mode (16-bit, CMYK, palette) to RGB.
    """
    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that (then decodes hundreds of MB): refuse instead
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            if isinstance(path, Image.Image):
                im = to_rgb(ImageOps.exif_transpose(path))
            else:
                with Image.open(path) as im:
                    im = to_rgb(ImageOps.exif_transpose(im))
        w, h = im.size
        scale = pre.base_size / min(w, h)
        size = (max(pre.base_size, round(w * scale)), max(pre.base_size, round(h * scale)))
        resample = getattr(Image.Resampling, _INTERP.get(pre.interpolation, "BILINEAR"))
        im = im.resize(size, resample=resample, reducing_gap=3.0)
        arr = np.asarray(im, dtype=np.uint8)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise DataError(f"{path}: too many pixels (over PIL's decompression-bomb limit of "
                        f"{Image.MAX_IMAGE_PIXELS / 1e6:.0f} M); downscale the image") from None
    except Exception as exc:  # noqa: BLE001 - PIL raises OSError, SyntaxError, struct.error... by codec
        msg = " ".join(str(exc).split())[:120]
        raise DataError(f"{path}: cannot read image ({type(exc).__name__}: {msg}); remove or replace the file") from None
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).contiguous()


def to_rgb(im):
    """Any PIL image → 8-bit RGB, keeping the tones PIL's own ``convert("RGB")`` loses.

    - 16/32-bit integer greys (modes I;16*, I): ``convert`` clips every value above 255 to white; scale instead
      (16-bit 0..65535 → 0..255; other ranges stretched min..max).
    - float (F): 0..1 → 0..255, else stretched.
    - palette with per-entry transparency: via RGBA (``convert("RGB")`` warns on that path).
    """
    if im.mode.startswith("I") or im.mode == "F":
        a = np.asarray(im).astype(np.float64)
        lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
        if im.mode == "F" and lo >= 0 and hi <= 1:
            a = a * 255.0
        elif im.mode.startswith("I;16") or (lo >= 0 and 255 < hi <= 65535):
            a = a / 257.0
        elif lo < 0 or hi > 255:
            a = (a - lo) * (255.0 / max(hi - lo, 1e-12))
        return Image.fromarray(np.rint(a).clip(0, 255).astype(np.uint8), "L").convert("RGB")
    if im.mode == "P" and "transparency" in im.info:
        im = im.convert("RGBA")
    return im.convert("RGB")


def resize_array_images(images: np.ndarray, pre: Preprocessing) -> torch.Tensor:
    """uint8 (N, H, W[, C]) → uint8 (N, C, S, S), C ∈ {1, 3}, resized in chunks to bound memory."""
    x = torch.from_numpy(np.ascontiguousarray(images))
    x = x.unsqueeze(1) if x.ndim == 3 else x.permute(0, 3, 1, 2)
    mode = "bicubic" if pre.interpolation == "bicubic" else "bilinear"
    out = torch.empty((x.shape[0], x.shape[1], pre.image_size, pre.image_size), dtype=torch.uint8)
    for i in range(0, x.shape[0], 512):
        chunk = F.interpolate(x[i:i + 512].float(), size=(pre.image_size, pre.image_size), mode=mode,
                              align_corners=False)
        out[i:i + 512] = chunk.round().clamp(0, 255).to(torch.uint8)
    return out


def available_memory() -> int | None:
    """Bytes the kernel can give without swapping (MemAvailable in /proc/meminfo); None where unknown."""
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Share of available memory the decoded-image cache may take; the rest is for the model, activations and the OS.
CACHE_MEMORY_SHARE = 0.5


def _notice(message: str) -> None:
    print(f"note: {message}", file=sys.stderr)


class ImageStore:
    """Decoded, resized uint8 images keyed by index into ``data``; decoded at most once while they fit.

    Before caching, the decoded size of all files is estimated (3 × base² bytes each, ×4/3 for non-square
    photos); when it exceeds ``CACHE_MEMORY_SHARE`` of available memory, only that much is cached and the
    rest is decoded again in every batch, with a one-line notice (a slower run instead of a thrashing machine).
    """

    def __init__(self, data: LabelledData, pre: Preprocessing, *, notice: Any = _notice) -> None:
        self.data = data
        self.pre = pre
        self._cache: dict[int, torch.Tensor] = {}
        self._array: torch.Tensor | None = None
        self.cache_limit: int | None = None  # bytes; None = cache everything
        self._cached_bytes = 0
        if isinstance(data.inputs, np.ndarray):
            self._array = resize_array_images(data.inputs, pre)
            return
        need = int(len(data.inputs) * 3 * pre.base_size * pre.base_size * 4 / 3)
        avail = available_memory()
        if avail is not None and need > CACHE_MEMORY_SHARE * avail:
            self.cache_limit = int(CACHE_MEMORY_SHARE * avail)
            notice(f"decoded images would take ~{need / 2**30:.1f} GiB, over half the {avail / 2**30:.1f} GiB of "
                   f"available memory: caching {self.cache_limit / 2**30:.1f} GiB, decoding the rest in every "
                   "batch (slower; a smaller data.image_size caches more)")

    def keep_nothing(self) -> None:
        """Decode every image on every access (train.image_memory=off); arrays stay (they are the source)."""
        self.cache_limit = 0
        self._cache.clear()
        self._cached_bytes = 0

    def __getitem__(self, i: int) -> torch.Tensor:
        if self._array is not None:
            return self._array[i]
        img = self._cache.get(i)
        if img is None:
            img = load_image_file(self.data.inputs[i], self.pre)
            size = img.numel() * img.element_size()
            if self.cache_limit is None or self._cached_bytes + size <= self.cache_limit:
                self._cache[i] = img
                self._cached_bytes += size
        return img


def build_augment(level: str, pre: Preprocessing, *, hflip: bool):
    """Training transform on uint8 (C, H, W) → uint8 (C, S, S); None means eval transform only."""
    if level == "none":
        return None
    size = pre.image_size
    interp = _interp(pre.interpolation)
    if level == "light":
        ops = [v2.RandomResizedCrop(size, scale=(0.7, 1.0), ratio=(0.8, 1.25), interpolation=interp, antialias=True)]
        if hflip:
            ops.append(v2.RandomHorizontalFlip())
        ops.append(v2.ColorJitter(brightness=0.2, contrast=0.2))
        return v2.Compose(ops)
    ops = [v2.RandomResizedCrop(size, scale=(0.35, 1.0), interpolation=interp, antialias=True)]
    if hflip:
        ops.append(v2.RandomHorizontalFlip())
    # TrivialAugment's geometric ops support only nearest/bilinear on tensors.
    ops.append(v2.TrivialAugmentWide(interpolation=_interp("bilinear")))
    return v2.Compose(ops)


class ImageDataset(Dataset):
    def __init__(self, store: ImageStore, indices: np.ndarray, labels: np.ndarray, augment: Any) -> None:
        self.store = store
        self.indices = np.asarray(indices)
        self.labels = labels
        self.augment = augment
        pre = store.pre
        self.mean = torch.tensor(pre.mean).view(3, 1, 1) * 255.0
        self.std = torch.tensor(pre.std).view(3, 1, 1) * 255.0

    def __len__(self) -> int:
        return len(self.indices)

    def _eval_view(self, img: torch.Tensor) -> torch.Tensor:
        s = self.store.pre.image_size
        _, h, w = img.shape
        top, left = max(0, (h - s) // 2), max(0, (w - s) // 2)
        return img[:, top:top + s, left:left + s]

    def __getitem__(self, k: int) -> tuple[torch.Tensor, int]:
        i = int(self.indices[k])
        img = self.store[i]
        if img.shape[0] == 1 and self.augment is not None:
            img = img.expand(3, -1, -1)
        img = self.augment(img) if self.augment is not None else self._eval_view(img)
        if img.shape[0] == 1:
            img = img.expand(3, -1, -1)  # greyscale → 3 channels for ImageNet backbones
        x = (img.float() - self.mean) / self.std
        return x, target(self.labels, i)
