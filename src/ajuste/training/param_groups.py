"""Optimizer parameter groups from layer groups: pure functions, no module names.

Rules: biases, norm weights and other vectors get no weight decay (ndim ≤ 1, or a vector stored with
singleton dims such as IA3's (n, 1) scales: decay would pull them to 0, not to their identity value 1);
the head gets ``head_lr``; body group ``i`` of ``n`` gets ``lr × layer_decay^(n-1-i)`` (the top body
group learns at ``lr``). ``requires_grad_only`` keeps only the parameters that train (PEFT phases select
parameters inside the groups).
"""

from __future__ import annotations

from typing import Any


def _decays(p: Any) -> bool:
    return sum(s > 1 for s in p.shape) > 1


def build_param_groups(layer_groups: list[Any], *, trainable: list[int] | None, lr: float, head_lr: float,
                       weight_decay: float, layer_decay: float = 1.0,
                       requires_grad_only: bool = False) -> list[dict[str, Any]]:
    n = len(layer_groups)
    chosen = sorted(set(range(n)) if trainable is None else {i % n for i in trainable})
    n_body = n - 1
    out: list[dict[str, Any]] = []
    for i in chosen:
        group = layer_groups[i]
        is_head = i == n - 1
        group_lr = head_lr if is_head else lr * layer_decay ** (n_body - 1 - i)
        params = [p for _, p in group.params if p.requires_grad or not requires_grad_only]
        decay = [p for p in params if _decays(p)]
        no_decay = [p for p in params if not _decays(p)]
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
