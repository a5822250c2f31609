"""Training through frozen BatchNorm without running it: the norm is folded into the convolution before it.

A BatchNorm in eval mode (fine-tuning keeps the pretrained statistics, ``model.bn=frozen``) is an affine map
per channel, ``y = conv(x)·s + t`` with ``s = γ/√(var+ε)`` and ``t = β − mean·s``. Run as a layer it is a full
pass over the activation forward and three backward (the input gradient and the γ/β reductions); at 224 px
those memory-bound passes were ~27% of an EfficientNet-Lite0 step on CPU. The same function is
``conv_{W·s}(x) + t``: scaling the weight costs a pass over the weight only, the convolution kernel adds the
bias, and autograd still sends gradients to W, γ and β (the statistics are buffers, not trained).

Within :func:`folded_frozen_batchnorm` each (convolution, BatchNorm) pair found by tracing a probe batch
has its class swapped for a subclass that folds on the fly whenever the norm is in eval mode and behaves as
before when it trains (scratch, ``model.bn=train``): a phase may switch between the two. Parameters, buffers,
state dicts, hooks and optimizers are untouched; the classes are restored on exit.
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch
from torch import nn

_BN_KEY = "_ajuste_folded_bn"  # in the conv's __dict__: a plain reference, not a registered submodule
_SUBCLASSES: dict[tuple[type, str], type] = {}


def base_class(m: nn.Module) -> type:
    """The module's class before folding swapped it (its own class otherwise)."""
    return getattr(type(m), "_ajuste_base", type(m))


def _subclass(cls: type, role: str) -> type:
    key = (cls, role)
    if key not in _SUBCLASSES:
        body = _ConvFold if role == "conv" else _NormFold
        _SUBCLASSES[key] = type(f"Folded{cls.__name__}", (body, cls), {"_ajuste_base": cls})
    return _SUBCLASSES[key]


def folded_conv(conv: nn.Conv2d, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Weight and bias of ``conv`` with the eval-mode ``bn`` after it folded in: the norm is ``x·s + t``
    per channel, so W·s (per output channel) and b·s + t (t alone without a conv bias)."""
    inv = torch.rsqrt(bn.running_var + bn.eps)
    if bn.affine:
        scale = bn.weight * inv
        shift = bn.bias - bn.running_mean * scale
    else:
        scale, shift = inv, -bn.running_mean * inv
    weight = conv.weight * scale.view(-1, *([1] * (conv.weight.ndim - 1)))  # (Cout, Cin/g, kh, kw)
    return weight, shift if conv.bias is None else conv.bias * scale + shift


class _ConvFold:
    """Mixed in before the convolution's own class: its forward with the next norm folded in."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bn = self.__dict__[_BN_KEY]
        base = type(self)._ajuste_base
        if bn.training:
            return base.forward(self, x)
        weight, bias = folded_conv(self, bn)
        params = self._parameters
        saved = params["weight"], params["bias"]
        # The class's forward reads self.weight/self.bias (timm's Conv2dSame pads first, the small-map
        # depthwise form has its own kernel): lend it the folded tensors for this one call.
        params["weight"], params["bias"] = weight, bias
        try:
            return base.forward(self, x)
        finally:
            params["weight"], params["bias"] = saved


class _NormFold:
    """Mixed in before the norm's class: in eval mode only what follows the norm (timm's dropout and
    activation of BatchNormAct2d; nothing for a plain BatchNorm2d) — the convolution applied the norm."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training:
            return type(self)._ajuste_base.forward(self, x)
        if hasattr(self, "act"):
            return self.act(self.drop(x))
        return x


def find_pairs(net: nn.Module, probe: Any) -> list[tuple[nn.Conv2d, nn.BatchNorm2d]]:
    """(convolution, BatchNorm) pairs where the norm's input is the very tensor the convolution returned,
    traced on ``probe`` in eval mode; each module in at most one pair. Only plain BatchNorm2d and timm's
    BatchNormAct2d (norm, then dropout and activation) qualify. A convolution whose output is also used
    elsewhere would be folded for that use too: callers compare outputs before trusting the pairs."""
    # id of each convolution's output -> (conv, the output itself, its version). Holding the tensor keeps its
    # id from being reused by a later one; the version counter tells an output changed in place before the
    # norm saw it (an adapter adding its delta with `+=`), which must not be folded.
    convs: dict[int, tuple[nn.Conv2d, torch.Tensor, int]] = {}
    pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]] = []

    def conv_out(mod: nn.Module, args: Any, out: torch.Tensor) -> None:
        convs[id(out)] = (mod, out, out._version)

    def norm_in(mod: nn.Module, args: Any) -> None:
        hit = convs.get(id(args[0]))
        if hit is not None and hit[1] is args[0] and hit[2] == args[0]._version:
            pairs.append((hit[0], mod))

    handles = []
    for m in net.modules():
        cls = base_class(m)
        if issubclass(cls, nn.Conv2d):
            handles.append(m.register_forward_hook(conv_out))
        elif issubclass(cls, nn.BatchNorm2d) and m.track_running_stats and (
                cls is nn.BatchNorm2d or cls.__name__ == "BatchNormAct2d"):
            handles.append(m.register_forward_pre_hook(norm_in))
    try:
        with _eval_mode(net):
            _outputs(net, probe)
    finally:
        for h in handles:
            h.remove()
        convs.clear()
    out, seen = [], set()
    for conv, bn in pairs:
        if id(conv) in seen or id(bn) in seen:
            continue
        seen.update((id(conv), id(bn)))
        out.append((conv, bn))
    return out


def unfold(net: nn.Module) -> None:
    """Give every module swapped by folding its class back (also for deep copies made meanwhile)."""
    for m in net.modules():
        if hasattr(type(m), "_ajuste_base"):
            m.__class__ = type(m)._ajuste_base
            m.__dict__.pop(_BN_KEY, None)


@contextlib.contextmanager
def _eval_mode(net: nn.Module) -> Iterator[None]:
    """Every module in eval mode for the block, then each back to its own mode (``net.train()`` would also
    wake the norms a fine-tuning run keeps frozen)."""
    modes = [(m, m.training) for m in net.modules()]
    net.eval()
    try:
        yield
    finally:
        for m, mode in modes:
            m.training = mode


def _outputs(net: nn.Module, probe: Any) -> Any:
    """The features of ``probe`` (an image batch, or a dict of model inputs), without gradients."""
    with torch.no_grad():
        if isinstance(probe, dict):
            return net(**probe)
        return net.forward_features(probe) if hasattr(net, "forward_features") else net(probe)


@contextlib.contextmanager
def folded_frozen_batchnorm(net: nn.Module, probe: Any, enabled: bool = True) -> Iterator[int]:
    """Within the block, eval-mode BatchNorms that directly follow a convolution are folded into it on
    every forward pass; yields how many pairs. The pairs are kept only if ``probe`` gives the same
    outputs folded as not (eval mode); otherwise nothing is folded."""
    pairs = find_pairs(net, probe) if enabled else []
    if pairs:
        with _eval_mode(net):
            want = _outputs(net, probe)
            _swap(pairs)
            got = _outputs(net, probe)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-3, atol=1e-4):
            unfold(net)
            pairs = []
    try:
        yield len(pairs)
    finally:
        unfold(net)


def _swap(pairs: list[tuple[nn.Conv2d, nn.BatchNorm2d]]) -> None:
    for conv, bn in pairs:
        conv.__dict__[_BN_KEY] = bn
        conv.__class__ = _subclass(type(conv), "conv")
        bn.__class__ = _subclass(type(bn), "norm")
