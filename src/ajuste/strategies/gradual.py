"""Gradual unfreezing (ULMFiT): train the head, then unfreeze one more layer group from the top every
``strategy.gradual_every`` epochs, with discriminative LRs; the last phase trains all with early stopping."""

from __future__ import annotations

from typing import Any

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy, register


@register
class Gradual(Strategy):
    name = "gradual"
    summary = "unfreeze one more group every strategy.gradual_every epochs, top first"

    def defaults(self, modality: str) -> dict[str, Any]:
        return {"optim.layer_decay": 0.7}

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o, every = cfg.optim, cfg.strategy.gradual_every
        body = n_groups - 1
        head_lr = o.lr * o.head_lr_mult
        phases = [Phase("head", [-1], every, o.lr, head_lr, None)]
        for k in range(1, body):
            phases.append(Phase(f"top{k}", list(range(body - k, body)) + [-1], every, o.lr, head_lr, None))
        phases.append(Phase("all", None, cfg.train.epochs, o.lr, head_lr, cfg.train.patience))
        return phases
