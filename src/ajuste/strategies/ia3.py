"""IA3 (Liu et al. 2022) through peft: learned vectors rescale keys, values and the feed-forward input
(for convnets: the 1x1 convolutions); the fewest trained parameters of the adapter methods."""

from __future__ import annotations

from typing import Any

from ajuste.strategies.base import register
from ajuste.strategies.peft_common import PeftStrategy


@register
class IA3(PeftStrategy):
    name = "ia3"
    method = "ia3"
    summary = "learned rescaling vectors on keys/values/feed-forward or 1x1 convs + the head; mergeable"
    image_defaults = {"optim.lr": 3e-3, "optim.head_lr_mult": 0.3}
    text_defaults = {"optim.lr": 3e-3, "optim.head_lr_mult": 0.3}

    def search_space(self, modality: str) -> dict[str, Any]:
        return {"optim.lr": {"type": "float", "low": 3e-4, "high": 3e-2, "log": True},
                "optim.head_lr_mult": {"type": "float", "low": 0.03, "high": 3.0, "log": True}}
