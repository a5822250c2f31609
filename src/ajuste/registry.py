"""Name → object registries (strategies, PEFT methods, backbones), and the discovery of what fills them.

A strategy (with its options and, for PEFT, its method object) is one module that registers itself when
imported. ``load_plugins`` imports every module of the built-in ``ajuste.strategies`` package, then those
that installed packages declare under the ``ajuste.strategies`` entry-point group::

    [project.entry-points."ajuste.strategies"]
    my-strategy = "my_package.my_strategy"

Lower layers (the config, the adapters) ask for discovery by name through this module, so that no module
imports a higher layer.
"""

from __future__ import annotations

import difflib
import fnmatch
import importlib
import pkgutil
from importlib.metadata import entry_points
from typing import Generic, TypeVar

from ajuste.errors import AjusteError, ConfigError

T = TypeVar("T")

PLUGIN_GROUP = "ajuste.strategies"
_BUILTIN_PACKAGE = "ajuste.strategies"
_state = {"loaded": False, "loading": False}


class Registry(Generic[T]):
    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._items: dict[str, T] = {}

    def register(self, name: str, obj: T) -> T:
        if name in self._items:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._items[name] = obj
        return obj

    def unregister(self, name: str) -> None:
        """Remove ``name`` (a test's own strategy, once the test is done)."""
        self._items.pop(name, None)

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


def load_plugins() -> None:
    """Import the built-in strategy modules and the installed packages' ones (once per process)."""
    if _state["loaded"] or _state["loading"]:
        return
    _state["loading"] = True
    try:
        package = importlib.import_module(_BUILTIN_PACKAGE)
        for info in sorted(pkgutil.iter_modules(package.__path__), key=lambda m: m.name):
            importlib.import_module(f"{_BUILTIN_PACKAGE}.{info.name}")
        for ep in entry_points(group=PLUGIN_GROUP):
            try:
                ep.load()
            except Exception as exc:  # noqa: BLE001 - a broken plug-in is named, in one line
                raise ConfigError(f"the strategy plug-in {ep.name!r} ({ep.value}, entry point group "
                                  f"{PLUGIN_GROUP}) failed to import: {type(exc).__name__}: {exc}; fix or "
                                  f"uninstall the package that declares it") from None
        _state["loaded"] = True
    finally:
        _state["loading"] = False
