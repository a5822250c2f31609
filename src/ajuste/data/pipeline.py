"""From LabelledData to batches, for one backbone's preprocessing: ``Pipeline``, over the pieces of
``preprocessing`` (what a model input is), ``images`` (decode and resize once, augment) and ``batches``
(tokenised text, dynamic padding, each worker's share of a global batch). Their public names are importable
from here too.
"""

from __future__ import annotations

import hashlib
import os
from typing import Any

import numpy as np
import torch
from torch.utils.data import BatchSampler, ConcatDataset, DataLoader, Dataset, RandomSampler, SequentialSampler

from ajuste.data.batches import (
    LengthBucketSampler,
    PadCollate,
    ShardedBatches,
    TextDataset,
    balanced_draw,
    batches_loader,
    shard_batches,
    to_device_batch,
    tokenize,
)
from ajuste.data.images import (
    CACHE_MEMORY_SHARE,
    ImageDataset,
    ImageStore,
    available_memory,
    build_augment,
    load_image_file,
    resize_array_images,
    to_rgb,
)
from ajuste.data.preprocessing import Preprocessing, auto_image_size, make_preprocessing
from ajuste.data.sources import LabelledData
from ajuste.tasks import Task, for_data

__all__ = ["CACHE_MEMORY_SHARE", "ImageDataset", "ImageStore", "LengthBucketSampler", "PadCollate", "Pipeline",
           "Preprocessing", "ShardedBatches", "TEXT_BATCHES", "TextDataset", "auto_image_size", "available_memory",
           "batches_loader", "build_augment", "load_image_file", "make_preprocessing", "resize_array_images",
           "shard_batches", "to_device_batch", "to_rgb", "tokenize"]

TEXT_BATCHES = ("auto", "random", "max_length")


class Pipeline:
    """Loaders over one LabelledData with fixed splits, for one backbone's preprocessing."""

    def __init__(self, data: LabelledData, splits: dict[str, np.ndarray], pre: Preprocessing, *,
                 tokenizer: Any = None, augment: str = "light", hflip: bool | None = None, batch_size: int = 32,
                 task: Task | None = None) -> None:
        self.data = data
        # what the labels are (ajuste.tasks): a trained run's own for evaluate and predict, else from train
        self.task = task if task is not None else for_data(data, splits.get("train"))
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
            return ImageDataset(self.store, idx, self.data.y, self.train_augment if augment else None)
        if split not in self._encodings:
            self._encodings[split] = tokenize(self.tokenizer, [self.data.inputs[i] for i in idx],
                                              self.pre.max_length)
        return TextDataset(self._encodings[split], self.data.y[idx])

    def loader(self, split: str, *, shuffle: bool = False, augment: bool = False, seed: int = 0,
               batch_size: int | None = None, repeat: int = 1, world: Any = None,
               balance: bool = False) -> DataLoader:
        """``world`` (data-parallel training): this worker's share of each global batch. ``balance``: the rows
        drawn class-balanced, with replacement (train.class_balance=sampler)."""
        ds = self.dataset(split, augment=augment)
        if repeat > 1:
            ds = ConcatDataset([ds] * repeat)
        gen = torch.Generator().manual_seed(seed)
        if balance:
            ds = balanced_draw(ds, np.tile(self.labels(split), repeat), gen)
        bs = batch_size or self.batch_size
        if self.pre.modality == "text":
            fixed = self.pre.max_length if self.text_batches == "max_length" else None
            collate = PadCollate(self.tokenizer.pad_token_id or 0, fixed=fixed)
            if self.text_batches == "auto":
                lengths = [len(x["input_ids"]) for x, _ in (ds[i] for i in range(len(ds)))]
                sampler: Any = LengthBucketSampler(lengths, bs, shuffle=shuffle, generator=gen)
            else:
                order = RandomSampler(ds, generator=gen) if shuffle else SequentialSampler(ds)
                sampler = BatchSampler(order, bs, drop_last=False)
            return DataLoader(ds, batch_sampler=shard_batches(sampler, world, shuffle), collate_fn=collate,
                              num_workers=0)
        if world is not None and world.active:
            return batches_loader(ds, bs, shuffle=shuffle, generator=gen, world=world)
        return DataLoader(ds, batch_size=bs, shuffle=shuffle, generator=gen, num_workers=0, drop_last=False)

    def labels(self, split: str) -> np.ndarray:
        """What the model learns on ``split``: class indices, or multi-label / regression targets."""
        return self.data.y[self.splits[split]]

    # --- identity of what the model sees (keys of the frozen-prefix cache, ajuste.training.cache) --------
    def fingerprint(self, split: str) -> str:
        """Digest of the inputs of ``split`` in order: for text the token ids themselves (covering the
        tokenizer and max_length); for images the source (file paths with size and mtime, or array
        bytes) and the split's indices."""
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
