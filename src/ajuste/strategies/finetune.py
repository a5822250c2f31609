"""Registers the fine-tuning strategies (one module each)."""

from ajuste.strategies import (  # noqa: F401
    discriminative,
    full,
    gradual,
    linear_probe,
    partial,
    two_stage,
)
