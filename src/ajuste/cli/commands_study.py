"""`ajuste compare | advise | report`: the study — fine-tune vs scratch, head to head."""

from __future__ import annotations

from pathlib import Path
from typing import Optional

import typer

from ajuste import locks
from ajuste.cli.commands_rank import advise_ranking
from ajuste.cli.commands_train import (
    DATA_HELP,
    WithStrategyOptions,
    _console,
    _warn,
    build_config,
    split_positionals,
)
from ajuste.study.spec import DEFAULT_STRATEGIES


def register(app: typer.Typer) -> None:
    app.command("compare", cls=WithStrategyOptions)(compare)
    app.command("advise")(advise)
    app.command("report")(report)


def compare(
    data: Optional[list[str]] = typer.Argument(None, help=DATA_HELP + " (default: digits; then any "
                                               "section.key=value overrides)", show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone (default: auto, as `ajuste "
                                                                    "train`: see `ajuste models`)"),
    models: Optional[str] = typer.Option(None, "--models", help="Several backbones, a,b,c (one study each, then "
                                                                "a page naming backbone and strategy), or topN: "
                                                                "the N best by `ajuste rank`"),
    strategies: str = typer.Option(",".join(DEFAULT_STRATEGIES), "--strategies",
                                   help="Comma-separated strategies (see `ajuste strategies`)"),
    fractions: str = typer.Option("0.1,0.3,1", "--fractions", help="Shares of the training split"),
    seeds: int = typer.Option(1, "--seeds", help="Seeds per (strategy, fraction)"),
    budget: Optional[str] = typer.Option(None, "--budget", help="Time budget, e.g. 30m, 1h30m or 90s (a bare "
                                                               "number is seconds): a full-data model first, "
                                                               "then the arms that could still win (successive "
                                                               "halving), more seeds of two close ones, then the "
                                                               "rest; a cell that would not fit whole stops early "
                                                               "at the time left"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Study directory (default: studies/<data>-<model>)"),
    sets: list[str] = typer.Option([], "--set", help="Dotted override for every cell (repeatable)"),
    text_col: Optional[str] = typer.Option(None, "--text-col"),
    label_col: Optional[str] = typer.Option(None, "--label-col"),
    task: Optional[str] = typer.Option(None, "--task", help="auto | classification | multilabel | regression "
                                                            "(data.task)"),
    no_similarity: bool = typer.Option(False, "--no-similarity", help="Skip the domain-similarity measurement"),
    workers: int = typer.Option(0, "--workers", "-j", help="Cells trained at once, each in its own process with "
                                "cores/workers threads (0: one per core on a CPU, one per GPU on a GPU machine, each worker on its own GPU)"),
    share_idle_cores: bool = typer.Option(False, "--share-idle-cores",
                                          help="Give idle workers' cores to the cells still running: the last "
                                               "cells finish sooner, but their numbers then depend on timing"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Fine-tune vs train from scratch: strategies × data fractions × seeds, a recommendation and a report."""
    from ajuste.api import default_study_dir, run_compare
    from ajuste.study.spec import StudySpec, parse_budget, parse_list

    data, sets = split_positionals(data, sets, default="digits")
    sets = [*sets, f"data.task={task}"] if task else sets
    if workers < 0:
        from ajuste.errors import ConfigError

        raise ConfigError(f"--workers {workers}: give a number of cells trained at once (0: one per core)")
    from ajuste.training.run import resolve_model_early

    # The study (and its default directory) is named after the backbone that `auto` stands for on this data.
    model = resolve_model_early(build_config(data, None, [], model=model, text_col=text_col,
                                             label_col=label_col))[0].model.name
    spec = StudySpec(source=data, model=model, strategies=parse_list(strategies),
                     fractions=parse_list(fractions, float), seeds=seeds, budget_seconds=parse_budget(budget),
                     sets=list(sets), text_col=text_col, label_col=label_col)
    con = _console(quiet)
    if models is not None:
        from ajuste.cli.compare_models import compare_models

        return compare_models(spec, models, out, con, quiet=quiet, similarity=not no_similarity, workers=workers,
                              share_idle_cores=share_idle_cores)
    study_dir = out or default_study_dir(data, model)
    con.print(f"{len(spec.cells())} cells: {', '.join(spec.strategies)} × fractions "
              f"{', '.join(f'{f:g}' for f in spec.fractions)} × {spec.seeds} seed(s) → {study_dir}")
    _, advice, seconds = run_compare(spec, study_dir, console=con, progress=not quiet, similarity=not no_similarity,
                                     workers=workers, share_idle_cores=share_idle_cores)
    con.print("")
    con.print(f"[bold green]{advice['text']}[/]", highlight=False)
    for r in advice["reasons"]:
        con.print(f"  • {r}", highlight=False)
    if advice.get("best_model"):
        con.print(f"  • best_model/: {advice['best_model']}", highlight=False)
    con.print(f"report: {study_dir / 'report.html'}   best model: {study_dir / 'best_model'}   "
              f"({seconds:.0f}s)")


def advise(
    data: str = typer.Argument("digits", help=DATA_HELP),
    model: Optional[str] = typer.Option(None, "--model", "-m"),
    text_col: Optional[str] = typer.Option(None, "--text-col"),
    label_col: Optional[str] = typer.Option(None, "--label-col"),
    models: str = typer.Option("auto", "--models", help="Backbones to rank: auto (the installed offline models of "
                               "the data's modality; `ajuste rank` adds the hub list) or comma-separated names"),
    rank_seconds: float = typer.Option(30.0, "--rank-seconds", help="Time cap of the ranking of backbones "
                                       "(0: do not rank)"),
) -> None:
    """Quick advice: data profile, measured domain similarity, the ranking of backbones and a suggested `compare`."""
    import time

    from ajuste.strategies.base import resolve_config
    from ajuste.study.advice import data_size_reason
    from ajuste.study.similarity import measure_similarity
    from ajuste.training.run import check_model_modality, prepare_data, resolve_model_early

    t0 = time.perf_counter()
    cfg, d = resolve_model_early(build_config(data, None, [], model=model, text_col=text_col, label_col=label_col))
    model = cfg.model.name
    d, splits = prepare_data(cfg, data=d)  # the data `auto` read to choose, if it did
    check_model_modality(model, None, d, data)
    for note in d.warnings:
        _warn(note)
    cfg = resolve_config(cfg, d.modality)
    con = _console()
    counts = d.class_counts() if hasattr(d, "class_counts") else {}
    n_train = len(splits["train"])
    con.print(f"data: {d.source}; {d.modality}, {len(d)} examples, {d.labels_in_words()}; "
              f"train/val/test {n_train}/{len(splits['val'])}/{len(splits['test'])}", highlight=False)
    if counts:
        lo, hi = min(counts.values()), max(counts.values())
        what = "label" if d.task == "multilabel" else "class"
        con.print(f"{what} balance: smallest {lo}, largest {hi} (ratio {hi / max(lo, 1):.1f})", highlight=False)
    if d.task != "classification":  # LogME and the probe accuracy score class labels
        con.print(f"[bold green]advice:[/] a {d.task} task: {data_size_reason(n_train)}; the domain similarity and "
                  f"the ranking of backbones score class labels and are not measured", highlight=False)
        con.print(f"next: ajuste compare {data} --model {model} --strategies classical,linear-probe,two-stage "
                  f"--fractions 0.1,0.3,1   (or --models a,b to compare backbones; {time.perf_counter() - t0:.0f}s)",
                  highlight=False)
        return
    sim = measure_similarity(model=model, data=d, splits=splits, cfg=cfg)
    p, r = sim["pretrained"], sim["random"]
    reasons = [data_size_reason(n_train),
               f"domain similarity {sim['similarity']}: linear probe {p['probe_accuracy']:.3f} on pretrained "
               f"features vs {r['probe_accuracy']:.3f} on random ones (LogME {p['logme']:.2f} vs {r['logme']:.2f})"]
    if sim["similarity"] == "high" and n_train < 5000:
        verdict = "fine-tune: start with two-stage (head, then all layers at a low LR); a linear probe is a strong baseline"
    elif sim["similarity"] == "low" and n_train >= 100_000:
        verdict = "scratch is viable; compare it with full fine-tuning"
    elif sim["similarity"] == "low":
        verdict = ("fine-tune all layers (full or two-stage) and try a compact network from scratch "
                   "(scratch-compact): the pretrained features need adapting to this domain")
    else:
        verdict = "fine-tune (two-stage or full); check scratch on the full data with `ajuste compare`"
    con.print(f"[bold green]advice:[/] {verdict}", highlight=False)
    for x in reasons:
        con.print(f"  • {x}", highlight=False)
    advise_ranking(con, data, d, splits, cfg, models=models, seconds=rank_seconds)
    con.print(f"next: ajuste compare {data} --model {model} --strategies linear-probe,two-stage,full,scratch-compact "
              f"--fractions 0.05,0.15,0.4,1 --seeds 3   ({time.perf_counter() - t0:.0f}s)", highlight=False)


def report(study_dir: Path = typer.Argument(..., help="A study directory made by `ajuste compare`")) -> None:
    """Regenerate a study's HTML report, plots and recommendation."""
    from ajuste.report.html import build_report

    with locks.hold(study_dir, what="study", wait=60, create=False):  # not while `ajuste compare` still writes it
        advice = build_report(study_dir)
    con = _console()
    con.print(advice["text"], highlight=False)
    con.print(f"report: {Path(study_dir) / 'report.html'}")
