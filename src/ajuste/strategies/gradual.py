"""Gradual unfreezing (ULMFiT): train the head, then unfreeze one more layer group from the top every
``strategy.gradual_every`` epochs, with discriminative LRs; the last phase trains all with early stopping."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ajuste.config import RunConfig
from ajuste.errors import ConfigError
from ajuste.strategies.base import Phase, Strategy, register
from ajuste.strategies.discriminative import LAYER_DECAY_RANGE


@dataclass
class GradualOptions:
    gradual_every: int = field(default=1, metadata={"help": "epochs between unfreezing one more group"})

    def __post_init__(self) -> None:
        if self.gradual_every < 1:
            raise ConfigError(f"strategy.gradual_every={self.gradual_every} must be ≥ 1")


@register
class Gradual(Strategy):
    name = "gradual"
    summary = "unfreeze one more group every strategy.gradual_every epochs, top first"
    options = GradualOptions
    cost_rank = 1.1
    epoch_knobs = ("strategy.gradual_every",)

    def defaults(self, modality: str) -> dict[str, Any]:
        return {"optim.layer_decay": 0.7}

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o, every = cfg.optim, self.option_values(cfg).gradual_every
        body = n_groups - 1
        head_lr = o.lr * o.head_lr_mult
        phases = [Phase("head", train_groups=[-1], epochs=every, lr=o.lr, head_lr=head_lr, patience=None)]
        for k in range(1, body):
            phases.append(Phase(f"top{k}", train_groups=list(range(body - k, body)) + [-1], epochs=every, lr=o.lr,
                                head_lr=head_lr, patience=None))
        phases.append(Phase("all", train_groups=None, epochs=cfg.train.epochs, lr=o.lr, head_lr=head_lr,
                            patience=cfg.train.patience))
        return phases

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"optim.layer_decay": dict(LAYER_DECAY_RANGE)}
