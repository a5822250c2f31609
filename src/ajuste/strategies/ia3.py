"""IA3 (Liu et al. 2022) through peft: learned vectors rescale keys, values and the feed-forward input
(for convnets: the 1x1 convolutions); the fewest trained parameters of the adapter methods."""

from __future__ import annotations

from typing import Any

from ajuste.backbones.adapters import PeftMethod, layer_dims, patterns, register_method, user_targets
from ajuste.errors import ConfigError
from ajuste.strategies.base import register
from ajuste.strategies.peft_common import PeftStrategy


@register_method
class IA3Method(PeftMethod):
    name = "ia3"
    select = r"\.ia3_l\."
    mergeable = True

    def resolve(self, backbone: Any, pcfg: Any) -> dict[str, Any]:
        cands, targets = user_targets(backbone, pcfg)
        if targets is None:
            targets, ff = backbone.ia3_targets()
        else:
            # A user list keeps IA3's convention: narrowing layers (feed-forward down projections) scale their input.
            ff = [n for n in targets if layer_dims(cands[n])[0] > layer_dims(cands[n])[1]]
        if not targets:
            raise ConfigError(f"peft.targets: no module of {getattr(backbone, 'name', 'this model')} can take an "
                              f"IA3 adapter")
        return {"method": self.name, "targets": patterns(targets), "target_modules": targets,
                "feedforward_modules": ff}

    def build(self, spec: dict[str, Any], task: Any) -> Any:
        import peft

        return peft.IA3Config(target_modules=list(spec["target_modules"]),
                              feedforward_modules=list(spec["feedforward_modules"]), task_type=task)


@register
class IA3(PeftStrategy):
    name = "ia3"
    method = "ia3"
    cost_rank = 0.7
    summary = "learned rescaling vectors on keys/values/feed-forward or 1x1 convs + the head; mergeable"
    image_defaults = {"optim.lr": 3e-3, "optim.head_lr_mult": 0.3}
    text_defaults = {"optim.lr": 3e-3, "optim.head_lr_mult": 0.3}

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"optim.lr": {"type": "float", "low": 3e-4, "high": 3e-2, "log": True},
                "optim.head_lr_mult": {"type": "float", "low": 0.03, "high": 3.0, "log": True}}
