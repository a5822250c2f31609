"""`ajuste export`: a run directory for inference, with PEFT adapters merged into the weights."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (a run directory `evaluate`/`predict` load)"),
    merge: bool = typer.Option(False, "--merge", help="Fold LoRA/IA3 adapters into plain weights (no peft needed "
                                                      "to load)"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing export directory"),
) -> None:
    """Export a trained run; --merge turns a LoRA/IA3 run into a plain model with the same predictions."""
    from rich.console import Console

    from ajuste.export import export_run

    res = export_run(run_dir=run_dir, out=out, merge=merge, overwrite=overwrite)
    con = Console(highlight=False)
    if res.merged:
        what = f"{res.method} adapters merged into the weights"
    elif res.method and res.method != "bitfit":
        what = f"{res.method} adapters kept" + ("" if merge else " (--merge folds lora/ia3 into the weights)")
    else:
        what = "plain weights"
    con.print(f"exported {run_dir} → {res.out}: {what}; {res.model_bytes / 2**20:.1f} MB; "
              f"max |Δ logit| vs the run {res.max_abs_diff:.2g}; "
              f"{'needs peft to load' if res.peft_needed else 'loads without peft'}")
