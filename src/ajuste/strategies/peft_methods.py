"""Registers the parameter-efficient strategies (one module each)."""

from ajuste.strategies import bitfit, ia3, lora, prefix_tuning, prompt_tuning  # noqa: F401
