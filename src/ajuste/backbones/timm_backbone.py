"""timm image models behind the Backbone interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ajuste.backbones.base import Backbone, LayerGroup


class TimmBackbone(Backbone):
    modality = "image"

    def __init__(self, model: nn.Module, *, name: str, arch: str) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.arch = arch
        # Dropout lives in our head (so cached features and live forwards see the same head).
        if hasattr(model, "drop_rate"):
            model.drop_rate = 0.0
        self.is_convnet = any(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) for m in model.modules()) and \
            not hasattr(model, "patch_embed")

    @property
    def classifier(self) -> nn.Linear:
        head = self.model.get_classifier()
        if not isinstance(head, nn.Linear):
            raise TypeError(f"{self.arch}: classifier is {type(head).__name__}, expected nn.Linear")
        return head

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(self.model.forward_features(inputs), pre_logits=True)

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head_dropout(feats))

    def layer_groups(self) -> list[LayerGroup]:
        groups = [g for g in self._body_groups() if g.params]
        groups.append(LayerGroup("head", self._classifier_params()))
        return groups

    def _classifier_params(self) -> list[tuple[str, nn.Parameter]]:
        ids = {id(p) for p in self.classifier.parameters()}
        return [(n, p) for n, p in self.net.named_parameters() if id(p) in ids]

    def _body_groups(self) -> list[LayerGroup]:
        # self.net, not self.model: timm's group regexes expect the model's own parameter names, not a
        # PEFT wrapper's (injected adapters keep the block prefix, so they land in their block's group).
        net = self.net
        head_ids = {id(p) for p in self.classifier.parameters()}
        named = [(n, p) for n, p in net.named_parameters() if id(p) not in head_ids]
        if hasattr(net, "group_matcher"):
            from timm.models import group_parameters

            try:
                mapping = group_parameters(net, net.group_matcher(coarse=True))
            except Exception:  # noqa: BLE001 - a model with a broken matcher falls back to children
                mapping = None
            if mapping:
                lookup = dict(named)
                groups = []
                for gid, names in mapping.items():
                    params = [(n, lookup[n]) for n in names if n in lookup]
                    if params:
                        groups.append(LayerGroup(_group_name(params), params))
                return groups
        # Fallback: one group per top-level child, in registration order.
        by_child: dict[str, list] = {}
        for n, p in named:
            by_child.setdefault(n.split(".")[0], []).append((n, p))
        return [LayerGroup(k, v) for k, v in by_child.items()]

    def reset_head(self, num_classes: int) -> None:
        self.model.reset_classifier(num_classes)

    def data_config(self) -> dict[str, Any]:
        import timm.data

        cfg = timm.data.resolve_data_config({}, model=self.net)
        return {
            "input_size": int(cfg["input_size"][-1]),
            "mean": [float(x) for x in cfg["mean"]],
            "std": [float(x) for x in cfg["std"]],
            "interpolation": cfg.get("interpolation", "bilinear"),
            "crop_pct": float(cfg.get("crop_pct", 0.875)),
        }

    def describe(self) -> dict[str, Any]:
        return self._with_peft({"kind": "timm", "name": self.name, "arch": self.arch,
                                "num_classes": self.num_classes, "dropout": self.head_dropout.p})


def _group_name(params: list[tuple[str, Any]]) -> str:
    first = params[0][0].split(".")
    return ".".join(first[:2]) if first[0] in ("blocks", "stages", "layers", "features") else first[0]


def build_timm(arch: str, *, name: str, num_classes: int, pretrained: bool,
               state_dict: dict | None = None) -> TimmBackbone:
    import timm

    if state_dict is not None:
        model = timm.create_model(arch, pretrained=False)
        model.load_state_dict(state_dict, strict=True)
    else:
        model = timm.create_model(arch, pretrained=pretrained)
    bb = TimmBackbone(model, name=name, arch=arch)
    bb.reset_head(num_classes)
    return bb
