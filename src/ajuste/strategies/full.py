"""Full fine-tuning: every layer trains from the pretrained weights, the new head at a higher LR."""

from __future__ import annotations

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy, register


@register
class Full(Strategy):
    name = "full"
    summary = "train all layers end to end (new head at optim.head_lr_mult × LR)"
    cost_rank = 1.2

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o = cfg.optim
        return [Phase("all", train_groups=None, epochs=cfg.train.epochs, lr=o.lr, head_lr=o.lr * o.head_lr_mult,
                      patience=cfg.train.patience)]
