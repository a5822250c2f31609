"""ajuste: fine-tune or train from scratch? Answered with evidence.

The Python API (``ajuste.api``; docs/api.md): ``train``, ``compare``, ``tune`` and ``load``, returning ``Run``,
``Study`` and ``Search`` objects. They are imported on first use, so ``import ajuste`` (and ``ajuste --help``)
stays fast.
"""

from typing import Any

__version__ = "0.1.0"
__all__ = ["train", "compare", "tune", "load", "Run", "Study", "Search", "Prediction", "Results"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from ajuste import api

        return getattr(api, name)
    raise AttributeError(f"module 'ajuste' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
