"""`ajuste models | strategies | train | evaluate | predict`."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Optional

import typer
from typer.core import TyperCommand

from ajuste.cli import show

DATA_HELP = "Data: digits (built-in), an image folder, a .npz, or a CSV/TSV/JSONL of texts"
STRICT_HELP = "Fail on the first unreadable image or malformed row instead of skipping it with a warning"
TASK_HELP = ("auto | classification | multilabel | regression (data.task; auto detects '|'-separated labels and "
             "float targets, and says so)")


def _console(quiet: bool = False):
    from rich.console import Console

    # soft_wrap: a long line (a path, the command `advise` suggests) stays one line when piped or copied;
    # tables still fit the width.
    return Console(quiet=quiet, highlight=False, soft_wrap=True)


def _warn(message: str) -> None:
    """A data warning (skipped files, dropped rows) on stderr: shown even with --quiet, kept out of piped output."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False).print(f"[yellow]warning:[/] {escape(message)}", soft_wrap=True)


def _esc(value) -> str:
    """User data (paths, class names, texts) printed through rich: "[...]" must not be read as markup."""
    from rich.markup import escape

    return escape(str(value))


def strategy_options_help() -> str:
    """Every registered strategy's options, for the epilog of --help (from their dataclasses' help)."""
    from ajuste.config import RunConfig, describe_fields, option_owner

    lines = ["Strategy options (--set strategy.KEY=VALUE; auto: per strategy and modality):"]
    for key, help_text, default in describe_fields(RunConfig):
        owner = option_owner(key)
        if owner:
            lines.append(f"{key} [{'auto' if default is None else default}] {help_text}")
    return "\n\n".join(lines)


class WithStrategyOptions(TyperCommand):
    """A command whose --help ends with the strategy options, read from the registry when help is shown
    (the strategies, and torch with them, are not imported to start the CLI)."""

    @property
    def epilog(self) -> str:  # type: ignore[override]
        return strategy_options_help()

    @epilog.setter
    def epilog(self, value: str | None) -> None:
        pass


def register(app: typer.Typer) -> None:
    app.command("models")(models)
    app.command("strategies")(strategies)
    app.command("train", cls=WithStrategyOptions)(train)
    app.command("evaluate")(evaluate)
    app.command("predict")(predict)


def models() -> None:
    """List the backbones available offline (any timm or Hugging Face id also works with internet)."""
    from rich.table import Table

    from ajuste.backbones.zoo import ZOO

    table = Table(title="backbones")
    for col in ("name", "modality", "params", "offline", "description"):
        table.add_column(col)
    for e in ZOO.values():
        table.add_row(e.name, e.modality, f"{e.params_m:.2f}M", "yes" if e.available() else "no", e.description)
    con = _console()
    con.print(table)
    for e in ZOO.values():
        if not e.available():
            con.print(f"{e.name}: `{e.install_hint()}` installs its weights", highlight=False)
    con.print("Also: timm/<arch> (e.g. timm/resnet50) and hf:<org>/<model> or a local Hugging Face folder "
              "— these download weights and need internet.")


def strategies() -> None:
    """List the fine-tuning strategies."""
    from rich.table import Table

    from ajuste.strategies.base import list_strategies

    table = Table(title="strategies")
    table.add_column("name")
    table.add_column("what trains")
    for s in list_strategies():
        table.add_row(s.name, s.summary)
    _console().print(table)


_OVERRIDE = re.compile(r"^[A-Za-z_][\w-]*\.[\w.-]+=")


def split_positionals(items: Optional[list[str]], sets: list[str], *, default: Optional[str] = None,
                      ) -> tuple[Optional[str], list[str]]:
    """The data argument and the overrides among the positional words.

    ``--set peft.r=8 peft.alpha=16`` (several overrides after one --set, as in the docs of peft-style tools)
    leaves ``peft.alpha=16`` as a positional word; words shaped ``section.key=value`` are overrides wherever
    they stand, and at most one other word is the data."""
    from ajuste.errors import ConfigError

    words = list(items or [])
    extra = [w for w in words if _OVERRIDE.match(w)]
    rest = [w for w in words if not _OVERRIDE.match(w)]
    if len(rest) > 1:
        raise ConfigError(f"one data source expected, got {len(rest)}: {', '.join(map(repr, rest))}; "
                          "overrides are written section.key=value (e.g. --set optim.lr=3e-4)")
    return (rest[0] if rest else default), [*sets, *extra]


def build_config(data: Optional[str], config: Optional[Path], sets: list[str], base=None, **flags):
    """Defaults (or ``base``) ← --config YAML ← flags ← --set."""
    from ajuste.config import load_config

    cfg = load_config(config, None) if base is None else base
    mapping = {"model": "model.name", "strategy": "strategy.name", "fraction": "data.fraction",
               "seed": "train.seed", "epochs": "train.epochs", "unfreeze": "strategy.unfreeze",
               "text_col": "data.text_col", "label_col": "data.label_col", "lr": "optim.lr",
               "strict": "data.strict", "task": "data.task"}
    if data is not None:
        cfg = cfg.override({"data.source": data}, where="data")
    for k, v in flags.items():  # one at a time, so that an error names the option typed (--fraction, not --set)
        if v is not None and k in mapping:
            cfg = cfg.override({mapping[k]: v}, where=f"--{k.replace('_', '-')}")
    if sets:
        cfg = cfg.override(list(sets))
    return cfg


def train(
    data: Optional[list[str]] = typer.Argument(None, help=DATA_HELP + " (then any section.key=value overrides)",
                                               show_default=False),
    model: Optional[str] = typer.Option(None, "--model", "-m", help="Backbone (see `ajuste models`)"),
    strategy: Optional[str] = typer.Option(None, "--strategy", "-s", help="Strategy (see `ajuste strategies`)"),
    out: Optional[Path] = typer.Option(None, "--out", "-o", help="Run directory (default: runs/<data>-<model>-...)"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="YAML config file"),
    sets: list[str] = typer.Option([], "--set", help="Dotted override, e.g. --set optim.lr=3e-4 (repeatable; --set a.b=1 c.d=2 also works)"),
    fraction: Optional[float] = typer.Option(None, "--fraction", help="Share of the training split to use"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Training seed"),
    epochs: Optional[int] = typer.Option(None, "--epochs", help="Max epochs of the main phase"),
    unfreeze: Optional[int] = typer.Option(None, "--unfreeze", help="partial: top layer groups to train"),
    lr: Optional[float] = typer.Option(None, "--lr", help="Base learning rate"),
    text_col: Optional[str] = typer.Option(None, "--text-col", help="Text column of a table (A,B: a text pair)"),
    label_col: Optional[str] = typer.Option(None, "--label-col", help="Label column of a table (A,B,C: the 0/1 "
                                                                      "columns of a multi-label table)"),
    task: Optional[str] = typer.Option(None, "--task", help=TASK_HELP),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP + " (data.strict)"),
    print_config: bool = typer.Option(False, "--print-config", help="Show the resolved config and exit"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run directory"),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress output"),
    from_study: Optional[str] = typer.Option(None, "--from-study",
                                             help="Start from the best trial of `ajuste tune`: its output dir, or "
                                                  "STORAGE_URL#STUDY_NAME (flags and --set still apply on top)"),
) -> None:
    """Train one model: fine-tune a pretrained backbone or train it from scratch."""
    import yaml

    data, sets = split_positionals(data, sets)
    base, tuned = _from_study_config(from_study, config, quiet) if from_study else (None, {})
    cfg = build_config(data, config, sets, base=base, model=model, strategy=strategy, fraction=fraction, seed=seed,
                       epochs=epochs, unfreeze=unfreeze, lr=lr, text_col=text_col, label_col=label_col,
                       strict=strict or None, task=task)  # no --strict: data.strict from --config/--set stands
    from ajuste.training.run import prepare_data, resolve_model_early

    cfg, data_obj = resolve_model_early(cfg)  # the run directory is named after the backbone
    if tuned.get("data_digest") and data is None:  # the search's own data: it must still be what was tuned on
        data_obj = _check_tuned_data(cfg, data_obj, tuned, from_study)
    if print_config:
        from ajuste.strategies.base import resolve_config

        if data_obj is None:
            data_obj, _ = prepare_data(cfg)
        for note in data_obj.warnings:
            _warn(note)
        typer.echo(yaml.safe_dump(resolve_config(cfg, data_obj.modality).to_dict(), sort_keys=False), nl=False)
        return
    from ajuste.training.distributed import cleanup, setup_from_env
    from ajuste.training.run import train_run

    w = setup_from_env(cfg.train.device)  # under torchrun: one worker of a data-parallel run; only rank 0 prints
    con = _console(quiet=not w.main)
    from ajuste.api import default_run_dir

    run_dir = out or default_run_dir(cfg)
    from ajuste.strategies.base import get_strategy

    strategy = get_strategy(cfg.strategy.name)
    what = f"{_esc(cfg.model.name)} with {_esc(cfg.strategy.name)}"
    if strategy.compact:
        what = f"a compact network from scratch ({_esc(cfg.strategy.name)}, in place of {_esc(cfg.model.name)})"
    elif strategy.builds_backbone:
        what = f"{_esc(strategy.name)} ({_esc(strategy.summary)}; no {_esc(cfg.model.name)})"
    con.print(f"training {what} on {_esc(cfg.data.source)} → {_esc(run_dir)}")
    res = train_run(cfg=cfg, out=run_dir, data=data_obj, progress=not quiet, console=None if quiet else con,
                    overwrite=overwrite, warn=_warn)
    s = res.summary
    cleanup()
    if s["status"] != "complete":
        con.print(f"stopped after {s['epochs']} epochs")
        raise typer.Exit(130)
    if w.main:
        show.run_result(con, s, w, run_dir)


def _from_study_config(ref: str, config: Optional[Path], quiet: bool = False):
    """`train --from-study`: the tuned study's fixed settings with its best trial's params."""
    from ajuste.errors import AjusteError
    from ajuste.search.runner import retrain_config

    if config is not None:
        raise AjusteError("--from-study and --config both give the base config; use one (and --set on top)")
    cfg, info = retrain_config(ref)
    _console(quiet).print(f"from study {info['study']}: best trial #{info['number']} "
                     f"({info['metric']} {info['value']:.4f} on validation)", highlight=False)
    return cfg, info


def _check_tuned_data(cfg, data_obj, info: dict, ref: str):
    """`train --from-study` without DATA retrains on the search's data source: refuse it if its examples changed
    since the search (the tuned values were chosen on other data). Returns the data, loaded once."""
    from ajuste.data.fingerprint import data_digest
    from ajuste.errors import DataError
    from ajuste.training.run import prepare_data

    if data_obj is None:
        data_obj, _ = prepare_data(cfg)
    if data_digest(data_obj) != info["data_digest"]:
        raise DataError(f"{cfg.data.source} changed since the search --from-study {ref} ran (its examples differ, "
                        f"not only their order), so its best values were chosen on other data; restore the data, "
                        f"tune again, or give DATA explicitly to train on purpose with these values")
    return data_obj


def evaluate(
    run_dir: Path = typer.Argument(..., help="A finished run directory"),
    data: Optional[str] = typer.Argument(None, help="Labelled data (default: the run's own test split)"),
    as_json: bool = typer.Option(False, "--json", help="Print the metrics as JSON"),
    text_col: Optional[str] = typer.Option(None, "--text-col"),
    label_col: Optional[str] = typer.Option(None, "--label-col"),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP),
) -> None:
    """The run's metric first, then accuracy, balanced accuracy, macro-F1, AUROC, calibration (ECE before and
    after temperature scaling), per-class table and confusion matrix of a trained run (multi-label: mAP, micro- and
    macro-F1 and a per-label table; regression: RMSE, MAE and R²)."""
    from ajuste.training.run_eval import evaluate_run

    m = evaluate_run(run_dir, data, text_col=text_col, label_col=label_col, warn=_warn, strict=strict)
    if as_json:
        typer.echo(json.dumps(m, indent=2))
        return
    show.evaluation(_console(), m)


def _check_output_writable(output: Path) -> None:
    import tempfile

    from ajuste.errors import AjusteError

    for parent in (output.parent, *output.parent.parents):
        if parent.exists() and not parent.is_dir():
            raise AjusteError(f"--output {output}: {parent} is a file, not a directory; pick another place")
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=output.parent, prefix=".ajuste-write-check-"):
            pass
    except OSError as exc:
        raise AjusteError(f"--output {output}: cannot write there ({exc.strerror or exc}); pick another "
                          f"place") from None


def predict(
    run_dir: Path = typer.Argument(..., help="A finished run directory"),
    inputs: list[str] = typer.Argument(..., help="Images: files, folders, globs (quoted), or - (paths on stdin). "
                                                 "Texts: CSV/TSV/JSONL/TXT files, globs, literal texts, or - "
                                                 "(one text per stdin line)"),
    text_col: Optional[str] = typer.Option(None, "--text-col",
                                           help="Text column of a CSV input; FIRST,SECOND for a text-pair model"),
    fmt: str = typer.Option("table", "--format", "-f", help="table | csv | jsonl (on stdout)"),
    output: Optional[Path] = typer.Option(None, "--output", "-o", help="Write predictions to FILE.csv or "
                                                                       "FILE.jsonl instead of stdout"),
    strict: bool = typer.Option(False, "--strict", help=STRICT_HELP + " (skipped inputs get no row)"),
) -> None:
    """Predict labels with a trained run."""
    import csv
    import io
    import sys

    from ajuste.errors import AjusteError
    from ajuste.training.run_eval import predict_inputs

    if fmt not in ("table", "csv", "jsonl"):
        raise AjusteError(f"--format {fmt!r} is not one of table, csv, jsonl")
    if output is not None:
        kind = output.suffix.lower().lstrip(".")
        if kind not in ("csv", "jsonl"):
            raise AjusteError(f"--output {output}: name a .csv or .jsonl file (the suffix picks the format)")
        if fmt not in ("table", kind):
            raise AjusteError(f"--format {fmt} but --output {output} is a .{kind} file (the suffix picks the "
                              f"format); name a .{fmt} file or drop --format")
        if output.is_dir():
            raise AjusteError(f"--output {output} is a directory; name a .csv or .jsonl file")
        if any(i != "-" and Path(i).exists() and Path(i).resolve() == output.resolve() for i in inputs):
            raise AjusteError(f"--output {output} is also an input; write the predictions to another file")
        fmt = kind
        _check_output_writable(output)  # before predicting: a long run must not end on an unwritable path
    rows = predict_inputs(run_dir, list(inputs), text_col=text_col, strict=strict, warn=_warn)
    buf = io.StringIO(newline="") if output is not None else None
    if fmt == "jsonl":
        text = "".join(json.dumps(r) + "\n" for r in rows)
        if buf is None:
            typer.echo(text, nl=False)
        else:
            buf.write(text)
    elif fmt == "csv":
        columns, flat = show.prediction_table(rows)
        w = csv.DictWriter(buf if buf is not None else sys.stdout, fieldnames=columns, lineterminator="\n")
        w.writeheader()
        w.writerows(flat)
    else:
        from rich.table import Table

        columns, flat = show.prediction_table(rows)
        t = Table()
        for col in columns:
            t.add_column(_esc(col), justify="left" if col in ("input", "label", "labels") else "right")
        for r in flat:
            t.add_row(*[_esc(r[c]) for c in columns])
        _console().print(t)
    if buf is not None:
        from ajuste.io import atomic_write_text

        atomic_write_text(output, buf.getvalue())
        _console().print(f"wrote {len(rows)} predictions to {_esc(output)}")
