"""`ajuste export`: a run directory, a Hugging Face/timm folder, ONNX or TorchScript, checked against the run."""

from __future__ import annotations

from pathlib import Path

import typer


def register(app: typer.Typer) -> None:
    app.command("export")(export)


def export(
    run_dir: Path = typer.Argument(..., help="A finished run directory"),
    out: Path = typer.Option(..., "--out", "-o", help="Directory to write (created; must be new or empty)"),
    fmt: str = typer.Option("ajuste", "--format", "-f",
                            help="ajuste (a run directory `evaluate`/`predict` load) | hf (text: transformers "
                                 "folder; images: timm folder) | onnx | torchscript"),
    merge: bool = typer.Option(False, "--merge", help="Fold LoRA/IA3 adapters into plain weights (no peft needed "
                                                      "to load); always done for hf, onnx and torchscript"),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace an earlier export in --out"),
) -> None:
    """Export a trained run; the written files are reloaded and must reproduce the run's logits."""
    from rich.console import Console
    from rich.markup import escape

    from ajuste.backbones.adapters import get_method, mergeable_methods
    from ajuste.export import export_run

    res = export_run(run_dir=run_dir, out=out, format=fmt, merge=merge, overwrite=overwrite)
    con = Console(highlight=False, soft_wrap=True)
    if res.merged:
        what = f"{res.method} adapters merged into the weights"
    elif res.method and get_method(res.method).wraps:
        folds = "/".join(mergeable_methods())
        what = f"{res.method} adapters kept" + ("" if merge else f" (--merge folds {folds} into the weights)")
    else:
        what = "plain weights"
    text = res.modality == "text"
    how = {"ajuste": "needs peft to load" if res.peft_needed else "loads without peft",
           "hf": (f"AutoModelForSequenceClassification.from_pretrained('{res.out}', trust_remote_code=True)" if text
                  else f"timm.create_model('local-dir:{res.out}', pretrained=True)"),
           "onnx": f"{res.exporter} exporter; dynamic batch{' and sequence axes' if text else ' axis'}",
           "torchscript": f"torch.jit.load('{res.out / 'model.pt'}')"}[res.format]
    con.print(escape(f"exported {run_dir} → {res.out} ({res.format}: {', '.join(res.files)}): {what}; "
                     f"{res.model_bytes / 2**20:.1f} MB; max |Δ logit| vs the run {res.max_abs_diff:.2g}; {how}"),
              soft_wrap=True)
