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


def _basis(conv: nn.Conv2d, h: int, w: int) -> tuple[torch.Tensor, int, int]:
    """(taps, Ho·Wo, H·W) tensor: entry [t, o, i] is 1 where kernel tap t links input pixel i to output o."""
    key = (conv.kernel_size, conv.stride, conv.padding, conv.dilation, h, w)
    if key not in _BASES:
        kh, kw = conv.kernel_size
        impulses = torch.eye(h * w).view(h * w, 1, h, w)
        taps = torch.eye(kh * kw).view(kh * kw, 1, kh, kw)
        resp = F.conv2d(impulses, taps, stride=conv.stride, padding=conv.padding, dilation=conv.dilation)
        ho, wo = resp.shape[-2:]
        _BASES[key] = (resp.permute(1, 2, 3, 0).reshape(kh * kw, ho * wo, h * w).contiguous(), ho, wo)
    return _BASES[key]


def _applies(conv: nn.Conv2d, x: torch.Tensor) -> bool:
    return (torch.is_grad_enabled() and x.dim() == 4 and x.shape[-1] * x.shape[-2] <= MAX_PIXELS
            and isinstance(conv.padding, tuple) and conv.padding_mode == "zeros")


class SmallMapDepthwiseConv2d(nn.Conv2d):
    """A depthwise ``nn.Conv2d`` (same parameters and state dict) with the dense form on tiny maps."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not _applies(self, x):
            return super().forward(x)
        n, c, h, w = x.shape
        basis, ho, wo = _basis(self, h, w)
        basis = basis.to(device=x.device, dtype=self.weight.dtype)
        dense = torch.einsum("ct,toi->coi", self.weight.reshape(c, -1), basis)  # (C, Ho·Wo, H·W)
        y = (x.reshape(n, c, 1, h * w) * dense.unsqueeze(0)).sum(-1).reshape(n, c, ho, wo)
        if self.bias is not None:
            y = y + self.bias.view(1, c, 1, 1)
        if x.is_contiguous(memory_format=torch.channels_last):
            y = y.contiguous(memory_format=torch.channels_last)
        return y


def is_depthwise(m: nn.Module) -> bool:
    return (type(m) is nn.Conv2d and m.groups > 1 and m.groups == m.in_channels == m.out_channels)


@contextlib.contextmanager
def small_map_depthwise(model: nn.Module, enabled: bool = True) -> Iterator[int]:
    """Within the block, the model's depthwise convolutions use the dense form on tiny maps; yields how
    many layers were switched. The modules keep their identity and parameters (only their class changes,
    and is restored on exit), so optimizers, hooks, state dicts and exports are unaffected."""
    switched = [m for m in model.modules() if is_depthwise(m)] if enabled else []
    for m in switched:
        m.__class__ = SmallMapDepthwiseConv2d
    try:
        yield len(switched)
    finally:
        for m in switched:
            m.__class__ = nn.Conv2d
