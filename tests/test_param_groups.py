from __future__ import annotations

import math

import pytest
import torch

from ajuste.backbones.base import LayerGroup
from ajuste.training.param_groups import build_param_groups
from ajuste.training.schedules import warmup_cosine, warmup_constant


def _groups():
    lin = [torch.nn.Linear(3, 3) for _ in range(4)]
    return [LayerGroup(f"g{i}", list(m.named_parameters(prefix=f"g{i}"))) for i, m in enumerate(lin[:3])] + \
        [LayerGroup("head", list(lin[3].named_parameters(prefix="head")))]


def test_no_weight_decay_on_biases_and_norms():
    pg = build_param_groups(_groups(), trainable=None, lr=1e-3, head_lr=1e-2, weight_decay=0.05)
    for g in pg:
        dims = {p.ndim for p in g["params"]}
        assert (g["weight_decay"] == 0.0) == (dims == {1}), g["name"]


def test_layer_decay_and_head_lr():
    pg = build_param_groups(_groups(), trainable=None, lr=1.0, head_lr=5.0, weight_decay=0.0, layer_decay=0.5)
    lrs = {g["name"].split(".")[0]: g["lr"] for g in pg}
    assert lrs == {"g0": 0.25, "g1": 0.5, "g2": 1.0, "head": 5.0}


def test_trainable_subset_only():
    pg = build_param_groups(_groups(), trainable=[2, -1], lr=1.0, head_lr=1.0, weight_decay=0.0)
    assert {g["name"].split(".")[0] for g in pg} == {"g2", "head"}


def test_warmup_then_cosine_to_floor():
    assert warmup_cosine(0.0, warmup=0.1) < 0.05
    assert warmup_cosine(0.1, warmup=0.1) == pytest.approx(1.0)
    vals = [warmup_cosine(x / 100, warmup=0.1) for x in range(10, 101)]
    assert all(a >= b for a, b in zip(vals, vals[1:]))
    assert warmup_cosine(1.0, warmup=0.1, final=0.01) == pytest.approx(0.01)
    assert warmup_constant(0.5) == 1.0
    assert math.isclose(warmup_cosine(0.55, warmup=0.1, final=0.0), 0.5, abs_tol=1e-9)
