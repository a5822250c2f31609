"""Partial fine-tuning: freeze the early layer groups, train the top ``strategy.unfreeze`` groups + head."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ajuste.config import RunConfig
from ajuste.errors import ConfigError
from ajuste.strategies.base import Phase, Strategy, register


@dataclass
class PartialOptions:
    unfreeze: int = field(default=2, metadata={"help": "number of top layer groups to train (besides the head)"})

    def __post_init__(self) -> None:
        if self.unfreeze < 0:
            raise ConfigError(f"strategy.unfreeze={self.unfreeze} must be ≥ 0")


@register
class Partial(Strategy):
    name = "partial"
    summary = "freeze early layers, train the top k groups (strategy.unfreeze) and the head"
    options = PartialOptions
    cost_rank = 0.5

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        k = self.option_values(cfg).unfreeze
        body = n_groups - 1
        if k > body:
            raise ConfigError(f"strategy.unfreeze={k} but this backbone has only {body} layer groups below the head")
        groups = list(range(body - k, body)) + [-1]
        o = cfg.optim
        return [Phase(f"top{k}", train_groups=groups, epochs=cfg.train.epochs, lr=o.lr, head_lr=o.lr * o.head_lr_mult,
                      patience=cfg.train.patience)]

    def planning_groups(self, cfg: RunConfig) -> int:
        return 3 + max(1, self.option_values(cfg).unfreeze)

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        top = min(4, n_body_groups) if n_body_groups else 3
        return {"strategy.unfreeze": {"type": "int", "low": 1, "high": top}} if top > 1 else {}

    def check_space(self, space: Any, model: str, n_body_groups: int | None) -> None:
        u = space.params.get("strategy.unfreeze")
        if u is None or n_body_groups is None:
            return
        top = max(u.choices) if u.kind == "categorical" else u.high
        if top > n_body_groups:
            raise ConfigError(f"space: strategy.unfreeze goes up to {top} but {model} has {n_body_groups} layer "
                              f"groups below the head; use high: {n_body_groups}")
