"""Linear probe: the pretrained backbone is a frozen feature extractor; only the new head trains."""

from __future__ import annotations

from typing import Any

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy, register


@register
class LinearProbe(Strategy):
    name = "linear-probe"
    summary = "frozen backbone, train only the new head (features cached)"

    def defaults(self, modality: str) -> dict[str, Any]:
        return {"train.epochs": 30}

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o = cfg.optim
        return [Phase("head", [-1], cfg.train.epochs, o.lr, o.lr * o.head_lr_mult, cfg.train.patience + 2)]
