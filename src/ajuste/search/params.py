"""One searched config field (``Param``): its checks, its Optuna distribution and suggestion, the values
``--sampler grid`` tries; and ``parse_param``, which makes one from a YAML entry, a list of choices, a ``Param``
or an Optuna distribution.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from ajuste.errors import ConfigError

KINDS = ("float", "int", "categorical")
# A discrete range (int, or float with a step) this small is enumerated by --sampler grid without a `grid:`.
MAX_AUTO_GRID = 64


@dataclass(frozen=True)
class Param:
    """One searched config field. ``grid`` optionally lists the values --sampler grid tries for a range."""

    name: str
    kind: str
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple | None = None
    grid: tuple | None = None

    def __post_init__(self) -> None:
        n = self.name
        if self.kind not in KINDS:
            raise ConfigError(f"{n}: type {self.kind!r} is not one of {', '.join(KINDS)}")
        if self.kind == "categorical":
            if not self.choices:
                raise ConfigError(f"{n}: a categorical parameter needs a non-empty `choices` list")
            for c in self.choices:
                if c is not None and not isinstance(c, (bool, int, float, str)):
                    raise ConfigError(f"{n}: choice {c!r} is not a number, string, boolean or null")
            if len(set(map(repr, self.choices))) != len(self.choices):
                raise ConfigError(f"{n}: choices {list(self.choices)} has duplicates")
            return
        if self.low is None or self.high is None:
            raise ConfigError(f"{n}: a {self.kind} range needs `low` and `high`")
        for label, v in (("low", self.low), ("high", self.high)):
            if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
                raise ConfigError(f"{n}: {label}={v!r} is not a finite number")
            if self.kind == "int" and float(v) != int(v):
                raise ConfigError(f"{n}: {label}={v!r} is not an integer (type: int)")
        if self.low >= self.high:
            raise ConfigError(f"{n}: low ({self.low:g}) must be < high ({self.high:g})")
        if self.log and self.low <= 0:
            raise ConfigError(f"{n}: a log range needs low > 0 (got {self.low:g})")
        if self.step is not None:
            if self.log:
                raise ConfigError(f"{n}: `step` and `log: true` cannot be combined")
            if not isinstance(self.step, (int, float)) or self.step <= 0:
                raise ConfigError(f"{n}: step={self.step!r} must be > 0")
        if self.grid is not None:
            if not self.grid:
                raise ConfigError(f"{n}: `grid` is empty")
            for g in self.grid:
                if isinstance(g, bool) or not isinstance(g, (int, float)) or not self.low <= g <= self.high:
                    raise ConfigError(f"{n}: grid value {g!r} is outside [{self.low:g}, {self.high:g}]")

    # -- optuna -----------------------------------------------------------------------------------

    def distribution(self):
        from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

        if self.kind == "categorical":
            return CategoricalDistribution(list(self.choices))
        if self.kind == "int":
            return IntDistribution(int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return FloatDistribution(float(self.low), float(self.high), log=self.log,
                                 step=None if self.step is None else float(self.step))

    def suggest(self, trial: Any) -> Any:
        if self.kind == "categorical":
            return trial.suggest_categorical(self.name, list(self.choices))
        if self.kind == "int":
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log, step=int(self.step or 1))
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log,
                                   step=None if self.step is None else float(self.step))

    def grid_values(self) -> list | None:
        """Values --sampler grid tries, or None when the range is continuous and has no `grid:`."""
        if self.kind == "categorical":
            return list(self.choices)
        if self.grid is not None:
            return [int(g) if self.kind == "int" else float(g) for g in self.grid]
        if self.kind == "int" and not self.log:
            step = int(self.step or 1)
            values = list(range(int(self.low), int(self.high) + 1, step))
            return values if len(values) <= MAX_AUTO_GRID else None
        if self.kind == "float" and self.step is not None:
            count = int(math.floor((self.high - self.low) / self.step + 1e-9)) + 1
            if count <= MAX_AUTO_GRID:
                return [round(self.low + i * self.step, 12) for i in range(count)]
        return None

    # -- display / persistence --------------------------------------------------------------------

    def describe(self) -> str:
        if self.kind == "categorical":
            return "{" + ", ".join(format_value(c) for c in self.choices) + "}"
        text = f"{self.kind}[{format_value(self.low)}, {format_value(self.high)}]"
        if self.log:
            text = "log-" + text
        if self.step is not None:
            text += f" step {format_value(self.step)}"
        if self.grid is not None:
            text += " grid {" + ", ".join(format_value(g) for g in self.grid) + "}"
        return text

    def to_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"type": self.kind}
        if self.kind == "categorical":
            d["choices"] = list(self.choices)
            return d
        d.update(low=self.low, high=self.high)
        if self.log:
            d["log"] = True
        if self.step is not None:
            d["step"] = self.step
        if self.grid is not None:
            d["grid"] = list(self.grid)
        return d


def format_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:g}"
    return repr(v) if isinstance(v, str) else str(v)


_PARAM_KEYS = {"type", "low", "high", "log", "step", "choices", "grid"}


def parse_param(name: str, raw: Any, *, where: str = "space") -> Param:
    """One YAML entry → Param. Accepts a mapping, a list (categorical), a Param or an optuna distribution."""
    if isinstance(raw, Param):
        return dataclasses.replace(raw, name=name)
    if isinstance(raw, (list, tuple)):
        return _param(where, name, kind="categorical", choices=tuple(raw))
    if _is_distribution(raw):
        return _from_distribution(name, raw, where)
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: {name}: expected a mapping like {{type: float, low: 1e-5, high: 1e-2, "
                          f"log: true}} or a list of choices, got {raw!r}")
    unknown = set(raw) - _PARAM_KEYS
    if unknown:
        raise ConfigError(f"{where}: {name}: unknown key(s) {', '.join(sorted(map(str, unknown)))} "
                          f"(valid: {', '.join(sorted(_PARAM_KEYS))})")
    kind = raw.get("type")
    if kind is None:
        kind = "categorical" if "choices" in raw else ("int" if _all_int(raw.get("low"), raw.get("high")) else "float")
    kind = {"uniform": "float", "loguniform": "float", "integer": "int", "choice": "categorical"}.get(kind, kind)
    log = raw.get("log", raw.get("type") == "loguniform")
    if not isinstance(log, bool):
        raise ConfigError(f"{where}: {name}: log={log!r} must be true or false")
    if kind == "categorical":
        choices = raw.get("choices")
        if not isinstance(choices, (list, tuple)):
            raise ConfigError(f"{where}: {name}: a categorical parameter needs `choices: [...]`")
        extra = {"low", "high", "step", "grid"} & set(raw)
        if extra:
            raise ConfigError(f"{where}: {name}: {', '.join(sorted(extra))} make no sense for a categorical "
                              f"parameter; list the values in `choices`")
        return _param(where, name, kind=kind, choices=tuple(choices))
    if "choices" in raw:
        raise ConfigError(f"{where}: {name}: `choices` is for type: categorical; for a {kind} range "
                          f"use `grid: [...]` to give --sampler grid its values")
    grid = raw.get("grid")
    if grid is not None and not isinstance(grid, (list, tuple)):
        raise ConfigError(f"{where}: {name}: grid={grid!r} must be a list")
    return _param(where, name, kind=kind, low=_num(raw.get("low")), high=_num(raw.get("high")), log=log,
                  step=_num(raw.get("step")), grid=None if grid is None else tuple(_num(g) for g in grid))


def _param(where: str, name: str, **kw: Any) -> Param:
    try:
        return Param(name, **kw)
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def _num(v: Any) -> Any:
    # YAML 1.1 reads "1e-5" (no dot) as a string: accept it as the number the user meant.
    if isinstance(v, str):
        try:
            f = float(v)
        except ValueError:
            return v
        return int(f) if f.is_integer() and "." not in v and "e" not in v.lower() else f
    return v


def _all_int(*vals: Any) -> bool:
    return all(isinstance(v, int) and not isinstance(v, bool) for v in vals if v is not None)


def _is_distribution(obj: Any) -> bool:
    return type(obj).__module__.startswith("optuna.distributions")


def _from_distribution(name: str, d: Any, where: str) -> Param:
    from optuna.distributions import CategoricalDistribution, FloatDistribution, IntDistribution

    if isinstance(d, CategoricalDistribution):
        return _param(where, name, kind="categorical", choices=tuple(d.choices))
    if isinstance(d, IntDistribution):
        return _param(where, name, kind="int", low=d.low, high=d.high, log=d.log, step=None if d.step == 1 else d.step)
    if isinstance(d, FloatDistribution):
        return _param(where, name, kind="float", low=d.low, high=d.high, log=d.log, step=d.step)
    raise ConfigError(f"{where}: {name}: unsupported distribution {type(d).__name__}")
