"""Name → object registries (strategies, backbones). Duplicate names are rejected."""

from __future__ import annotations

import difflib
import fnmatch
from typing import Generic, TypeVar

from ajuste.errors import AjusteError

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def get(self, name: str) -> T:
        key = name.strip().lower().replace("_", "-") if name not in self._items else name
        if key in self._items:
            return self._items[key]
        close = difflib.get_close_matches(name, list(self._items), n=3, cutoff=0.4)
        hint = f"did you mean {', '.join(close)}?" if close else f"valid: {', '.join(sorted(self._items))}"
        raise AjusteError(f"unknown {self.kind} {name!r}: {hint}")

    def list(self, pattern: str = "*") -> list[str]:
        return sorted(n for n in self._items if fnmatch.fnmatch(n, pattern))

    def __contains__(self, name: str) -> bool:
        return name in self._items
