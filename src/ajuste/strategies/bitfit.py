"""BitFit (Ben Zaken et al. 2021): only the bias terms (for convnets: the BatchNorm shifts) and the new
head train. No adapter modules: works for any backbone and needs no peft at inference."""

from __future__ import annotations

from typing import Any

from ajuste.backbones.adapters import PeftMethod, adapter_stats, register_method
from ajuste.config import RunConfig
from ajuste.errors import ConfigError
from ajuste.strategies.base import register
from ajuste.strategies.peft_common import PeftStrategy


@register_method
class BitFitMethod(PeftMethod):
    name = "bitfit"
    select = r"(^|\.)bias$"
    wraps = False  # nothing is injected: the trained biases are ordinary weights


@register
class BitFit(PeftStrategy):
    name = "bitfit"
    method = "bitfit"
    cost_rank = 0.6
    summary = "only bias terms (BatchNorm shifts for convnets) + the head train"
    image_defaults = {"optim.lr": 1e-3, "optim.head_lr_mult": 1.0}
    text_defaults = {"optim.lr": 1e-3, "optim.head_lr_mult": 1.0}

    def prepare(self, backbone: Any, cfg: RunConfig) -> None:
        if adapter_stats(backbone, BitFitMethod.select)["adapter_params"] == 0:
            raise ConfigError(f"bitfit: {getattr(backbone, 'name', 'this model')} has no bias parameters below "
                              f"the head; use lora or linear-probe")
        super().prepare(backbone, cfg)

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True}}
