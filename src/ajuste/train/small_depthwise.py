"""Depthwise convolutions on tiny feature maps, trained without oneDNN's slow backward pass.

On a CPU, the backward pass of a depthwise convolution over a 2×2 or 3×3 feature map with hundreds of
channels (the last stages of a MobileNet/EfficientNet fed 32–48 px inputs: digits, MedMNIST) costs 30–50 ms
per batch of 64 in oneDNN (and 5–10× more in ATen's native kernel) for well under a millisecond of
arithmetic; on EfficientNet-Lite0 at 48 px those few layers were half of a training step.

On such a map a depthwise convolution is, per channel, a small dense linear map of the H·W input values
to the Ho·Wo outputs. Its matrix is a fixed 0/1 tensor per kernel tap (computed once per geometry by
convolving unit impulses) weighted by the channel's kernel, so the layer becomes one broadcast multiply and
a sum whose backward pass is plain elementwise work. Exact up to float rounding; used only while gradients
are being computed (forward-only passes keep oneDNN, which is fast there) and only on maps of at most
``MAX_PIXELS`` input pixels, where the dense form costs less than the convolution's overhead.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import torch
import torch.nn.functional as F
from torch import nn

MAX_PIXELS = 16  # input maps up to 4×4: the dense form is N·C·(Ho·Wo)·(H·W) multiplies

_BASES: dict[tuple, tuple[torch.Tensor, int, int]] = {}


def _basis(conv: nn.Conv2d, h: int, w: int, same: bool) -> tuple[torch.Tensor, int, int]:
    """(taps, Ho·Wo, H·W) tensor: entry [t, o, i] is 1 where kernel tap t links input pixel i to output o.
    ``same``: the padding is TensorFlow's 'SAME', computed from the input size (timm's Conv2dSame)."""
    key = (conv.kernel_size, conv.stride, "same" if same else conv.padding, conv.dilation, h, w)
    if key not in _BASES:
        kh, kw = conv.kernel_size
        impulses = torch.eye(h * w).view(h * w, 1, h, w)
        taps = torch.eye(kh * kw).view(kh * kw, 1, kh, kw)
        if same:
            from timm.layers.padding import pad_same

            resp = F.conv2d(pad_same(impulses, conv.kernel_size, conv.stride, conv.dilation), taps,
                            stride=conv.stride, dilation=conv.dilation)
        else:
            resp = F.conv2d(impulses, taps, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        ho, wo = resp.shape[-2:]
        _BASES[key] = (resp.permute(1, 2, 3, 0).reshape(kh * kw, ho * wo, h * w).contiguous(), ho, wo)
    return _BASES[key]


def _applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (torch.is_grad_enabled() and x.dim() == 4 and x.shape[-1] * x.shape[-2] <= MAX_PIXELS
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros")


def _dense(conv: nn.Conv2d, x: torch.Tensor, same: bool = False) -> torch.Tensor:
    n, c, h, w = x.shape
    basis, ho, wo = _basis(conv, h, w, same)
    basis = basis.to(device=x.device, dtype=conv.weight.dtype)
    dense = torch.einsum("ct,toi->coi", conv.weight.reshape(c, -1), basis)  # (C, Ho·Wo, H·W)
    y = (x.reshape(n, c, 1, h * w) * dense.unsqueeze(0)).sum(-1).reshape(n, c, ho, wo)
    if conv.bias is not None:
        y = y + conv.bias.view(1, c, 1, 1)
    if x.is_contiguous(memory_format=torch.channels_last):
        y = y.contiguous(memory_format=torch.channels_last)
    return y


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (same parameters and state dict) with the dense form on tiny maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _applies(self, x):
            return super().forward(x)
        return _dense(self, x)


def _same_padding_class() -> type | None:
    """timm's Conv2dSame (TensorFlow 'SAME' padding computed per input: the stride-2 convolutions of the
    tf_* EfficientNets) and a dense-form subclass of it, when timm is installed."""
    global _SAME
    if _SAME is None:
        try:
            from timm.layers.conv2d_same import Conv2dSame
        except ImportError:  # pragma: no cover - timm is a dependency; keep the module importable without it
            _SAME = ()
            return None

        class SmallMapDepthwiseConv2dSame(Conv2dSame):
            def forward(self, x: torch.Tensor) -> torch.Tensor:
                if not _applies(self, x):
                    return super().forward(x)
                return _dense(self, x, same=True)

        _SAME = (Conv2dSame, SmallMapDepthwiseConv2dSame)
    return _SAME or None


_SAME: tuple | None = None


def _is_depthwise(m: nn.Module) -> bool:
    return isinstance(m, nn.Conv2d) and m.groups > 1 and m.groups == m.in_channels == m.out_channels


def _fast_class(m: nn.Module) -> type | None:
    """The dense-form class for a depthwise convolution of a known class, else None."""
    if not _is_depthwise(m):
        return None
    if type(m) is nn.Conv2d:
        return SmallMapDepthwiseConv2d
    same = _same_padding_class()
    if same is not None and type(m) is same[0]:
        return same[1]
    return None


@contextlib.contextmanager
def small_map_depthwise(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, the model's depthwise convolutions use the dense form on tiny maps; yields how
    many layers were switched. The modules keep their identity and parameters (only their class changes,
    and is restored on exit), so optimizers, hooks, state dicts and exports are unaffected."""
    switched = []
    for m in model.modules() if enabled else ():
        fast = _fast_class(m)
        if fast is not None:
            switched.append((m, type(m)))
            m.__class__ = fast
    try:
        yield len(switched)
    finally:
        for m, cls in switched:
            m.__class__ = cls
