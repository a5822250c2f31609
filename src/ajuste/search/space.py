"""Search spaces: which config fields a study varies, and over which values.

A parameter is named by its dotted config key (``optim.lr``), so a trial's params are exactly the
``--set`` overrides that reproduce it. A space comes from three layers, later ones winning:

1. the shared default space (``default_space``): LR log-uniform around the strategy's own default
   (over its ``lr_span``), weight decay, dropout, batch size, warmup, label smoothing;
2. the strategy's own ``search_space()``: its knobs (unfreeze depth for partial, layer decay for
   discriminative/gradual, stage-2 LR factor for two-stage, LoRA r/alpha, ...), winning over layer 1;
3. a YAML file (``--space``)::

       extends: default          # or "none": start from an empty space
       params:
         optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true}
         data.batch_size: {type: categorical, choices: [16, 32, 64]}
         strategy.unfreeze: {type: int, low: 1, high: 4}
         optim.warmup: {type: float, low: 0.0, high: 0.2, grid: [0.0, 0.1]}   # grid: for --sampler grid
         model.dropout: null      # drop from the default space (the config value stays)

   A flat mapping (no ``params:`` key) is read as ``params``; a list is shorthand for categorical choices.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import yaml

from ajuste.config import _suggest, describe_fields, option_owner
from ajuste.errors import ConfigError
from ajuste.search.params import Param, format_value, parse_param
from ajuste.strategies.base import get_strategy

# Searching these would change the validation split or the data, so trial scores would not be comparable.
FORBIDDEN = {
    "data.source": "the data is fixed for a study",
    "data.text_col": "the data is fixed for a study",
    "data.label_col": "the data is fixed for a study",
    "data.val_size": "it changes the validation split that scores the trials",
    "data.test_size": "it changes the validation split that scores the trials",
    "data.split_seed": "it changes the validation split that scores the trials",
    "data.fraction": "more data always wins; tune at a fixed --fraction",
    "strategy.name": "tune one strategy per study (`ajuste compare` compares strategies)",
}


class SearchSpace:
    """An ordered set of Params keyed by dotted config name."""

    def __init__(self, params: list[Param] | dict[str, Param] | None = None) -> None:
        items = params.values() if isinstance(params, dict) else (params or [])
        self.params: dict[str, Param] = {}
        for p in items:
            self.params[p.name] = p

    def __len__(self) -> int:
        return len(self.params)

    def __iter__(self):
        return iter(self.params.values())

    def __contains__(self, name: str) -> bool:
        return name in self.params

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SearchSpace) and self.to_dict() == other.to_dict()

    def __repr__(self) -> str:
        return "SearchSpace(" + ", ".join(f"{p.name}={p.describe()}" for p in self) + ")"

    # -- building ---------------------------------------------------------------------------------

    @classmethod
    def from_mapping(cls, raw: dict[str, Any] | None, *, where: str = "space") -> "SearchSpace":
        return cls([parse_param(str(k), v, where=where) for k, v in (raw or {}).items() if v is not None])

    def updated(self, raw: dict[str, Any] | None, *, where: str = "space") -> "SearchSpace":
        """A copy with entries of ``raw`` added or replaced; an entry set to None is removed."""
        params = dict(self.params)
        for k, v in (raw or {}).items():
            k = str(k)
            if v is None:
                params.pop(k, None)
            else:
                params[k] = parse_param(k, v, where=where)
        return SearchSpace(params)

    # -- use --------------------------------------------------------------------------------------

    def suggest(self, trial: Any) -> dict[str, Any]:
        """Sample every param on an optuna trial: the dotted overrides of one trial."""
        return {p.name: p.suggest(trial) for p in self}

    def distributions(self) -> dict[str, Any]:
        return {p.name: p.distribution() for p in self}

    def grid(self) -> dict[str, list]:
        """The grid for --sampler grid; a continuous range without `grid:` is an error (all named at once)."""
        missing = [p for p in self if p.grid_values() is None]
        if missing:
            names = ", ".join(f"{p.name} ({p.describe()})" for p in missing)
            example = missing[0]
            raise ConfigError(f"--sampler grid needs a finite grid, but {names} "
                              f"{'is a continuous range' if len(missing) == 1 else 'are continuous ranges'}; "
                              f"give each a `grid: [...]` (or make it `type: categorical` with `choices`) in "
                              f"--space, e.g. {example.name}: {{type: {example.kind}, "
                              f"low: {format_value(example.low)}, high: {format_value(example.high)}, grid: [...]}}")
        return {p.name: p.grid_values() for p in self}

    def grid_size(self) -> int:
        n = 1
        for values in self.grid().values():
            n *= len(values)
        return n

    def to_dict(self) -> dict[str, Any]:
        return {p.name: p.to_dict() for p in self}

    def diff(self, other: "SearchSpace") -> str:
        """One line: what changed from ``self`` (stored) to ``other`` (requested)."""
        out = []
        for name, p in self.params.items():
            q = other.params.get(name)
            if q is None:
                out.append(f"-{name}")
            elif p.to_dict() != q.to_dict():
                out.append(f"{name}: {p.describe()} → {q.describe()}")
        out += [f"+{name} {q.describe()}" for name, q in other.params.items() if name not in self.params]
        return "; ".join(out)

    def check(self, base_cfg: Any, *, n_body_groups: int | None = None) -> None:
        """Every name is a config field, none is forbidden, and the ends of each range are valid values."""
        if not self.params:
            raise ConfigError("the search space is empty: give at least one parameter in --space "
                              "(e.g. optim.lr: {type: float, low: 1.0e-5, high: 1.0e-2, log: true})")
        fields = [name for name, _, _ in describe_fields(type(base_cfg))]
        for p in self:
            if p.name in FORBIDDEN:
                raise ConfigError(f"space: {p.name} cannot be searched: {FORBIDDEN[p.name]}")
            if p.name not in fields:
                raise ConfigError(f"space: {p.name!r} is not a config field{_suggest(p.name, fields)}")
            ends = list(p.choices) if p.kind == "categorical" else [p.low, p.high]
            for v in ends:
                try:
                    base_cfg.override({p.name: v})
                except ConfigError as exc:
                    raise ConfigError(f"space: {p.name} = {format_value(v)} is not a valid value "
                                      f"({str(exc).removeprefix('--set: ')})") from None
        # The strategy run, and the owner of every strategy option searched, check what they know of
        # (partial: strategy.unfreeze against the backbone's layer groups).
        owners = dict.fromkeys([base_cfg.strategy.name, *filter(None, (option_owner(p.name) for p in self))])
        for owner in owners:
            get_strategy(owner).check_space(self, base_cfg.model.name, n_body_groups)


def load_space(path: str | Path, base: SearchSpace) -> SearchSpace:
    """Apply a YAML space file on top of ``base`` (the default space), honouring ``extends``."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"--space {p} does not exist")
    try:
        raw = yaml.safe_load(p.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f" line {mark.line + 1}" if mark else ""
        raise ConfigError(f"{p}{line}: not valid YAML ({getattr(exc, 'problem', exc)})") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{p}: expected a mapping of parameter → range, got {type(raw).__name__}")
    structured = "params" in raw or "extends" in raw
    extends = raw.get("extends", "default") if structured else "default"
    if extends not in ("default", "none"):
        raise ConfigError(f"{p}: extends={extends!r} is not one of default, none")
    params = raw.get("params", {}) if structured else raw
    if structured:
        extra = set(raw) - {"params", "extends"}
        if extra:
            raise ConfigError(f"{p}: unknown top-level key(s) {', '.join(sorted(map(str, extra)))} "
                              f"(valid: extends, params)")
    if params is None:
        params = {}
    if not isinstance(params, dict):
        raise ConfigError(f"{p}: params must be a mapping of parameter → range")
    start = base if extends == "default" else SearchSpace()
    return start.updated(params, where=str(p))


# -- default spaces ----------------------------------------------------------------------------------

def default_space(strategy: Any, *, modality: str, default_lr: float, n_body_groups: int | None = None,
                  task: str = "classification") -> SearchSpace:
    """The search space a strategy gets without --space (see the module docstring). Label smoothing is searched
    on classification only: multi-label and regression losses have no class distribution to smooth.

    ``strategy`` is a registered Strategy object (or its name); ``default_lr`` the LR its resolved
    config would use. Its ``search_space()`` adds or overrides entries (its own knobs); ``lr_span`` places
    the LR range around ``default_lr``.
    """
    if isinstance(strategy, str):
        strategy = get_strategy(strategy)
    name = getattr(strategy, "name", "")
    lo, hi = getattr(strategy, "lr_span", (0.1, 10.0))
    scratch = bool(getattr(strategy, "reinitialize", False))  # nothing pretrained to stay close to: more decay
    raw: dict[str, Any] = {
        "optim.lr": {"type": "float", "low": _round(default_lr * lo), "high": _round(min(default_lr * hi, 1.0)),
                     "log": True},
        "optim.weight_decay": {"type": "float", "low": 1e-4 if scratch else 1e-5, "high": 0.3 if scratch else 0.1,
                               "log": True},
        "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
        "data.batch_size": {"type": "categorical", "choices": [16, 32, 64] if modality == "image" else [8, 16, 32]},
        "optim.warmup": {"type": "float", "low": 0.0, "high": 0.2},
    }
    if task == "classification":
        raw["optim.label_smoothing"] = {"type": "float", "low": 0.0, "high": 0.2}
    space = SearchSpace.from_mapping(raw, where=f"default space of {name}")
    extra = _strategy_space(strategy, modality, n_body_groups)
    if extra:
        space = space.updated(extra, where=f"{name}.search_space()")
    return space


def _round(x: float) -> float:
    return float(f"{x:.3g}")


def _strategy_space(strategy: Any, modality: str, n_body_groups: int | None) -> dict[str, Any] | None:
    """A strategy's own ``search_space()``, called with the modality and the backbone's layer groups below
    the head, as far as it takes them (a duck-typed strategy may take neither).

    It may return ``{dotted name: spec}`` with specs as in YAML, ``Param``s or optuna distributions,
    or a ``SearchSpace``.
    """
    hook = getattr(strategy, "search_space", None)
    if not callable(hook):
        return None
    try:
        sig = inspect.signature(hook)
        takes = [p for p in sig.parameters.values() if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD,
                                                                   p.KEYWORD_ONLY)]
    except (TypeError, ValueError):
        takes = []
    args = [modality, n_body_groups][:len(takes)]
    result = hook(**{p.name: v for p, v in zip(takes, args)})
    if isinstance(result, SearchSpace):
        return {p.name: p for p in result}
    if result is None:
        return None
    if not isinstance(result, dict):
        raise ConfigError(f"strategy {getattr(strategy, 'name', strategy)!r}: search_space() returned "
                          f"{type(result).__name__}, expected a mapping of dotted name → range")
    return result
