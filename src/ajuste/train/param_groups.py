"""Optimizer parameter groups from layer groups: pure functions, no module names.

Rules: biases and norm weights (ndim ≤ 1) get no weight decay; the head gets ``head_lr``; body group
``i`` of ``n`` gets ``lr × layer_decay^(n-1-i)`` (the top body group learns at ``lr``).
"""

from __future__ import annotations

from typing import Any


def build_param_groups(layer_groups: list[Any], *, trainable: list[int] | None, lr: float, head_lr: float,
                       weight_decay: float, layer_decay: float = 1.0) -> list[dict[str, Any]]:
    n = len(layer_groups)
    chosen = sorted(set(range(n)) if trainable is None else {i % n for i in trainable})
    n_body = n - 1
    out: list[dict[str, Any]] = []
    for i in chosen:
        group = layer_groups[i]
        is_head = i == n - 1
        group_lr = head_lr if is_head else lr * layer_decay ** (n_body - 1 - i)
        decay = [p for _, p in group.params if p.ndim > 1]
        no_decay = [p for _, p in group.params if p.ndim <= 1]
        for params, wd, suffix in ((decay, weight_decay, ""), (no_decay, 0.0, ".no_decay")):
            if params:
                out.append({"params": params, "lr": group_lr, "base_lr": group_lr, "weight_decay": wd,
                            "name": group.name + suffix})
    return out


def make_optimizer(name: str, groups: list[dict[str, Any]], *, momentum: float = 0.9):
    import torch

    if name == "sgd":
        return torch.optim.SGD(groups, momentum=momentum, nesterov=True)
    return torch.optim.AdamW(groups, betas=(0.9, 0.999), eps=1e-8)
