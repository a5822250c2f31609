"""The ``strategy`` section: the strategy's name, plus the options every registered strategy declares."""

from __future__ import annotations

import dataclasses
import typing
from dataclasses import dataclass, field
from typing import Any

from ajuste.config.sections import _help
from ajuste.registry import load_plugins


@dataclass
class StrategyConfig:
    """The ``strategy`` section: the strategy's name, then the options of every registered strategy.

    Each strategy declares its options as a dataclass of its own (``Strategy.options``, help in field
    metadata) and they are registered here when it is (``register_strategy_options``). The section holds them
    side by side, flat (``strategy.unfreeze``, ``strategy.head_epochs``), so that a study's
    ``--set strategy.head_epochs=2`` reaches its two-stage cells and leaves the others alone. The concrete
    class, with every registered option as a field, is ``strategy_section()``.
    """

    name: str = _help("Fine-tuning strategy (see `ajuste strategies`)", default="two-stage")


_OPTIONS: dict[str, type] = {}  # strategy name → its options dataclass
_SECTION: dict[str, type] = {}  # the concrete section class, rebuilt when a registration changes


def register_strategy_options(owner: str, options: type) -> None:
    """Add a strategy's options dataclass to the ``strategy`` section (called by ``strategies.register``)."""
    if not dataclasses.is_dataclass(options):
        raise TypeError(f"strategy {owner!r}: options must be a dataclass, got {options!r}")
    taken = {f.name: o for o, cls in _OPTIONS.items() if o != owner for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(options):
        if f.name == "name" or f.name in taken:
            other = taken.get(f.name, "the section itself")
            raise TypeError(f"strategy {owner!r}: option {f.name!r} is already declared by {other}; rename it")
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise TypeError(f"strategy {owner!r}: option {f.name!r} needs a default")
        if not f.metadata.get("help"):
            raise TypeError(f"strategy {owner!r}: option {f.name!r} needs a help text "
                            f"(field(metadata={{'help': ...}}))")
    _OPTIONS[owner] = options
    _SECTION.clear()


def unregister_strategy_options(owner: str) -> None:
    if _OPTIONS.pop(owner, None) is not None:
        _SECTION.clear()


def strategy_options(owner: str, section: Any) -> Any:
    """One strategy's options, as its own dataclass, read from a ``strategy`` section."""
    cls = _OPTIONS[owner]
    return cls(**{f.name: getattr(section, f.name) for f in dataclasses.fields(cls)})


def option_owner(key: str) -> str | None:
    """The strategy that declares a dotted ``strategy.<option>`` key (None for any other key)."""
    section, _, leaf = key.partition(".")
    if section != "strategy":
        return None
    load_plugins()
    return next((owner for owner, cls in _OPTIONS.items() if leaf in {f.name for f in dataclasses.fields(cls)}),
                None)


def strategy_section() -> type:
    """The ``strategy`` section's class: ``name`` plus every registered strategy's options."""
    load_plugins()
    if "cls" not in _SECTION:
        fields: list[tuple[str, Any, Any]] = []
        for owner, cls in _OPTIONS.items():
            hints = typing.get_type_hints(cls)
            for f in dataclasses.fields(cls):
                default = ({"default": f.default} if f.default is not dataclasses.MISSING
                           else {"default_factory": f.default_factory})
                meta = {"help": f"{owner}: {f.metadata['help']}"}
                fields.append((f.name, hints[f.name], field(metadata=meta, **default)))

        def __post_init__(self: Any) -> None:  # each strategy's dataclass checks its own options
            for owner in _OPTIONS:
                strategy_options(owner, self)

        _SECTION["cls"] = dataclasses.make_dataclass(
            "StrategySection", fields, bases=(StrategyConfig,),
            namespace={"__post_init__": __post_init__, "__module__": __name__})
    return _SECTION["cls"]


def __getattr__(name: str) -> Any:  # pickle finds the built section class by its name
    if name == "StrategySection":
        return strategy_section()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
