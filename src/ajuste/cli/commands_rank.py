"""`ajuste rank`: which pretrained backbone to fine-tune, scored on the data before training any of them."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Optional

import typer

from ajuste.cli.commands_train import DATA_HELP, _console, _warn, build_config

# Table headings of the estimators (ajuste.study.rank.ESTIMATORS).
HEADINGS = {"logme": "LogME", "hscore": "H-score", "nleep": "NLEEP", "leep": "LEEP", "nce": "NCE"}


def register(app: typer.Typer) -> None:
    app.command("rank")(rank)


def rank(
    data: str = typer.Argument("digits", help=DATA_HELP),
    models: str = typer.Option("auto", "--models", "-m", help="Comma-separated candidates (zoo names, timm/<arch>, "
                               "hf:<id>, folders), or auto: the installed offline models of the data's modality, "
                               "plus a curated hub list when the hub answers"),
    max_seconds: float = typer.Option(90.0, "--max-seconds", help="Time cap: the examples scored (the same for "
                                      "every candidate, stratified) are cut to what the candidates' measured "
                                      "speed allows; never fewer than 100"),
    max_examples: int = typer.Option(2000, "--max-examples", help="At most this many training examples"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="JSON file (default: studies/<data>-rank.json)"),
    text_col: Optional[str] = typer.Option(None, "--text-col"),
    label_col: Optional[str] = typer.Option(None, "--label-col"),
    seed: int = typer.Option(0, "--seed", help="Seed of the subsample"),
    quiet: bool = typer.Option(False, "--quiet", "-q"),
) -> None:
    """Rank candidate backbones by transferability (LogME, H-score, NLEEP; LEEP and NCE with a source head)."""
    from ajuste.errors import ConfigError
    from ajuste.io import atomic_write_json
    from ajuste.study.rank import rank_backbones, resolve_candidates
    from ajuste.training.prepare import prepare_data

    if max_seconds <= 0 or max_examples < 1:
        raise ConfigError(f"--max-seconds {max_seconds:g} / --max-examples {max_examples}: give positive numbers")
    cfg = build_config(data, None, [], text_col=text_col, label_col=label_col)
    d, splits = prepare_data(cfg)
    for note in d.warnings:
        _warn(note)
    candidates, notes = resolve_candidates(models, d.modality)
    con = _console(quiet)
    for note in notes:
        con.print(f"note: {note}", highlight=False)
    con.print(f"data: {d.source}; {d.modality}, {len(d.classes)} classes, {len(splits['train'])} training "
              f"examples; candidates: {', '.join(candidates)}", highlight=False)
    with _progress(quiet) as bar:
        result = rank_backbones(data=d, splits=splits, candidates=candidates, cfg=cfg, max_seconds=max_seconds,
                                max_examples=max_examples, seed=seed, progress=bar)
    result["notes"] = notes
    path = out or default_rank_path(data)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(path, result)
    print_ranking(con, result)
    con.print(f"{result['examples']} examples of {d.source} scored per model in {result['seconds']:.0f}s "
              f"(cap {max_seconds:g}s); higher scores are better, (n) is the rank; JSON: {path}", highlight=False)


def advise_ranking(con: Any, data: str, d: Any, splits: dict, cfg: Any, *, models: str, seconds: float) -> None:
    """`advise`'s ranking: the candidates scored within ``seconds`` and their table, or why not.

    ``auto`` here means the installed offline models only: advise is the quick look, and the hub list would
    download several large checkpoints (`ajuste rank --models auto` adds them)."""
    from ajuste.errors import ConfigError
    from ajuste.study.rank import rank_backbones, resolve_candidates

    if seconds < 0:
        raise ConfigError(f"--rank-seconds {seconds:g}: give 0 (do not rank) or a positive number of seconds")
    nxt = f"ajuste rank {data} --models auto   (adds the hub list when it answers)"
    if seconds == 0:
        con.print(f"which backbone: not ranked (--rank-seconds 0); {nxt}", highlight=False)
        return
    candidates, _ = resolve_candidates(models, d.modality, reachable=lambda: (False, "advise ranks what is here"))
    if len(candidates) < 2:
        con.print(f"which backbone: only {candidates[0]} is installed for {d.modality}, nothing to rank; {nxt}",
                  highlight=False)
        return
    with _progress(False) as bar:
        result = rank_backbones(data=d, splits=splits, candidates=candidates, cfg=cfg, max_seconds=seconds,
                                seed=0, progress=bar)
    con.print(f"which backbone: {', '.join(candidates)} ranked by transferability on {result['examples']} "
              f"training examples ({result['seconds']:.0f}s; higher is better, (n) is the rank):", highlight=False)
    print_ranking(con, result)
    best = [r["model"] for r in result["rows"] if r["status"] == "ok"][:2]
    if len(best) == 2:
        con.print(f"  • the estimators narrow the list; on the shared sets they did not order backbones better than "
                  f"their size (docs/results.md), so measure the best two: ajuste compare {data} --models "
                  f"{','.join(best)}", highlight=False)


def print_ranking(con: Any, result: dict[str, Any]) -> None:
    """The ranking's table, then a line per skipped candidate with its reason."""
    # Piped or captured output is not cut to 80 columns (it is read in an editor, or by a script): the table's width.
    if not con.is_terminal:
        con.width = max(con.width, 160)
    con.print(rank_table(result))
    for r in result["rows"]:
        if r["status"] != "ok":
            con.print(f"skipped {r['model']}: {r['reason']}", highlight=False)


def default_rank_path(data: str) -> Path:
    import re

    """studies/<data>-rank.json, beside the studies `ajuste compare` writes (a file's suffix dropped)."""
    p = Path(str(data).rstrip("/"))
    name = (p.stem if p.suffix else p.name) or "data"
    return Path("studies") / re.sub(r"[^A-Za-z0-9_.-]+", "-", f"{name}-rank.json")


def rank_table(result: dict[str, Any]) -> Any:
    """A rich Table: one row per candidate, best first; skipped candidates last (their reasons print below)."""
    from rich import box
    from rich.table import Table

    rows = result["rows"]
    used = [e for e in result["estimators"] if any(e in r.get("scores", {}) for r in rows)]
    table = Table(box=box.SIMPLE_HEAD, padding=(0, 1), pad_edge=False)
    table.add_column("model", no_wrap=True)
    for e in used:
        table.add_column(HEADINGS.get(e, e), justify="right", min_width=6)  # "score (rank)" wraps before the rank
    for col in ("Mparams", "MFLOPs", "ex/s"):
        table.add_column(col, justify="right", no_wrap=True, min_width=len(col))
    for r in rows:
        if r["status"] != "ok":
            table.add_row(r["model"], *["skipped"] + ["–"] * (len(used) + 2))
            continue
        cells = [f"{r['scores'][e]:.3g} ({r['ranks'][e]})" if e in r["scores"] else "–" for e in used]
        mflops = f"{r['mflops']:,.0f}" if r.get("mflops") is not None else "–"
        table.add_row(r["model"], *cells, f"{r['params_m']:.1f}", mflops, f"{r['examples_per_s']:.0f}")
    return table


def _progress(quiet: bool):
    import contextlib

    if quiet:
        return contextlib.nullcontext(None)
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                    console=Console(stderr=True), transient=True)
