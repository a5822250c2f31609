"""Strategy interface: what trains, at which learning rate, in which phases.

A strategy turns a resolved config and a backbone into a list of ``Phase``s. The training loop runs
the phases in order; each has its own optimizer, schedule and early stopping, and the best weights
so far are restored between phases (two-stage never starts end-to-end training from a worse head
than the best one it found).
"""

from __future__ import annotations

import dataclasses
from dataclasses import KW_ONLY, dataclass
from typing import Any, Iterator

from ajuste.config import RunConfig, register_strategy_options, strategy_options, unregister_strategy_options
from ajuste.errors import AjusteError
from ajuste.registry import Registry, load_plugins


@dataclass
class Phase:
    name: str
    _: KW_ONLY
    train_groups: list[int] | None  # indices into backbone.layer_groups(); None = all; the head is -1
    epochs: int
    lr: float  # LR of the top trainable body group (lower groups may decay by optim.layer_decay)
    head_lr: float
    patience: int | None  # None: run all epochs (intermediate phases of gradual unfreezing)
    repeat: int = 1  # passes over the training data per epoch (small data: see stretch_phases)
    # PEFT: a regex over parameter names; the matching parameters and the head train, train_groups is
    # ignored (adapters and biases live inside every layer group).
    select: str | None = None
    # Weight averaging: the phase's result is the mean of the weights after each of its last `average`
    # epochs (BatchNorm statistics recomputed when they train), not its most accurate epoch. Needs
    # patience None (the phase runs its whole schedule).
    average: int = 0

    @property
    def head_only(self) -> bool:
        return self.train_groups == [-1]


class Strategy:
    """One fine-tuning strategy, and everything the rest of ajuste needs to know about it.

    A subclass sets ``name`` and ``summary`` and implements ``phases``; the rest is optional, with defaults
    that suit a strategy without options. Decorated with ``@register`` in a module of ``ajuste.strategies``
    or of a package declaring the ``ajuste.strategies`` entry point, it is trainable by ``train``,
    searchable by ``tune`` and runnable in ``compare``, and its options appear in ``--help`` and
    docs/config.md (docs/architecture.md, "How to add a strategy").
    """

    name: str = ""
    summary: str = ""
    reinitialize: bool = False  # train from scratch
    compact: bool = False  # train the modality's small network (ajuste.backbones.compact), not the backbone
    # the strategy makes its own model (``build_backbone``) instead of loading the configured one
    builds_backbone: bool = False
    # a reference arm without deep learning (classical): a study's report draws it as the floor of every plot,
    # and the advice compares the deep arms with it rather than counting it among them
    baseline: bool = False
    # whether train.seed changes what it trains; a study runs one seed of a strategy that is deterministic
    seeded: bool = True
    # The strategy's own settings, as ``strategy.<field>`` keys: a dataclass whose fields have defaults and a
    # ``field(metadata={"help": ...})``; its ``__post_init__`` rejects bad values in one ConfigError line.
    options: type | None = None
    # Relative cost of a training example-epoch (full fine-tuning of the backbone = 1): a study runs its cheap
    # cells first and estimates what is left from it before any cell of the strategy is measured.
    cost_rank: float = 1.0
    # Config keys besides train.epochs / train.min_steps that change how many epochs a run has (a search over
    # them leaves Hyperband's max resource to Optuna).
    epoch_knobs: tuple[str, ...] = ()
    # Default search range of optim.lr, as factors of the strategy's own default LR (low, high).
    lr_span: tuple[float, float] = (0.1, 10.0)

    def defaults(self, modality: str) -> dict[str, Any]:
        """Auto values for config fields left at None (dotted keys)."""
        return {}

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        raise NotImplementedError

    def planning_groups(self, cfg: RunConfig) -> int:
        """Layer groups to assume when a study plans a cell's epochs before any model is built."""
        return 5

    def build_backbone(self, cfg: RunConfig, data: Any, splits: dict) -> Any:
        """With ``builds_backbone``: the strategy's own model for this data (fitted on ``splits["train"]`` where
        it needs fitting, e.g. a vocabulary), in place of ``model.name``."""
        raise NotImplementedError

    def direct_fit(self, backbone: Any, pipeline: Any, cfg: RunConfig) -> Iterator[dict[str, Any]] | None:
        """A strategy that trains without gradient steps (a closed-form or scikit-learn fit): one dict per
        candidate it tries (``phase``, ``train_loss``, ``val_loss``, ``val_accuracy``, ``seconds``, and ``best``:
        whether the backbone now holds this candidate), each recorded as an epoch. None: the training loop
        trains the strategy's phases."""
        return None

    def starts_pretrained(self, cfg: RunConfig) -> bool:
        """Whether the model starts from the configured pretrained weights (not random, not its own)."""
        return bool(cfg.model.pretrained) and not (self.reinitialize or self.compact or self.builds_backbone)

    def prepare(self, backbone: Any, cfg: RunConfig) -> None:
        """Called once before the first phase (e.g. inject adapters, re-initialise)."""

    def report(self, backbone: Any, run_dir: Any) -> dict[str, Any]:
        """Called after training: extra summary entries; may write extra files to ``run_dir`` (or None)."""
        return {}

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        """Ranges of the strategy's own knobs for ``ajuste tune``, on top of the shared ones (dotted keys to
        specs as in a --space YAML file); ``n_body_groups``: the backbone's layer groups below the head, when
        known."""
        return {}

    def check_space(self, space: Any, model: str, n_body_groups: int | None) -> None:
        """Reject, in one ConfigError line, a search space this strategy cannot run on this backbone."""

    def option_values(self, cfg: RunConfig) -> Any:
        """This strategy's options, as its own dataclass (None without options)."""
        return None if self.options is None else strategy_options(self.name, cfg.strategy)


STRATEGIES: Registry[Strategy] = Registry("strategy")


def register(cls: type[Strategy]) -> type[Strategy]:
    """Class decorator: make ``cls`` (one instance of it) a strategy, with its options in the config."""
    if not cls.name:
        raise TypeError(f"{cls.__name__}: a strategy needs a name")
    STRATEGIES.register(cls.name, cls())
    if cls.options is not None:
        try:
            register_strategy_options(cls.name, cls.options)
        except TypeError:
            STRATEGIES.unregister(cls.name)
            raise
    return cls


def unregister(name: str) -> None:
    """Remove a strategy and its options (a test's own strategy, when the test ends)."""
    STRATEGIES.unregister(name)
    unregister_strategy_options(name)


def get_strategy(name: str) -> Strategy:
    load_plugins()
    return STRATEGIES.get(name)


def list_strategies() -> list[Strategy]:
    load_plugins()
    return [STRATEGIES.get(n) for n in STRATEGIES.list()]


# A study's arm is a strategy, or a strategy with a variant of its training: "linear-probe+weights" trains
# linear-probe with train.class_balance=weights (the variant's overrides), so one study compares the two.
ARM_VARIANTS = {"weights": {"train.class_balance": "weights"}, "sampler": {"train.class_balance": "sampler"}}


def split_arm(arm: str) -> tuple[str, str | None]:
    """(strategy name, variant or None) of a study arm; an unknown variant is one line naming the valid ones."""
    base, sep, variant = arm.partition("+")
    if not sep:
        return get_strategy(base).name, None
    if variant not in ARM_VARIANTS:
        raise AjusteError(f"arm {arm!r}: unknown variant {variant!r}; a strategy takes +{', +'.join(ARM_VARIANTS)} "
                          f"(train.class_balance), e.g. linear-probe+weights")
    return get_strategy(base).name, variant


def arm_strategy(arm: str) -> Strategy:
    return get_strategy(split_arm(arm)[0])


def _with_variants(names: set[str]) -> frozenset[str]:
    return frozenset(names | {f"{n}+{v}" for n in names for v in ARM_VARIANTS})


def scratch_strategies() -> frozenset[str]:
    """Names of the strategies that start from random weights (``reinitialize``): a study's scratch arms (with
    their variants)."""
    return _with_variants({s.name for s in list_strategies() if s.reinitialize})


def baseline_strategies() -> frozenset[str]:
    """Names of the reference arms without deep learning (``baseline``): a study's floor (with its variants)."""
    return _with_variants({s.name for s in list_strategies() if s.baseline})


# Shared auto-defaults per modality; strategies override some of them.
# train.monitor's auto (accuracy, or macro-F1 on imbalanced labels; ajuste.metrics) is resolved with the data.
# Both modalities keep their best-scoring validation epoch rather than the lowest loss. Images: on clothing-small,
# selecting the epoch on one half of the validation set and scoring it on the other (both ways round,
# docs/results.md), the accuracy rule kept end-to-end epochs the loss rule rejected for the head-only
# stage. Text: on sst2 (872 validation sentences) the val loss was lowest at the first end-to-end epoch
# while the accuracy still climbed over the three. From scratch: a re-initialised net's val loss swings
# (BatchNorm statistics of small batches, over-confident mistakes) while its accuracy climbs; on
# clothing-small at 10% the lowest val loss was epoch 1 (acc 0.24, the majority class).
_MODALITY_DEFAULTS: dict[str, dict[str, Any]] = {
    "image": {"optim.lr": 1e-4, "optim.head_lr_mult": 10.0, "optim.weight_decay": 0.01, "train.epochs": 12,
              "optim.label_smoothing": 0.0, "model.dropout": 0.1, "optim.layer_decay": 1.0, "data.augment": "light",
              "model.bn": "frozen"},
    "text": {"optim.lr": 5e-5, "optim.head_lr_mult": 10.0, "optim.weight_decay": 0.01, "train.epochs": 3,
             "optim.label_smoothing": 0.0, "model.dropout": 0.1, "optim.layer_decay": 1.0, "data.augment": "none",
             "model.bn": "frozen"},
}


def resolve_config(cfg: RunConfig, modality: str) -> RunConfig:
    """Fill the ``None`` (auto) fields from the strategy's and modality's defaults."""
    strategy = get_strategy(cfg.strategy.name)
    values = dict(_MODALITY_DEFAULTS[modality])
    values.update(strategy.defaults(modality))
    raw = cfg.to_dict()
    raw["strategy"]["name"] = strategy.name
    for key, value in values.items():
        section, leaf = key.split(".")
        if raw[section].get(leaf) in (None, "auto"):
            raw[section][leaf] = value
    return RunConfig.from_dict(raw, where="resolved config")


def replace(cfg: RunConfig, **sections: dict[str, Any]) -> RunConfig:
    """Copy with some fields of some sections changed: ``replace(cfg, optim={"lr": 1e-3})``."""
    changes = {k: dataclasses.replace(getattr(cfg, k), **v) for k, v in sections.items()}
    return dataclasses.replace(cfg, **changes)
