"""The dense form of depthwise convolutions on tiny maps (train.small_depthwise) is the same function."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ajuste.training.small_depthwise import SmallMapDepthwiseConv2d, small_map_depthwise


@pytest.mark.parametrize("size,kernel,stride,dilation,bias,channels_last", [
    (2, 5, 1, 1, False, True), (3, 5, 1, 1, True, False), (4, 3, 2, 1, False, True), (3, 3, 2, 1, True, True),
    (4, 3, 1, 2, False, False), (1, 3, 1, 1, True, True), ((2, 4), 3, 1, 1, False, False)])
def test_dense_form_matches_the_convolution_and_its_gradients(size, kernel, stride, dilation, bias, channels_last):
    h, w = (size, size) if isinstance(size, int) else size
    torch.manual_seed(0)
    ref = nn.Conv2d(24, 24, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                    groups=24, bias=bias)
    fast = nn.Conv2d(24, 24, kernel, stride=stride, padding=dilation * (kernel // 2), dilation=dilation,
                     groups=24, bias=bias)
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(5, 24, h, w)
    if channels_last:
        x = x.contiguous(memory_format=torch.channels_last)
    xr, xf = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    with small_map_depthwise(fast) as n:
        assert n == 1 and type(fast) is SmallMapDepthwiseConv2d
        yf = fast(xf)
    yr = ref(xr)
    assert yf.shape == yr.shape
    torch.testing.assert_close(yf, yr, atol=1e-5, rtol=1e-5)
    assert yf.is_contiguous(memory_format=torch.channels_last) == (channels_last and yr.dim() == 4
                                                                    and yr.is_contiguous(memory_format=torch.channels_last))
    g = torch.randn_like(yr)
    (yr * g).sum().backward()
    (yf * g).sum().backward()
    torch.testing.assert_close(xf.grad, xr.grad, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(fast.weight.grad, ref.weight.grad, atol=1e-4, rtol=1e-5)
    if bias:
        torch.testing.assert_close(fast.bias.grad, ref.bias.grad, atol=1e-4, rtol=1e-5)


def test_only_depthwise_layers_switch_and_the_class_is_restored():
    net = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.Conv2d(8, 8, 3, padding=1, groups=8),
                        nn.Conv2d(8, 16, 1), nn.Conv2d(16, 16, 3, padding=1, groups=4))
    before = net.state_dict()
    with pytest.raises(RuntimeError), small_map_depthwise(net) as n:
        assert n == 1
        assert [type(m).__name__ for m in net] == ["Conv2d", "SmallMapDepthwiseConv2d", "Conv2d", "Conv2d"]
        raise RuntimeError("interrupted")
    assert all(type(m) is nn.Conv2d for m in net)
    assert net.state_dict().keys() == before.keys()
    with small_map_depthwise(net, enabled=False) as n:
        assert n == 0 and type(net[1]) is nn.Conv2d


def test_forward_only_and_large_maps_keep_the_convolution(monkeypatch):
    conv = nn.Conv2d(8, 8, 3, padding=1, groups=8)
    calls = []
    monkeypatch.setattr(nn.Conv2d, "_conv_forward", lambda self, x, w, b: calls.append(x.shape) or x)
    with small_map_depthwise(conv):
        conv(torch.randn(2, 8, 8, 8))  # 64 pixels: above the limit
        with torch.no_grad():
            conv(torch.randn(2, 8, 2, 2))
        conv(torch.randn(2, 8, 2, 2))  # grad on, tiny map: the dense form
    assert calls == [torch.Size([2, 8, 8, 8]), torch.Size([2, 8, 2, 2])]
