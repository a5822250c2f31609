"""`ajuste tune`: hyperparameter search with Optuna (see docs/tune.md)."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ajuste.cli.commands_train import DATA_HELP, WithStrategyOptions, _console, build_config, split_positionals
from ajuste.errors import ConfigError


def register(app: typer.Typer) -> None:
    app.command("tune", cls=WithStrategyOptions)(tune)


def tune(
    data: Optional[list[str]] = typer.Argument(None, help=DATA_HELP + " (then any section.key=value overrides)",
                                               show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone (see `ajuste models`)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy (see `ajuste strategies`)"),
    trials: Optional[int] = typer.Option(None, "--trials", "-n",
                                         help="Trials in the study in total, across re-runs and workers "
                                              "(default 20; grid: the grid size)"),
    sampler: str = typer.Option("tpe", "--sampler", help="grid | random | tpe | gp | cmaes | nsga2"),
    pruner: str = typer.Option("auto", "--pruner", help="auto (successive halving) | sha | hyperband | median | none"),
    space: Optional[Path] = typer.Option(None, "--space", help="YAML search space (on top of the strategy's "
                                                               "default space; see docs/tune.md)"),
    storage: Optional[str] = typer.Option(None, "--storage",
                                          help="sqlite:///path.db or postgresql://user@host/db "
                                               "(default: sqlite in --out); share one for parallel workers"),
    study_name: Optional[str] = typer.Option(None, "--study-name", help="Study name (default: data-model-strategy)"),
    timeout: Optional[str] = typer.Option(None, "--timeout", help="Start no trial after this long: 90s, 30m, 1h (a bare number is seconds)"),
    metric: str = typer.Option("val_accuracy", "--metric",
                               help="The objective at each trial's kept epoch: val_accuracy or val_loss (as before: "
                                    "train.monitor picks the epoch), or accuracy, balanced_accuracy, macro_f1, auroc "
                                    "(maximised) or loss (minimised), which also set the trials' train.monitor"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Output dir (default: runs/tune-<study name>)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file (the fixed settings)"),
    sets: list[str] = typer.Option([], "--set", help="Fixed dotted override, e.g. --set train.epochs=5"),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Share of the training split to use"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Max epochs of each trial's main phase"),
    seed: int = typer.Option(0, "--sampler-seed", help="Seed of the sampler (training seed: --set train.seed=)"),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="Text column of a table (A,B: a text pair)"),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="Label column of a table"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No per-trial output"),
    jobs: int = typer.Option(1, "--jobs", "-j", help="Trials at once on this machine, one worker process each "
                                                     "sharing the study: 0 = one per GPU (1 without a GPU); on "
                                                     "GPUs each worker takes one"),
) -> None:
    """Search hyperparameters of one strategy with Optuna; re-run the same command to continue."""
    from ajuste.search.runner import default_study_name
    from ajuste.search.runner import tune as run_tune
    from ajuste.search.samplers import check_names

    check_names(sampler, pruner)  # before loading anything
    if storage is not None:  # a server that is down fails now, not after the data was read to pick a model
        from ajuste.search.storage import check_reachable

        check_reachable(storage)
    data, sets = split_positionals(data, sets)
    cfg = build_config(data, config, sets, model=model, strategy=strategy, fraction=fraction, epochs=epochs,
                       text_col=text_col, label_col=label_col)
    from ajuste.training.run import resolve_model_early

    cfg, data_obj = resolve_model_early(cfg)  # the study is named after the backbone
    name = study_name or default_study_name(cfg)
    out_dir = out or Path("runs") / f"tune-{name}"
    con = _console(quiet)
    from ajuste.search import parallel

    if jobs < 0:
        raise ConfigError(f"--jobs {jobs} must be ≥ 0 (0: one worker per GPU)")
    n_jobs = jobs if jobs > 0 else _gpus_or_one()
    if n_jobs > 1 and parallel.worker_label() is None:
        from ajuste.search.storage import default_storage

        out_dir.mkdir(parents=True, exist_ok=True)
        storage = storage or default_storage(out_dir)
        argv = [*([data] if data else []), *_flags(model=model, strategy=strategy, trials=trials, sampler=sampler, pruner=pruner,
                                       space=space, storage=storage, study_name=name, timeout=timeout, metric=metric,
                                       out=out_dir, config=config, fraction=fraction, epochs=epochs,
                                       sampler_seed=seed, text_col=text_col, label_col=label_col)]
        argv += [a for s in sets for a in ("--set", s)]
        rc = parallel.run_workers(argv, n_jobs, console=con)
        if rc != 0:
            raise typer.Exit(rc)
        # The study is complete: this process writes the outputs and prints the summary (no trial is left).
    res = run_tune(cfg=cfg, out=out_dir, trials=trials if trials is not None else (None if sampler == "grid" else 20),
                   sampler=sampler, pruner=pruner, space=space, storage=storage, study_name=name, timeout=timeout,
                   metric=metric, seed=seed, console=con, data=data_obj)
    if parallel.worker_label() is not None:
        return  # one worker of `tune -j N`: the parent prints the summary
    _print_result(con, res)


def _print_result(con, res) -> None:
    counts = ", ".join(f"{n} {k}" for k, n in sorted(res.counts.items()))
    con.print(f"study {res.study_name}: {counts} ({res.stopped_by}; {res.ran_here} run here)",
              highlight=False, soft_wrap=True)
    if res.best is None:
        con.print("[yellow]no trial completed yet[/]")
    else:
        params = "  ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                           for k, v in res.best["params"].items())
        con.print(f"best trial #{res.best['number']}: {res.metric} {res.best['value']:.4f}  {params}",
                  highlight=False, soft_wrap=True)
        con.print(f"retrain it: ajuste train --from-study {res.out}", highlight=False, soft_wrap=True)
    con.print(f"outputs in {res.out} (best.json, trials.csv, report.html); "
              f"live view: {res.dashboard}", highlight=False, soft_wrap=True)


def _gpus_or_one() -> int:
    from ajuste.study.workers import gpu_count

    return max(1, gpu_count())


def _flags(**options: object) -> list[str]:
    """``--name value`` for each option that was given (None: left out), as `ajuste tune` spells them."""
    out: list[str] = []
    for key, value in options.items():
        if value is not None:
            out += [f"--{key.replace('_', '-')}", str(value)]
    return out
