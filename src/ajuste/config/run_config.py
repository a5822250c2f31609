"""``RunConfig``: the sections together; YAML files, dotted ``--set`` overrides, and the typed parsing of both."""

from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from ajuste.config.sections import DataConfig, ModelConfig, OptimConfig, PeftConfig, TrainConfig
from ajuste.config.strategy_section import StrategyConfig, strategy_section
from ajuste.errors import ConfigError
from ajuste.io import atomic_write_text


@dataclass
class RunConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    strategy: StrategyConfig = field(default_factory=lambda: strategy_section()())
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    peft: PeftConfig = field(default_factory=PeftConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any] | None, *, where: str = "config") -> "RunConfig":
        return _build(cls, raw or {}, prefix="", where=where)

    def override(self, assignments: list[str] | dict[str, Any], *, where: str = "--set") -> "RunConfig":
        """Return a copy with dotted assignments applied (``["optim.lr=3e-4"]`` or ``{"optim.lr": 3e-4}``);
        ``where`` names their origin in error messages (the option the user typed)."""
        raw = self.to_dict()
        items = assignments.items() if isinstance(assignments, dict) else (_split_assignment(a) for a in assignments)
        for key, value in items:
            _set_dotted(raw, key, value)
        return RunConfig.from_dict(raw, where=where)


def _split_assignment(text: str) -> tuple[str, Any]:
    if "=" not in text:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. --set optim.lr=3e-4")
    key, value = text.split("=", 1)
    # YAML scalars give the user numbers, booleans and null without quoting rules of our own.
    try:
        parsed = yaml.safe_load(value) if value.strip() else ""
    except yaml.YAMLError:
        parsed = value
    return key.strip(), parsed


def _set_dotted(raw: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = raw
    for i, part in enumerate(parts[:-1]):
        if part not in node or not isinstance(node[part], dict):
            raise ConfigError(f"unknown config section {'.'.join(parts[:i + 1])!r}{_suggest(part, node)}")
        node = node[part]
    if parts[-1] not in node:
        raise ConfigError(f"unknown config field {key!r}{_suggest(parts[-1], node)}")
    node[parts[-1]] = value


def _suggest(name: str, options: dict[str, Any] | list[str]) -> str:
    close = difflib.get_close_matches(name, list(options), n=3, cutoff=0.5)
    return f" (did you mean {', '.join(close)}?)" if close else f" (valid: {', '.join(options)})"


def _field_types(cls: type) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {k: strategy_section() if v is StrategyConfig else v for k, v in hints.items()}


def _coerce(value: Any, tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        if isinstance(value, str) and value.lower() in ("none", "null", "auto") and len(args) == 1 \
                and args[0] is not str:
            return None
        return _coerce(value, args[0], name)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{name}={value!r}: expected true or false")
    if tp is int:
        if isinstance(value, bool) or not (isinstance(value, int) or (isinstance(value, float) and value.is_integer())):
            raise ConfigError(f"{name}={value!r}: expected an integer")
        return int(value)
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{name}={value!r}: expected a number")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={value!r}: expected a number") from None
    if origin is list:
        return _coerce_list(value, typing.get_args(tp)[0], name)
    if tp is str:
        if isinstance(value, (dict, list)):
            raise ConfigError(f"{name}={value!r}: expected a string")
        return str(value)
    return value


def _coerce_list(value: Any, item: type, name: str) -> list:
    """A list from YAML (``[mlflow, tensorboard]``) or from ``--set key=a,b`` (a comma-separated string; null
    or an empty string is the empty list)."""
    if value is None:
        return []
    if isinstance(value, str):
        value = [x.strip() for x in value.split(",") if x.strip()]
    if not isinstance(value, (list, tuple)):
        raise ConfigError(f"{name}={value!r}: expected a list, e.g. {name}=a,b or {name}=[a, b]")
    return [_coerce(v, item, name) for v in value]


def _build(cls: type, raw: dict[str, Any], *, prefix: str, where: str) -> Any:
    if not isinstance(raw, dict):
        section = prefix.rstrip('.')
        first = dataclasses.fields(cls)[0].name
        fix = (f"; set one of its fields, e.g. --set {section}.{first}=..." if where == "--set" else
               f"; give its fields, e.g. {section}: {{{first}: ...}}") if section else \
            "; give sections, e.g. train: {epochs: 5}"
        raise ConfigError(f"{where}: section {section or 'root'} must be a mapping, got {raw!r}{fix}")
    hints = _field_types(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    for key in raw:
        if key not in names:
            raise ConfigError(f"{where}: unknown config field {prefix + key!r}{_suggest(key, names)}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in raw:
            continue
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            kwargs[f.name] = _build(tp, raw[f.name] or {}, prefix=f"{prefix}{f.name}.", where=where)
        else:
            kwargs[f.name] = _coerce(raw[f.name], tp, prefix + f.name)
    try:
        return cls(**kwargs)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Defaults ← YAML file ← dotted overrides."""
    cfg = RunConfig()
    if path is not None:
        p = Path(path)
        if p.is_dir():
            raise ConfigError(f"config file {p} is a directory; give a YAML file")
        if not p.is_file():
            raise ConfigError(f"config file {p} does not exist")
        try:
            raw = yaml.safe_load(p.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ConfigError(f"{p}: not UTF-8 text (byte {exc.start}); save the config as UTF-8 YAML") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" line {mark.line + 1}" if mark else ""
            raise ConfigError(f"{p}{where}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
        cfg = RunConfig.from_dict(raw, where=str(p))
    if overrides:
        cfg = cfg.override(overrides)
    return cfg


def save_config(cfg: RunConfig, path: Path) -> None:
    atomic_write_text(path, yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def describe_fields(cls: type = RunConfig, prefix: str = "") -> list[tuple[str, str, Any]]:
    """(dotted name, help, default) for every leaf field: used by the CLI and docs."""
    out = []
    hints = _field_types(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if dataclasses.is_dataclass(tp):
            out.extend(describe_fields(tp, f"{prefix}{f.name}."))
        else:
            default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
            out.append((prefix + f.name, f.metadata.get("help", ""), default))
    return out
