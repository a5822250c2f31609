"""From LabelledData to batches: image decoding/resizing/augmentation and text tokenisation.

Images are decoded and resized once to a base resolution and kept in memory as uint8 (C, H, W)
tensors, so epochs only pay for augmentation and normalisation. Text is tokenised once; batches are
padded to their own longest example (dynamic padding).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from ajuste.data.sources import LabelledData
from ajuste.errors import DataError

_INTERP = {"bicubic": "BICUBIC", "bilinear": "BILINEAR", "nearest": "NEAREST"}


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

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in self.__dict__.items()}

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
        return Preprocessing("text", max_length=min(max_length, limit))
    dc = backbone.data_config()
    size = image_size or auto_image_size(data, dc["input_size"])
    square = isinstance(data.inputs, np.ndarray)
    base = size if square else int(math.floor(size / dc["crop_pct"]))
    return Preprocessing("image", image_size=size, base_size=base, square=square, mean=tuple(dc["mean"]),
                         std=tuple(dc["std"]), interpolation=dc["interpolation"])


# --- images -------------------------------------------------------------------------------------


def _interp(name: str):
    from torchvision.transforms import InterpolationMode

    return getattr(InterpolationMode, _INTERP.get(name, "BILINEAR"))


def load_image_file(path: str, pre: Preprocessing) -> torch.Tensor:
    """Decode one image file to uint8 (3, H, W) with the shorter side at ``pre.base_size``.

    Upright (EXIF orientation applied), first frame of an animation, any PIL mode (16-bit, CMYK, palette) to RGB.
    """
    import warnings

    from PIL import Image, ImageOps

    try:
        # PIL only warns between MAX_IMAGE_PIXELS and twice that (then decodes hundreds of MB): refuse instead
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
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
    from PIL import Image

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
    import torch.nn.functional as F

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
    import sys

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
    from torchvision.transforms import v2

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
        return x, int(self.labels[i])


# --- text -----------------------------------------------------------------------------------------


class TextDataset(Dataset):
    def __init__(self, encodings: list[dict[str, list[int]]], labels: np.ndarray) -> None:
        self.encodings = encodings
        self.labels = labels

    def __len__(self) -> int:
        return len(self.encodings)

    def __getitem__(self, k: int) -> tuple[dict[str, list[int]], int]:
        return self.encodings[k], int(self.labels[k])


def tokenize(tokenizer: Any, texts: list[str], max_length: int) -> list[dict[str, list[int]]]:
    enc = tokenizer(list(texts), truncation=True, max_length=max_length, padding=False)
    keys = [k for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc]
    return [{k: enc[k][i] for k in keys} for i in range(len(texts))]


class LengthBucketSampler:
    """Batches of similar length, so dynamic padding pads little.

    Shuffled: indices are shuffled, cut into pools of 50 batches, each pool sorted by length and cut
    into batches, and the batch order shuffled — random batches, each of near-uniform length.
    Not shuffled (evaluation): sorted by length; order of outputs is restored by the caller's indices.
    """

    POOL_BATCHES = 50

    def __init__(self, lengths: list[int], batch_size: int, *, shuffle: bool, generator: torch.Generator) -> None:
        self.lengths = np.asarray(lengths)
        self.batch_size = batch_size
        self.shuffle = shuffle
        self.generator = generator

    def _batches(self) -> list[list[int]]:
        n, bs = len(self.lengths), self.batch_size
        if not self.shuffle:
            # Evaluation keeps the dataset order (callers zip outputs with inputs).
            return [list(range(i, min(i + bs, n))) for i in range(0, n, bs)]
        order = torch.randperm(n, generator=self.generator).numpy()
        pool = bs * self.POOL_BATCHES
        batches = []
        for start in range(0, n, pool):
            chunk = order[start:start + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches.extend(chunk[i:i + bs].tolist() for i in range(0, len(chunk), bs))
        perm = torch.randperm(len(batches), generator=self.generator).tolist()
        return [batches[i] for i in perm]

    def __iter__(self):
        return iter(self._batches())

    def __len__(self) -> int:
        return (len(self.lengths) + self.batch_size - 1) // self.batch_size


class PadCollate:
    """Pads a batch to its longest example, rounded up to a multiple of 8 (dynamic padding).

    Rounding keeps the number of distinct shapes small: oneDNN builds kernels per shape, and a new
    shape every batch costs more than the few padded tokens.
    """

    def __init__(self, pad_id: int, multiple: int = 8, *, fixed: int | None = None) -> None:
        self.pad_id = pad_id
        self.multiple = multiple
        self.fixed = fixed  # pad every batch to this length instead (train.text_batches=max_length)

    def __call__(self, batch: list[tuple[dict[str, list[int]], int]]) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        longest = max(len(x["input_ids"]) for x, _ in batch)
        longest = -(-longest // self.multiple) * self.multiple
        if self.fixed is not None:
            longest = max(self.fixed, max(len(x["input_ids"]) for x, _ in batch))
        out: dict[str, torch.Tensor] = {}
        for key in batch[0][0]:
            fill = self.pad_id if key == "input_ids" else 0
            rows = [x[key] + [fill] * (longest - len(x[key])) for x, _ in batch]
            out[key] = torch.tensor(rows, dtype=torch.long)
        return out, torch.tensor([y for _, y in batch], dtype=torch.long)


# --- the pipeline -------------------------------------------------------------------------------------

TEXT_BATCHES = ("auto", "random", "max_length")


class Pipeline:
    """Loaders over one LabelledData with fixed splits, for one backbone's preprocessing."""

    def __init__(self, data: LabelledData, splits: dict[str, np.ndarray], pre: Preprocessing, *,
                 tokenizer: Any = None, augment: str = "light", hflip: bool | None = None, batch_size: int = 32) -> None:
        self.data = data
        self.splits = {k: np.asarray(v) for k, v in splits.items()}
        self.pre = pre
        self.batch_size = batch_size
        self.tokenizer = tokenizer
        # Fast-path switches (set from train.* by the training loop, see ``configure``).
        self.text_batches = "auto"
        if pre.modality == "image":
            self.store = ImageStore(data, pre)
            flip = (not isinstance(data.inputs, np.ndarray)) if hflip is None else hflip
            self.train_augment = build_augment(augment, pre, hflip=flip)
        else:
            if tokenizer is None:
                raise ValueError("a text pipeline needs the backbone's tokenizer")
            self._encodings: dict[str, list] = {}

    def configure(self, *, text_batches: str | None = None, image_memory: str | None = None) -> None:
        """Fast-path switches: ``text_batches`` auto (length-bucketed batches, each padded to its longest) |
        random (random batches padded to their longest) | max_length (random batches padded to
        data.max_length, the reference recipe); ``image_memory`` auto (keep decoded images while they
        fit) | off (decode every image in every batch)."""
        if text_batches is not None:
            if text_batches not in TEXT_BATCHES:
                raise ValueError(f"text_batches={text_batches!r} is not one of {', '.join(TEXT_BATCHES)}")
            self.text_batches = text_batches
        if image_memory == "off" and self.pre.modality == "image":
            self.store.keep_nothing()

    @property
    def augmenting(self) -> bool:
        return self.pre.modality == "image" and self.train_augment is not None

    def dataset(self, split: str, *, augment: bool) -> Dataset:
        idx = self.splits[split]
        if self.pre.modality == "image":
            return ImageDataset(self.store, idx, self.data.labels, self.train_augment if augment else None)
        if split not in self._encodings:
            self._encodings[split] = tokenize(self.tokenizer, [self.data.inputs[i] for i in idx],
                                              self.pre.max_length)
        return TextDataset(self._encodings[split], self.data.labels[idx])

    def loader(self, split: str, *, shuffle: bool = False, augment: bool = False, seed: int = 0,
               batch_size: int | None = None, repeat: int = 1, world: Any = None) -> DataLoader:
        """``world`` (data-parallel training): this worker's share of each global batch."""
        ds = self.dataset(split, augment=augment)
        if repeat > 1:
            ds = ConcatDataset([ds] * repeat)
        gen = torch.Generator().manual_seed(seed)
        bs = batch_size or self.batch_size
        if self.pre.modality == "text":
            fixed = self.pre.max_length if self.text_batches == "max_length" else None
            collate = PadCollate(self.tokenizer.pad_token_id or 0, fixed=fixed)
            if self.text_batches == "auto":
                lengths = [len(x["input_ids"]) for x, _ in (ds[i] for i in range(len(ds)))]
                sampler: Any = LengthBucketSampler(lengths, bs, shuffle=shuffle, generator=gen)
            else:
                from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

                order = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
                sampler = BatchSampler(order, bs, drop_last=False)
            return DataLoader(ds, batch_sampler=shard_batches(sampler, world, shuffle), collate_fn=collate,
                              num_workers=0)
        if world is not None and world.active:
            return batches_loader(ds, bs, shuffle=shuffle, generator=gen, world=world)
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen, num_workers=0, drop_last=False)

    def labels(self, split: str) -> np.ndarray:
        return self.data.labels[self.splits[split]]

    # --- identity of what the model sees (keys of the frozen-prefix cache, ajuste.train.cache) --------
    def fingerprint(self, split: str) -> str:
        """Digest of the inputs of ``split`` in order: for text the token ids themselves (covering the
        tokenizer and max_length); for images the source (file paths with size and mtime, or array
        bytes) and the split's indices."""
        import hashlib

        h = hashlib.blake2b(digest_size=16)
        if self.pre.modality == "text":
            self.dataset(split, augment=False)
            for enc in self._encodings[split]:
                for k in sorted(enc):
                    h.update(k.encode())
                    h.update(np.asarray(enc[k], dtype=np.int64).tobytes())
            return h.hexdigest()
        h.update(self._inputs_digest().encode())
        h.update(np.asarray(self.splits[split], dtype=np.int64).tobytes())
        return h.hexdigest()

    def _inputs_digest(self) -> str:
        if getattr(self, "_inputs_hex", None) is None:
            import hashlib
            import os

            h = hashlib.blake2b(digest_size=16)
            inputs = self.data.inputs
            if isinstance(inputs, np.ndarray):
                h.update(f"{inputs.dtype}|{inputs.shape}".encode())
                h.update(np.ascontiguousarray(inputs).tobytes())
            else:
                for path in inputs:
                    try:
                        st = os.stat(path)
                        h.update(f"{path}|{st.st_size}|{st.st_mtime_ns}\n".encode())
                    except OSError:
                        h.update(f"{path}|missing\n".encode())
            self._inputs_hex = h.hexdigest()
        return self._inputs_hex

    def eval_transform_identity(self) -> dict[str, Any]:
        """What turns a stored input into the model input on the deterministic (evaluation) path."""
        view = "tokens" if self.pre.modality == "text" else ("square-resize" if self.pre.square else "centre-crop")
        return {**self.pre.to_dict(), "view": view}


def shard_batches(batches: Any, world: Any, training: bool) -> Any:
    """A batch sampler cut to this worker's share (unchanged outside data-parallel training)."""
    if world is None or not world.active:
        return batches
    from ajuste.train.distributed import ShardedBatches

    return ShardedBatches(batches, world, drop_short=training)


def batches_loader(ds: Any, batch_size: int, *, shuffle: bool, generator: torch.Generator, world: Any,
                   collate_fn: Any = None) -> DataLoader:
    """The batches ``DataLoader(ds, batch_size, shuffle, generator)`` would make, this worker's share of each."""
    from torch.utils.data import BatchSampler, RandomSampler, SequentialSampler

    order = RandomSampler(ds, generator=generator) if shuffle else SequentialSampler(ds)
    sampler = shard_batches(BatchSampler(order, batch_size, drop_last=False), world, shuffle)
    # The DataLoader draws its base seed from ``generator`` before the sampler does, as the plain
    # DataLoader(shuffle=True, generator=...) of a single process does: same batches, same order.
    return DataLoader(ds, batch_sampler=sampler, collate_fn=collate_fn, num_workers=0, generator=generator)


def to_device_batch(inputs: Any, *, channels_last: bool = False, device: torch.device | None = None) -> Any:
    """A batch on ``device`` (None or the CPU: where it is), images in channels_last order when asked."""
    if device is not None and device.type != "cpu":
        if isinstance(inputs, dict):
            return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in inputs.items()}
        inputs = inputs.to(device, non_blocking=True)
    if isinstance(inputs, dict):
        return inputs
    if channels_last:
        return inputs.contiguous(memory_format=torch.channels_last)
    return inputs
