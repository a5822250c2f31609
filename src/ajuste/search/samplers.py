"""Samplers and pruners by name, with settings that suit small trial budgets.

Optuna's defaults assume hundreds of trials (TPE/GP start with 10 random trials, NSGA-II has a
population of 50). Here the random start-up is a third of the budget (3 to 10 trials) and the NSGA-II
population a quarter (4 to 50), so a 20-trial study still spends most trials on the model-based part.
"""

from __future__ import annotations

from typing import Any

from ajuste.errors import ConfigError

SAMPLERS = ("tpe", "random", "grid", "gp", "cmaes", "nsga2")
PRUNERS = ("auto", "sha", "hyperband", "median", "none")
# What --pruner auto picks. Successive halving: with the best trial at least as good, it let 30% of the unpruned
# search's epochs run where Hyperband let 42-51% (sms-spam, replays on clothing-small; docs/tune.md).
AUTO_PRUNER = "sha"


def check_names(sampler: str, pruner: str) -> tuple[str, str]:
    """The sampler's and pruner's names as the study records them (``auto`` resolved)."""
    s, p = sampler.strip().lower(), pruner.strip().lower()
    if s not in SAMPLERS:
        raise ConfigError(f"unknown sampler {sampler!r}: valid samplers are {', '.join(SAMPLERS)}")
    if p not in PRUNERS:
        raise ConfigError(f"unknown pruner {pruner!r}: valid pruners are {', '.join(PRUNERS)}")
    return s, AUTO_PRUNER if p == "auto" else p


def startup_trials(budget: int | None) -> int:
    return 10 if budget is None else max(3, min(10, budget // 3))


def make_sampler(name: str, *, seed: int | None, budget: int | None, grid: dict[str, list] | None = None) -> Any:
    """``grid`` (param → values) is required for ``grid``; other samplers ignore it."""
    import optuna

    name, _ = check_names(name, "none")
    n_startup = startup_trials(budget)
    if name == "tpe":
        # multivariate: model LR × weight decay jointly; constant_liar: parallel workers do not all pick
        # the same point while trials are still running.
        return optuna.samplers.TPESampler(seed=seed, n_startup_trials=n_startup, multivariate=True,
                                          constant_liar=True)
    if name == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    if name == "grid":
        if grid is None:
            raise ConfigError("--sampler grid needs a grid")
        return optuna.samplers.GridSampler(grid, seed=seed)
    if name == "gp":
        return optuna.samplers.GPSampler(seed=seed, n_startup_trials=n_startup)
    if name == "cmaes":
        try:
            import cmaes  # noqa: F401
        except ImportError:
            raise ConfigError("--sampler cmaes needs the cmaes package: pip install cmaes") from None
        # Categorical params (batch size) are outside CMA-ES: they fall back to random sampling.
        return optuna.samplers.CmaEsSampler(seed=seed, n_startup_trials=n_startup, warn_independent_sampling=False)
    population = 50 if budget is None else max(4, min(50, budget // 4))
    return optuna.samplers.NSGAIISampler(seed=seed, population_size=population)


def make_pruner(name: str, *, max_epochs: int | None = None) -> Any:
    """Resources are epochs: each trial reports its objective once per epoch (step = epoch index)."""
    import optuna

    _, name = check_names("tpe", name)
    if name == "hyperband":
        return optuna.pruners.HyperbandPruner(min_resource=1, max_resource=max_epochs or "auto", reduction_factor=3)
    if name == "sha":
        return optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3)
    if name == "median":
        # Never judge a trial on its first epoch (a warm-up epoch says little), nor before 3 trials finished.
        return optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=1)
    return optuna.pruners.NopPruner()
