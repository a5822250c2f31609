"""What a phase's epochs are fed: live batches through the whole network, or the frozen prefix's activations
from the cache (`ajuste.training.cache`) through the trainable rest, with the same shuffles either way."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch
from torch.utils.data import ConcatDataset, DataLoader

from ajuste.backbones.base import Backbone
from ajuste.config import RunConfig
from ajuste.data.batches import balanced_draw
from ajuste.data.pipeline import (
    LengthBucketSampler,
    Pipeline,
    batches_loader,
    shard_batches,
    to_device_batch,
)
from ajuste.strategies.base import Phase
from ajuste.training import cache
from ajuste.training.distributed import World
from ajuste.training.execution import autocast, model_device, to_device
from ajuste.training.inference import amp_for


@dataclass
class _Feed:
    """The batches of one split in one phase, and how the model turns a batch into logits."""

    make: Callable[[int, int], Any]  # (seed, repeat) -> loader
    forward: Callable[[Any], torch.Tensor]
    amp: torch.dtype | None  # autocast dtype of the pass (None: fp32)
    cached: bool


def _phase_feeds(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, phase: Phase, *, channels_last: bool,
                 w: World = World(), console: Any = None,
                 costs: dict[str, tuple[float, bool]] | None = None) -> tuple[_Feed, _Feed]:
    """Train and validation feeds of a phase: live batches through the whole network, or activations of
    the frozen prefix from the cache (ajuste.training.cache) through the trainable rest. ``costs`` collects,
    per cache entry used, what computing it took and whether this run computed it."""
    device = model_device(backbone)

    def live(inputs: Any) -> torch.Tensor:
        return backbone(to_device_batch(inputs, channels_last=channels_last, device=device))

    bs = pipeline.batch_size
    balance = cfg.train.class_balance == "sampler"
    train = _Feed(lambda seed, repeat=1: pipeline.loader("train", shuffle=True, augment=True, seed=seed,
                                                          repeat=repeat, world=w, balance=balance),
                  live, amp_for(cfg, backbone, training=True), False)
    val_loader = pipeline.loader("val", batch_size=max(64, bs), world=w)
    val = _Feed(lambda seed, repeat=1: val_loader, live, amp_for(cfg, backbone, training=False), False)
    cut = _cut(backbone, cfg, phase)
    if cut is None:
        return train, val

    head = cut.name == "features"
    # A cut below the head pays only if the split is used more than once (or is already cached);
    # head-only phases always train on features (no augmentation then).
    train_entry = val_entry = None
    if head or not pipeline.augmenting:
        train_entry = _activations(backbone, pipeline, cfg, cut, "train", channels_last=channels_last,
                                   worth=head or phase.epochs * phase.repeat > 1, console=console, costs=costs)
    else:
        cache.notice_once(f"data.augment={cfg.data.augment}: augmented inputs change the frozen layers' output "
                          f"every epoch, so training runs them live (validation still uses the activation cache; "
                          f"data.augment=none caches training too)", console)
    val_entry = _activations(backbone, pipeline, cfg, cut, "val", channels_last=channels_last,
                             worth=head or phase.epochs > 1, console=console, costs=costs)

    def from_cache(acts: Any) -> torch.Tensor:
        acts = to_device(acts, device)  # the cache lives on the CPU (or on disk)
        if head:
            return backbone.classify(acts)
        if channels_last and isinstance(acts, torch.Tensor) and acts.ndim == 4:
            acts = acts.contiguous(memory_format=torch.channels_last)
        return backbone.classify(backbone.forward_suffix(acts, cut.group))

    if train_entry is not None:
        train_labels = _label_tensor(pipeline.labels("train"))
        train = _Feed(lambda seed, repeat=1: _cached_loader(train_entry, train_labels, bs, seed=seed, repeat=repeat,
                                                            shuffle=True, w=w, balance=balance),
                      from_cache, None if head else amp_for(cfg, backbone, training=True), True)
    if val_entry is not None:
        val_labels = _label_tensor(pipeline.labels("val"))
        loader = _cached_loader(val_entry, val_labels, 256 if head else max(64, bs), seed=0, repeat=1, shuffle=False,
                                w=w)
        val = _Feed(lambda seed, repeat=1: loader, from_cache, None if head else amp_for(cfg, backbone, training=False),
                    True)
    return train, val


def _label_tensor(labels: Any) -> torch.Tensor:
    """Class indices as int64; multi-label and regression targets as float32."""
    labels = np.asarray(labels)
    return torch.as_tensor(labels, dtype=torch.long if labels.dtype.kind in "iu" else torch.float32)


def _cut(backbone: Backbone, cfg: RunConfig, phase: Phase) -> Any:
    """Where this phase's forward pass can start from cached activations, or None."""
    if cfg.train.cache == "off":
        return None
    if phase.head_only:
        return backbone.split(-1) if cfg.train.cache_features else None
    if phase.select is not None or phase.train_groups is None:
        return None  # PEFT adapters and end-to-end phases train inside every group
    n = len(backbone.layer_groups())
    first = min(i % n for i in phase.train_groups)
    if first == 0:
        return None
    cut = backbone.split(first)
    if cut is None or any(isinstance(t, torch.nn.Parameter) and t.requires_grad for _, t in backbone.prefix_state(cut)):
        return None
    return cut


def _activations(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, cut: Any, split: str, *,
                 channels_last: bool, worth: bool, console: Any,
                 costs: dict[str, tuple[float, bool]] | None = None) -> Any:
    """The cache entry of ``split`` at ``cut``, computed now if ``worth`` it; None to run live."""
    builds = cache.REGISTRY.stats["builds"]
    entry = _entry(backbone, pipeline, cfg, cut, split, channels_last=channels_last, worth=worth, console=console)
    if entry is not None and costs is not None and entry.key not in costs:
        costs[entry.key] = (entry.seconds, cache.REGISTRY.stats["builds"] > builds)
    return entry


def _entry(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, cut: Any, split: str, *,
           channels_last: bool, worth: bool, console: Any) -> Any:
    n = len(pipeline.splits[split])
    if n == 0:
        return None
    settings = cache.Settings.from_config(cfg.train)
    amp = amp_for(cfg, backbone, training=False)
    device = model_device(backbone)
    parts = cache.cache_key(backbone=backbone, split=cut, pipeline=pipeline, split_name=split, amp=amp, device=device,
                            channels_last=channels_last, dtype=settings.dtype)
    parts["compute"]["fold_bn"] = bool(cfg.train.fold_bn and backbone.modality == "image")
    if not worth:
        return cache.lookup(cache.digest_json(parts), settings, console=console)
    lengths = None
    if cut.ragged:
        lengths = np.asarray([len(x["input_ids"]) for x in pipeline.dataset(split, augment=False).encodings])

    @torch.no_grad()
    def compute():
        loader = pipeline.loader(split, batch_size=max(64, pipeline.batch_size))
        was_training = backbone.training
        backbone.eval()
        runner = _frozen_runner(backbone, pipeline, cfg, channels_last=channels_last)
        try:
            for inputs, _ in loader:
                with autocast(amp, device):
                    acts = runner.forward_prefix(to_device_batch(inputs, channels_last=channels_last, device=device),
                                                 cut.group)
                lens = inputs["attention_mask"].sum(1).numpy() if cut.ragged else None
                yield acts.float().cpu(), lens  # computed on the device, kept on the CPU (or disk)
        finally:
            backbone.train(was_training)

    return cache.activations(key_parts=parts, settings=settings, compute=compute, n=n, lengths=lengths,
                             console=console)


def _frozen_runner(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, *, channels_last: bool) -> Backbone:
    """The model that computes frozen activations: with train.fold_bn, a copy with BatchNorm folded into
    the convolutions (checked on a random probe batch against the model itself; see inference_copy)."""
    if not cfg.train.fold_bn or backbone.modality != "image":
        return backbone
    return backbone.inference_copy(to_device_batch(_image_probe(pipeline, model_device(backbone)),
                                                   channels_last=channels_last))


def _image_probe(pipeline: Pipeline, device: torch.device | None = None) -> torch.Tensor:
    """Two random images at the pipeline's input size: the batch that BatchNorm folding is checked on."""
    size = pipeline.pre.image_size
    return to_device(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), device)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _cached_loader(entry: Any, labels: torch.Tensor, batch_size: int, *, seed: int, repeat: int, shuffle: bool,
                   w: World, balance: bool = False) -> DataLoader:
    """Batches of cached rows: the same samplers as live batches of the same size (images: the shuffles of
    a plain DataLoader; text: length-bucketed, padded per batch). ``balance``: rows drawn class-balanced."""
    def collate(idx: list[int]) -> tuple[Any, torch.Tensor]:
        return entry.batch(idx), labels[torch.as_tensor(idx, dtype=torch.long)]

    ds: Any = _Rows(entry.n) if repeat == 1 else ConcatDataset([_Rows(entry.n)] * repeat)
    gen = torch.Generator().manual_seed(seed)
    if balance:
        ds = balanced_draw(ds, np.tile(labels.numpy(), repeat), gen)
    if entry.kind == "ragged":
        lengths = np.tile(entry.lengths, repeat)
        if balance:
            lengths = lengths[ds.indices]
        if shuffle:
            sampler: Any = LengthBucketSampler(lengths.tolist(), batch_size, shuffle=True, generator=gen)
        else:  # evaluation: sorted by length, the least padding (outputs are only summed)
            order = np.argsort(lengths, kind="stable").tolist()
            sampler = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return DataLoader(ds, batch_sampler=shard_batches(sampler, w, shuffle), collate_fn=collate, num_workers=0)
    if w.active:
        return batches_loader(ds, batch_size, shuffle=shuffle, generator=gen, world=w, collate_fn=collate)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate)

