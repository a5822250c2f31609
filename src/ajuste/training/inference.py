"""Forward passes over a loader, on the model's device, at the pass's precision: features and logits."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch.utils.data import DataLoader

from ajuste.backbones.base import Backbone
from ajuste.config import RunConfig
from ajuste.data.pipeline import to_device_batch
from ajuste.training.execution import amp_dtype, autocast, model_device


def amp_for(cfg: RunConfig, backbone: Backbone, *, training: bool) -> torch.dtype | None:
    """The autocast dtype of one of ``backbone``'s passes on the device it sits on (`execution.amp_dtype`)."""
    return amp_dtype(cfg.train, convnet=backbone.is_convnet, text=backbone.modality == "text", training=training,
                     device=model_device(backbone))


def use_channels_last(cfg: RunConfig, backbone: Backbone) -> bool:
    mode = cfg.train.channels_last
    return mode == "on" or (mode == "auto" and backbone.is_convnet)


@torch.no_grad()
def run_over(backbone: Backbone, loader: DataLoader, forward: Callable[[Any], torch.Tensor], *,
             amp: torch.dtype | None) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """``forward(batch inputs)`` over every batch in eval mode, at ``amp`` on the model's device: the outputs
    (float32, on the CPU) and the labels, batch by batch. The one inference loop of features and logits."""
    was_training = backbone.training
    backbone.eval()
    device = model_device(backbone)
    out, labels = [], []
    try:
        for inputs, y in loader:
            with autocast(amp, device):
                result = forward(inputs)
            out.append(result.float().cpu())
            labels.append(y)
    finally:
        backbone.train(was_training)
    return out, labels


def compute_features(backbone: Backbone, loader: DataLoader, *, amp: torch.dtype | None,
                     channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of a frozen backbone over a loader, on the model's device: (N, F) float32 and (N,)
    labels, on the CPU."""
    device = model_device(backbone)
    feats, labels = run_over(backbone, loader, lambda x: backbone.features(
        to_device_batch(x, channels_last=channels_last, device=device)), amp=amp)
    return torch.cat(feats), torch.cat(labels)


def predict_logits(backbone: Backbone, loader: DataLoader, *, amp: torch.dtype | None, channels_last: bool = False,
                   forward: Callable[[Any], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, on the CPU; ``forward`` turns a batch into logits (default: the whole
    model, on its device)."""
    device = model_device(backbone)
    if forward is None:
        def forward(x: Any) -> torch.Tensor:
            return backbone(to_device_batch(x, channels_last=channels_last, device=device))
    out, labels = run_over(backbone, loader, forward, amp=amp)
    if not out:  # a data-parallel worker whose share of a tiny split is empty
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    return torch.cat(out), torch.cat(labels)
