"""Partial fine-tuning: freeze the early layer groups, train the top ``strategy.unfreeze`` groups + head."""

from __future__ import annotations

from ajuste.config import RunConfig
from ajuste.errors import ConfigError
from ajuste.strategies.base import Phase, Strategy, register


@register
class Partial(Strategy):
    name = "partial"
    summary = "freeze early layers, train the top k groups (strategy.unfreeze) and the head"

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        k = cfg.strategy.unfreeze
        body = n_groups - 1
        if k > body:
            raise ConfigError(f"strategy.unfreeze={k} but this backbone has only {body} layer groups below the head")
        groups = list(range(body - k, body)) + [-1]
        o = cfg.optim
        return [Phase(f"top{k}", groups, cfg.train.epochs, o.lr, o.lr * o.head_lr_mult, cfg.train.patience)]
