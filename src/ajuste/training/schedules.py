"""Learning-rate schedules as pure functions of training progress (0 → 1)."""

from __future__ import annotations

import math


def warmup_cosine(progress: float, *, warmup: float = 0.1, final: float = 0.01) -> float:
    """Multiplier of the base LR at ``progress`` ∈ [0, 1] of a phase.

    1) linear warmup from ~0 to 1 over the first ``warmup`` share of steps;
    2) cosine decay from 1 down to ``final`` over the rest.
    """
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / (warmup + 1e-3)
    rest = (progress - warmup) / max(1e-12, 1.0 - warmup)
    return final + (1.0 - final) * 0.5 * (1.0 + math.cos(math.pi * rest))


def warmup_constant(progress: float, *, warmup: float = 0.1) -> float:
    progress = min(max(progress, 0.0), 1.0)
    if warmup > 0 and progress < warmup:
        return (progress + 1e-3) / (warmup + 1e-3)
    return 1.0


def lr_multiplier(name: str, progress: float, *, warmup: float) -> float:
    if name == "cosine":
        return warmup_cosine(progress, warmup=warmup)
    return warmup_constant(progress, warmup=warmup)
