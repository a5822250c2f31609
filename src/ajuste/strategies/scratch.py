"""From scratch: the same architecture with every weight re-initialised (He for convolutions, Xavier
for linear/attention), or a compact network (``scratch-compact``), trained end to end with stronger
regularisation since nothing is pretrained."""

from __future__ import annotations

from typing import Any

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy, register


@register
class Scratch(Strategy):
    name = "scratch"
    summary = "same architecture re-initialised (He/Xavier), strong regularisation"
    reinitialize = True
    cost_rank = 2.5

    def defaults(self, modality: str) -> dict[str, Any]:
        common = {"optim.head_lr_mult": 1.0, "optim.weight_decay": 0.05, "optim.label_smoothing": 0.1,
                  "model.dropout": 0.3, "data.augment": "strong", "model.bn": "train"}
        if modality == "image":
            return {**common, "optim.lr": 2e-3, "train.epochs": 20}
        return {**common, "optim.lr": 3e-4, "train.epochs": 15}

    def prepare(self, backbone: Any, cfg: RunConfig) -> None:
        backbone.reinitialize(seed=cfg.train.seed)

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o = cfg.optim
        return [Phase("all", train_groups=None, epochs=cfg.train.epochs, lr=o.lr, head_lr=o.lr * o.head_lr_mult,
                      patience=cfg.train.patience + 3)]


@register
class ScratchCompact(Scratch):
    """The from-scratch arm a practitioner would pick for a small data set: a small network, not a
    re-initialised copy of the big one (``ajuste.backbones.compact``: half-width ResNet-10-T for images;
    for text a 2-layer encoder of the backbone's family with its tokenizer). Same initialisation,
    regularisation and schedule as ``scratch``."""

    name = "scratch-compact"
    summary = "a compact network (ResNet-10-T at half width; 2-layer encoder for text) trained from scratch"
    compact = True
    cost_rank = 0.6
