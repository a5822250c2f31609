"""Two-stage fine-tuning (Keras / fast.ai recipe): train the new head with the backbone frozen until
validation stops improving, then unfreeze everything at a lower LR for the whole of its schedule (unless
strategy.stage2_patience asks for early stopping), keeping the best epoch. A random head is never
trained together with pretrained layers at a high LR, which would wreck the pretrained features."""

from __future__ import annotations

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy, register


@register
class TwoStage(Strategy):
    name = "two-stage"
    summary = "head only until validation plateaus, then all layers at LR × strategy.stage2_lr_factor"

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o, s = cfg.optim, cfg.strategy
        head_lr = o.lr * o.head_lr_mult
        stage2 = head_lr * s.stage2_lr_factor
        return [
            Phase("head", [-1], s.head_epochs, o.lr, head_lr, cfg.train.patience),
            Phase("all", None, cfg.train.epochs, stage2, stage2, s.stage2_patience or None),
        ]
