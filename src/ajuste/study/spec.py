"""What a study runs: strategies × training fractions × seeds, on one data set and one backbone."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ajuste.durations import parse_duration
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import read_json
from ajuste.strategies.base import arm_strategy, split_arm

# The from-scratch arm is the compact network: on digits it was the stronger from-scratch baseline
# (0.933 vs 0.748 for re-initialised EfficientNet-Lite0 at 126 examples) at a fifth of the cost;
# add `scratch` to ask whether pretraining helps the backbone itself (docs/results.md).
# The classical arm (TF-IDF or HOG + colour with a logistic regression) is the floor every study shows: it
# costs seconds, and a deep arm that does not beat it is not worth its cost.
DEFAULT_STRATEGIES = ("classical", "linear-probe", "two-stage", "scratch-compact")
DEFAULT_FRACTIONS = (0.1, 0.3, 1.0)

@dataclass(frozen=True)
class Cell:
    strategy: str
    fraction: float
    seed: int

    @property
    def key(self) -> str:
        return f"{self.strategy}-f{self.fraction:g}-s{self.seed}"


@dataclass
class StudySpec:
    source: str
    model: str
    strategies: list[str] = field(default_factory=lambda: list(DEFAULT_STRATEGIES))
    fractions: list[float] = field(default_factory=lambda: list(DEFAULT_FRACTIONS))
    seeds: int = 1
    budget_seconds: float | None = None
    sets: list[str] = field(default_factory=list)  # dotted overrides applied to every cell
    text_col: str | None = None
    label_col: str | None = None
    split_seed: int = 0
    # train.monitor's auto resolved once on the whole training split (ajuste.metrics.resolve_monitor), so every
    # cell, whatever its fraction, is judged and ranked on the same metric; set when the study reads its data
    monitor: str | None = None

    def __post_init__(self) -> None:
        if not self.strategies:
            raise ConfigError("--strategies is empty: name at least one, e.g. linear-probe,full,scratch")
        self.strategies = [_arm(s) for s in self.strategies]
        if len(set(self.strategies)) != len(self.strategies):
            raise ConfigError(f"--strategies lists a strategy twice: {','.join(self.strategies)}")
        if not self.fractions:
            raise ConfigError("--fractions is empty: give values in (0, 1], e.g. 0.1,0.5,1")
        for f in self.fractions:
            if not (0.0 < f <= 1.0):
                raise ConfigError(f"--fractions: {f:g} is outside (0, 1]; fractions are shares of the training split")
        if len(set(self.fractions)) != len(self.fractions):
            raise ConfigError(f"--fractions lists a fraction twice: {','.join(f'{f:g}' for f in self.fractions)}; "
                              f"more seeds (--seeds) repeat a cell")
        self.fractions = sorted(float(f) for f in self.fractions)
        if self.seeds < 1:
            raise ConfigError(f"--seeds {self.seeds}: need at least 1")
        if self.budget_seconds is not None and self.budget_seconds <= 0:
            raise ConfigError("--budget must be positive, e.g. 30m")

    def cells(self) -> list[Cell]:
        # a strategy no seed changes (the classical arm's closed-form fits) runs one seed: more would repeat it
        seeds = {s: self.seeds if arm_strategy(s).seeded else 1 for s in self.strategies}
        return [Cell(s, f, seed) for s in self.strategies for f in self.fractions for seed in range(seeds[s])]

    def identity(self) -> dict[str, Any]:
        """What must not change between runs of one study directory (results would not be comparable)."""
        # where the cells are logged (train.log_to) changes no result: a study may resume with it on or off
        sets = sorted(s for s in self.sets if s.split("=", 1)[0].strip() != "train.log_to")
        return {"source": self.source, "model": self.model, "sets": sets, "text_col": self.text_col,
                "label_col": self.label_col, "split_seed": self.split_seed}

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "StudySpec":
        return cls(**d)

    @classmethod
    def load(cls, path: Path) -> "StudySpec":
        """A study directory's study.json; one line naming the file when it is damaged (not JSON, or not a
        study's fields)."""
        fix = "restore it, or run `ajuste compare` again with another --out"
        try:
            return cls.from_dict(read_json(path, fix))
        except (TypeError, ConfigError) as exc:
            raise AjusteError(f"{path} is damaged ({type(exc).__name__}); {fix}") from None


def parse_budget(text: str | None) -> float | None:
    """``--budget``: '30m', '1h30m', '90s', '2h', or a bare number of seconds (ajuste.durations)."""
    return parse_duration(text, "--budget")


def parse_list(text: str, kind: type = str) -> list:
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if kind is float:
        out = []
        for x in items:
            try:
                out.append(float(x))
            except ValueError:
                raise ConfigError(f"--fractions: {x!r} is not a number") from None
        return out
    return items


def _arm(name: str) -> str:
    """An arm's canonical name: the strategy's registered name, with its variant (``linear-probe+weights``)."""
    base, variant = split_arm(name.strip())
    return f"{base}+{variant}" if variant else base
