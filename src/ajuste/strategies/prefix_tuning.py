"""Prefix tuning (Li & Liang 2021) through peft: learned key/value prefixes (``peft.num_virtual_tokens``)
in every attention layer of a frozen text encoder; only they and the head train. Text models only."""

from __future__ import annotations

from typing import Any

from ajuste.backbones.adapters import register_method
from ajuste.strategies.base import register
from ajuste.strategies.peft_common import PeftStrategy, VirtualTokens


@register_method
class PrefixTuningMethod(VirtualTokens):
    name = "prefix-tuning"

    def build(self, spec: dict[str, Any], task: Any) -> Any:
        import peft

        return peft.PrefixTuningConfig(task_type=task, num_virtual_tokens=spec["num_virtual_tokens"])


@register
class PrefixTuning(PeftStrategy):
    name = "prefix-tuning"
    method = "prefix-tuning"
    cost_rank = 0.7
    summary = "learned key/value prefixes in every attention layer + the head; text only"
    text_defaults = {"optim.lr": 1e-2, "optim.head_lr_mult": 0.1, "optim.weight_decay": 0.0}

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"peft.num_virtual_tokens": {"type": "categorical", "choices": [5, 10, 20, 30]},
                "optim.lr": {"type": "float", "low": 1e-3, "high": 3e-2, "log": True}}
