"""Discriminative learning rates: full fine-tuning where lower layer groups learn more slowly
(LR × layer_decay^depth), so general early features move least (ULMFiT, BEiT layer decay)."""

from __future__ import annotations

from typing import Any

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy, register

LAYER_DECAY_RANGE = {"type": "float", "low": 0.5, "high": 1.0}


@register
class Discriminative(Strategy):
    name = "discriminative"
    summary = "all layers, LR decaying by optim.layer_decay per group from the top"
    cost_rank = 1.2

    def defaults(self, modality: str) -> dict[str, Any]:
        return {"optim.layer_decay": 0.7, "optim.lr": 3e-4 if modality == "image" else 1e-4}

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o = cfg.optim
        return [Phase("all", train_groups=None, epochs=cfg.train.epochs, lr=o.lr, head_lr=o.lr * o.head_lr_mult,
                      patience=cfg.train.patience)]

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"optim.layer_decay": dict(LAYER_DECAY_RANGE)}
