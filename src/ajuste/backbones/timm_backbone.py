"""timm image models behind the Backbone interface."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ajuste.backbones.base import Backbone, LayerGroup, Split, call_until


class TimmBackbone(Backbone):
    modality = "image"

    def __init__(self, model: nn.Module, *, name: str, arch: str, model_args: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.model = model
        self.name = name
        self.arch = arch
        self.model_args = dict(model_args or {})  # timm.create_model keywords beyond the name (compact nets)
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

    def _split_body(self, g: int, groups: list[LayerGroup]) -> Split | None:
        """Cut at the first module of group ``g`` in the exact tail of ``forward_features``.

        One traced forward pass records the calls of the net's children (a Sequential/ModuleList child
        counts by its own children: stages, blocks). The *tail* is the longest run of calls at the end in
        which each module's only input is the previous module's output object and the last output is
        what ``forward_features`` returns: from any module of the tail, running the tail reproduces
        ``forward_features`` exactly (a ViT's position-embedding glue sits before its tail). The prefix
        is the real forward pass stopped at the cut, so it needs no such structure."""
        net = self.net
        tail = _exact_tail(net, self.data_config()["input_size"])
        if not tail:
            return None
        first = {id(p) for _, p in groups[g].params}
        pos = next((i for i, (_, m) in enumerate(tail) if any(id(p) in first for p in m.parameters())), None)
        if pos is None:
            return None
        suffix = [m for _, m in tail[pos:]]
        called = {id(m) for _, m in tail}
        # Modules forward_features never calls (global pool, a MobileNetV3's conv_head): forward_head's.
        head_side = [m for m in net.children() if id(m) not in called and not _contains_called(m, called)]
        suffix_ids = {id(p) for m in suffix + head_side for p in m.parameters()}
        upper = {id(p) for grp in groups[g:] for _, p in grp.params}
        if not upper <= suffix_ids | {id(p) for p in self.classifier.parameters()}:
            return None  # a parameter of a trainable group would run inside the cached prefix
        start = tail[pos][1]

        def prefix(x: torch.Tensor) -> torch.Tensor:
            return call_until(net, start, lambda: net.forward_features(x))

        def rest(h: torch.Tensor) -> torch.Tensor:
            for m in suffix:
                h = m(h)
            return net.forward_head(h, pre_logits=True)

        return Split(g, tail[pos][0], suffix + head_side, prefix, rest)

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
        desc = {"kind": "timm", "name": self.name, "arch": self.arch,
                "num_classes": self.num_classes, "dropout": self.head_dropout.p}
        if self.model_args:
            desc["model_args"] = self.model_args
        return self._with_peft(desc)


def _chain_candidates(net: nn.Module) -> list[tuple[str, nn.Module]]:
    out = []
    for name, child in net.named_children():
        if isinstance(child, (nn.Sequential, nn.ModuleList)) and len(child) > 0:
            out.extend((f"{name}.{n}", m) for n, m in child.named_children())
        else:
            out.append((name, child))
    return out


def _contains_called(module: nn.Module, called: set[int]) -> bool:
    return any(id(m) in called for m in module.modules())


@torch.no_grad()
def _exact_tail(net: nn.Module, input_size: int) -> list[tuple[str, nn.Module]]:
    """The calls at the end of ``forward_features`` that form an exact chain (see ``_split_body``)."""
    calls: list[tuple[str, nn.Module, tuple, dict, Any]] = []
    handles = []
    for name, m in _chain_candidates(net):
        handles.append(m.register_forward_hook(
            lambda mod, args, kwargs, out, name=name: calls.append((name, mod, args, kwargs, out)), with_kwargs=True))
    was_training = net.training
    net.eval()
    try:
        # A small probe where the model allows it (convnets); fixed-size models (ViT) need their own size.
        size = min(64, input_size)
        try:
            out = net.forward_features(torch.zeros(1, 3, size, size))
        except Exception:  # noqa: BLE001
            calls.clear()
            out = net.forward_features(torch.zeros(1, 3, input_size, input_size))
    finally:
        for h in handles:
            h.remove()
        net.train(was_training)
    if not calls or calls[-1][4] is not out:
        return []
    if len({id(c[1]) for c in calls}) != len(calls):
        return []  # a module called twice: no single cut point
    start = len(calls) - 1
    while start > 0:
        _, _, args, kwargs, _ = calls[start]
        if kwargs or len(args) != 1 or args[0] is not calls[start - 1][4]:
            break
        start -= 1
    _, _, args, kwargs, _ = calls[start]
    if kwargs or len(args) != 1:
        start += 1
    return [(name, mod) for name, mod, *_ in calls[start:]]


def _group_name(params: list[tuple[str, Any]]) -> str:
    first = params[0][0].split(".")
    return ".".join(first[:2]) if first[0] in ("blocks", "stages", "layers", "features") else first[0]


def build_timm(arch: str, *, name: str, num_classes: int, pretrained: bool,
               state_dict: dict | None = None, model_args: dict[str, Any] | None = None) -> TimmBackbone:
    import timm

    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in (model_args or {}).items()}
    if state_dict is not None:
        model = timm.create_model(arch, pretrained=False, **kwargs)
        model.load_state_dict(state_dict, strict=True)
    else:
        model = timm.create_model(arch, pretrained=pretrained, **kwargs)
    bb = TimmBackbone(model, name=name, arch=arch, model_args=model_args)
    bb.reset_head(num_classes)
    return bb
