"""The Backbone interface every strategy works against.

A Backbone is an ``nn.Module`` that maps inputs to logits and also exposes its parts:
``layer_groups()`` ordered input→output with the new classification head last, ``features`` (pooled,
pre-logit) and ``classify`` (head only) so frozen features can be cached, ``reset_head``,
``reinitialize`` for training from scratch, and ``data_config()`` for preprocessing.
Strategies never name modules: they pick group indices.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from ajuste.backbones.adapters import (
    adapter_candidates,
    auto_ia3_targets,
    auto_lora_targets,
)
from ajuste.backbones.frozen_bn import find_pairs, folded_conv, unfold

_BN_TYPES = (nn.modules.batchnorm._BatchNorm,)


class _StopForward(Exception):
    """Raised by a pre-hook to end a forward pass at a split point; carries the activations there."""

    def __init__(self, acts: Any) -> None:
        super().__init__()
        self.acts = acts


@dataclass
class Split:
    """A cut of the forward pass at the input of layer group ``group`` (frozen-prefix caching).

    ``forward_prefix`` computes the activations there, ``forward_suffix`` the pooled features from them;
    ``suffix`` are the modules the suffix runs (everything else is prefix: its weights key a cache).
    ``ragged``: per-token activations of variable length (text), stored per example without padding.
    """

    group: int
    name: str
    suffix: list[nn.Module]
    prefix: Any  # callable(inputs) -> activations
    rest: Any  # callable(activations) -> pooled features
    ragged: bool = False


def call_until(net: nn.Module, stop_at: nn.Module, run: Any) -> Any:
    """Run ``run()`` (a forward pass through ``net``) and return the first positional input (or the
    ``hidden_states`` keyword) of ``stop_at``, ending the pass there: the prefix costs nothing past the cut."""

    def hook(module: nn.Module, args: tuple, kwargs: dict) -> None:
        raise _StopForward(args[0] if args else kwargs["hidden_states"])

    handle = stop_at.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        run()
    except _StopForward as stop:
        return stop.acts
    finally:
        handle.remove()
    raise RuntimeError(f"{type(stop_at).__name__} was not called by the forward pass")


@dataclass
class LayerGroup:
    name: str
    params: list[tuple[str, nn.Parameter]] = field(default_factory=list)

    def numel(self) -> int:
        return sum(p.numel() for _, p in self.params)


class Backbone(nn.Module):
    """Base class. Subclasses set ``modality`` and implement the abstract parts."""

    modality: str = "image"
    is_convnet: bool = False
    inner_attr: str = "model"  # attribute holding the pretrained network (PEFT wraps it in place)

    def __init__(self) -> None:
        super().__init__()
        self._frozen_norms: list[nn.Module] = []
        self.head_dropout = nn.Dropout(0.0)
        # The resolved PEFT spec once adapters are injected (ajuste.backbones.adapters); in backbone.json.
        self.peft: dict[str, Any] | None = None

    # --- abstract -------------------------------------------------------------------------------
    def features(self, inputs: Any) -> torch.Tensor:
        """Pooled pre-logit features, shape (B, num_features)."""
        raise NotImplementedError

    @property
    def classifier(self) -> nn.Linear:
        raise NotImplementedError

    def _body_groups(self) -> list[LayerGroup]:
        """Backbone parameter groups ordered input→output, head excluded."""
        raise NotImplementedError

    def reset_head(self, num_classes: int) -> None:
        raise NotImplementedError

    def data_config(self) -> dict[str, Any]:
        raise NotImplementedError

    def describe(self) -> dict[str, Any]:
        """What it takes to rebuild this backbone from a run directory (JSON-serialisable)."""
        raise NotImplementedError

    # --- shared ---------------------------------------------------------------------------------
    @property
    def num_features(self) -> int:
        return self.classifier.in_features

    @property
    def num_classes(self) -> int:
        return self.classifier.out_features

    def classify(self, feats: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head_dropout(feats))

    def forward(self, inputs: Any) -> torch.Tensor:
        return self.classify(self.features(inputs))

    def why_not_format(self, format: str) -> str | None:
        """Why this model cannot be exported in ``format`` (with the format to use instead), or None."""
        return None

    def set_dropout(self, p: float) -> None:
        self.head_dropout.p = float(p)

    def layer_groups(self) -> list[LayerGroup]:
        groups = [g for g in self._body_groups() if g.params]
        groups.append(LayerGroup("head", list(self.classifier.named_parameters(prefix="classifier"))))
        return groups

    def set_trainable(self, group_indices: list[int] | None, *, freeze_bn_stats: bool = False,
                      select: str | None = None) -> None:
        """Train exactly these layer groups (None = all); everything else is frozen. With ``select``
        (a regex over parameter names: PEFT adapters, biases) the matching parameters and the head
        train instead, whatever ``group_indices`` says.

        Norm layers whose parameters are all frozen are remembered and kept in eval mode by
        ``train()``: their running statistics must not drift (pytorch #66073). With
        ``freeze_bn_stats`` every BatchNorm stays in eval mode (its affine part may still train):
        pretrained statistics survive unfreezing, so a head trained on them stays valid.
        """
        for p in self.parameters():
            p.requires_grad_(False)
        for p in self.trainable_selection(group_indices, select=select):
            p.requires_grad_(True)
        self._frozen_norms = [
            m for m in self.modules()
            if isinstance(m, _BN_TYPES)
            and (freeze_bn_stats or not any(p.requires_grad for p in m.parameters(recurse=False)))
        ]
        self.train(self.training)

    def trainable_selection(self, group_indices: list[int] | None, *, select: str | None = None) -> list[nn.Parameter]:
        """The parameters ``set_trainable`` would train (see there)."""
        groups = self.layer_groups()
        if select is not None:
            # Only parameters of layer groups qualify: parts the forward pass never uses (an HF pooler)
            # would sit in the optimizer without a gradient.
            pattern = re.compile(select)
            names = {id(p): n for n, p in self.named_parameters()}
            body = [p for g in groups[:-1] for _, p in g.params if pattern.search(names.get(id(p), ""))]
            return body + [p for _, p in groups[-1].params]
        chosen = set(range(len(groups))) if group_indices is None else {i % len(groups) for i in group_indices}
        return [p for i in sorted(chosen) for _, p in groups[i].params]

    # --- split forward (frozen-prefix cache, ajuste.training.cache) --------------------------------
    def split(self, group: int) -> Split | None:
        """The cut at the input of layer group ``group`` (negative counts from the head), or None where
        this backbone cannot cut there. At the head the activations are the pooled features."""
        groups = self.layer_groups()
        g = group % len(groups)
        if g == len(groups) - 1:
            return Split(g, "features", [self.classifier, self.head_dropout], self.features, lambda acts: acts)
        if g == 0:
            return None  # nothing is frozen below the first group
        key = (g, id(self.net))
        cache = self.__dict__.setdefault("_splits", {})
        if key not in cache:
            try:
                cache[key] = self._split_body(g, groups)
            except Exception:  # noqa: BLE001 - an architecture the tracer does not understand: no cut
                cache[key] = None
        return cache[key]

    def _split_body(self, g: int, groups: list[LayerGroup]) -> Split | None:
        """Subclasses: the cut at the input of body group ``g`` (1 ≤ g < head), or None."""
        return None

    def forward_prefix(self, inputs: Any, group: int) -> Any:
        """Activations at the input of layer group ``group`` (see ``split``)."""
        sp = self.split(group)
        if sp is None:
            raise ValueError(f"{type(self).__name__} cannot split its forward pass at layer group {group}")
        return sp.prefix(inputs)

    def forward_suffix(self, acts: Any, group: int) -> torch.Tensor:
        """Pooled features from the activations ``forward_prefix(inputs, group)`` returned:
        ``forward_suffix(forward_prefix(x, g), g) == features(x)``."""
        sp = self.split(group)
        if sp is None:
            raise ValueError(f"{type(self).__name__} cannot split its forward pass at layer group {group}")
        return sp.rest(acts)

    def prefix_state(self, split: Split) -> list[tuple[str, torch.Tensor]]:
        """Parameters and buffers the prefix of ``split`` may use (all but the suffix modules'): what a
        cached activation depends on besides the input."""
        suffix_ids = {id(t) for m in split.suffix for t in (*m.parameters(), *m.buffers())}
        return [(n, t) for n, t in self.state_dict(keep_vars=True).items() if id(t) not in suffix_ids]

    def inference_copy(self, probe: Any = None) -> "Backbone":
        """A copy for frozen, forward-only passes (filling the activation cache): every BatchNorm that
        directly follows a convolution is folded into it. On a 1-thread AVX2 EPYC the BatchNorms took 3.5 of
        12.3 s of EfficientNet-Lite0's frozen forward (each is a full pass over its activations); folded,
        they cost nothing. The copy is kept only if ``probe`` (an input batch) gives the same features as
        the original; otherwise, and for networks without BatchNorm, this returns ``self``."""
        if not any(isinstance(m, _BN_TYPES) for m in self.modules()) or probe is None:
            return self
        import copy


        twin = copy.deepcopy(self).eval()
        unfold(twin)  # a copy made while training folds on the fly: fold it for good instead
        if not fold_batchnorms(twin.net, probe):
            return self
        with torch.no_grad():
            was = self.training
            self.eval()
            try:
                want = self.features(probe)
            finally:
                self.train(was)
            got = twin.features(probe)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            return self
        return twin

    def train(self, mode: bool = True) -> "Backbone":
        super().train(mode)
        if mode:
            for m in self._frozen_norms:
                m.eval()
        return self

    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters() if p.requires_grad)

    def total_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    # --- PEFT support (ajuste.backbones.adapters) -------------------------------------------------
    @property
    def net(self) -> nn.Module:
        """The pretrained network without a PEFT wrapper (injected adapter layers stay in it)."""
        inner = getattr(self, self.inner_attr)
        return inner.get_base_model() if hasattr(inner, "peft_config") and hasattr(inner, "get_base_model") \
            else inner

    def _adapter_excluded(self) -> set[int]:
        """Ids of modules inside ``net`` that must not get adapters (the head, unused parts)."""
        return {id(self.classifier)}

    def adapter_candidates(self) -> dict[str, nn.Module]:
        """Modules of ``net`` that can take a LoRA/IA3 adapter, by name: linear layers and ungrouped
        convolutions below the head."""
        return adapter_candidates(self.net, self._adapter_excluded())

    def lora_targets(self, r: int) -> list[str]:
        """Auto LoRA targets from the structure (attention query/value; else 1x1 convs) with rank room for ``r``."""
        return auto_lora_targets(self.adapter_candidates(), r, net_modules=dict(self.net.named_modules()))

    def linear_targets(self) -> list[str]:
        """``peft.targets=all-linear``: every linear layer (nn.Linear, transformers Conv1D) below the head."""
        return [n for n, m in self.adapter_candidates().items() if not isinstance(m, (nn.Conv1d, nn.Conv2d))]

    def ia3_targets(self) -> tuple[list[str], list[str]]:
        """Auto IA3 targets and the feed-forward subset (whose input, not output, is rescaled)."""
        return auto_ia3_targets(self.adapter_candidates(), net_modules=dict(self.net.named_modules()))

    def _with_peft(self, desc: dict[str, Any]) -> dict[str, Any]:
        return {**desc, "peft": self.peft} if self.peft else desc

    def reinitialize(self, *, seed: int | None = None) -> None:
        """Re-initialise every weight for training from scratch: He (Kaiming) for convolutions,
        Xavier for linear/attention projections, unit/zero for norms, N(0, 0.02) for embeddings."""
        gen_state = torch.random.get_rng_state()
        if seed is not None:
            torch.manual_seed(seed)
        try:
            for m in self.modules():
                reinit_module(m)
        finally:
            if seed is not None:
                torch.random.set_rng_state(gen_state)


class _ActOnly(nn.Module):
    """What is left of a norm+activation module (timm's BatchNormAct2d) once its norm is folded away."""

    def __init__(self, drop: nn.Module, act: nn.Module) -> None:
        super().__init__()
        self.drop, self.act = drop, act

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.drop(x))


@torch.no_grad()
def fold_batchnorms(net: nn.Module, probe: Any) -> int:
    """Fold eval-mode BatchNorm2d into the Conv2d whose output it directly normalises, for good; returns
    how many. Pairs as in ``ajuste.backbones.frozen_bn.find_pairs`` (the caller compares outputs before
    trusting the result); each norm is replaced by what follows it (nothing, or timm's dropout+activation)."""
    parents = {id(child): (parent, name) for parent in net.modules() for name, child in parent.named_children()}
    folded = 0
    for conv, bn in find_pairs(net, probe):
        if id(bn) not in parents:
            continue
        weight, bias = folded_conv(conv, bn)
        conv.weight.copy_(weight)
        conv.bias = nn.Parameter(bias.detach().clone(), requires_grad=False)
        parent, name = parents[id(bn)]
        replacement = nn.Identity() if type(bn) is nn.BatchNorm2d else _ActOnly(bn.drop, bn.act)
        setattr(parent, name, replacement)
        folded += 1
    return folded


def reinit_module(m: nn.Module) -> None:
    if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Linear):
        nn.init.xavier_uniform_(m.weight)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.Embedding):
        nn.init.normal_(m.weight, std=0.02)
        if m.padding_idx is not None:
            with torch.no_grad():
                m.weight[m.padding_idx].zero_()
    elif isinstance(m, _BN_TYPES):
        m.reset_running_stats()
        if m.affine:
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
    elif isinstance(m, (nn.LayerNorm, nn.GroupNorm)) or type(m).__name__.endswith("LayerNorm"):
        w, b = getattr(m, "weight", None), getattr(m, "bias", None)
        if isinstance(w, torch.Tensor):
            nn.init.ones_(w)
        if isinstance(b, torch.Tensor):
            nn.init.zeros_(b)
    else:
        # Parameters owned directly by unusual modules (e.g. a ViT's cls token / pos embedding).
        for name, p in m.named_parameters(recurse=False):
            if p.ndim >= 2:
                nn.init.trunc_normal_(p, std=0.02)
            elif "scale" in name or "gamma" in name:
                nn.init.ones_(p)
            else:
                nn.init.zeros_(p)
