"""Export a finished run directory for inference.

``export_run(run_dir=..., out=..., merge=True)`` folds LoRA/IA3 adapters into the weights they modify
(peft ``merge_and_unload``) and writes a plain run directory: backbone.json without a PEFT spec and a
model.safetensors of the ordinary architecture, so ``load_run`` / ``ajuste evaluate`` / ``predict`` load
it without peft. Without ``merge`` the run's inference files are copied as they are (adapters kept).
Either way the export is checked: the written directory is reloaded and its logits on a probe batch
must match the source run's.
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ajuste.errors import AjusteError
from ajuste.io import atomic_save_safetensors, atomic_write_json

# Files a run directory needs for evaluate/predict, plus its records (summary last: it marks completion).
_COPY = ["config.yaml", "labels.json", "preprocessing.json", "splits.json", "metrics.jsonl"]


@dataclass
class ExportResult:
    out: Path
    merged: bool
    method: str | None  # the PEFT method of the source run, None for a plain run
    max_abs_diff: float  # largest |logit difference| between source and export on the probe batch
    peft_needed: bool  # whether loading the export needs the peft library
    model_bytes: int


def probe_inputs(backbone: Any, preprocessing: Any, n: int = 4) -> Any:
    """A small fixed batch in the model's input format (images: noise at the input size)."""
    g = torch.Generator().manual_seed(0)
    if backbone.modality == "image":
        size = preprocessing.image_size
        return torch.randn(n, 3, size, size, generator=g)
    texts = ["a probe sentence for the export check", "short", "another, rather different line of text!",
             "free entry in a weekly prize draw"][:n]
    return dict(backbone.tokenizer(texts, padding=True, truncation=True, max_length=preprocessing.max_length,
                                   return_tensors="pt"))


@torch.no_grad()
def _logits(backbone: Any, inputs: Any) -> torch.Tensor:
    backbone.eval()
    return backbone(inputs).float()


def export_run(*, run_dir: str | Path, out: str | Path, merge: bool = False, overwrite: bool = False,
               rtol: float = 1e-3) -> ExportResult:
    from ajuste.backbones.adapters import merge_adapters
    from ajuste.train.run_eval import load_run

    run_dir, out = Path(run_dir), Path(out)
    run = load_run(run_dir)
    if out.resolve() == run_dir.resolve():
        raise AjusteError("--out must differ from the run directory")
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        if not overwrite:
            raise AjusteError(f"{out} exists and is not empty; use another --out or --overwrite")
        if out.is_dir() and not (out / "backbone.json").is_file():
            raise AjusteError(f"{out} is not a run directory; refusing to overwrite it")
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    bb = run.backbone
    method = bb.peft["method"] if bb.peft else None
    probe = probe_inputs(bb, run.preprocessing)
    before = _logits(bb, probe)
    if merge:
        merge_adapters(bb)

    out.mkdir(parents=True, exist_ok=True)
    for name in _COPY:
        if (run_dir / name).is_file():
            shutil.copy2(run_dir / name, out / name)
    if (run_dir / "hf").is_dir():
        shutil.copytree(run_dir / "hf", out / "hf")
    if bb.peft and (run_dir / "adapter.safetensors").is_file():
        shutil.copy2(run_dir / "adapter.safetensors", out / "adapter.safetensors")
    atomic_write_json(out / "backbone.json", bb.describe())
    atomic_save_safetensors(out / "model.safetensors", bb.state_dict(), metadata={"format": "pt", "ajuste": "model"})

    # Check the written directory, not the in-memory model: this is what users will load.
    after = _logits(load_run(out).backbone, probe)
    diff = float((after - before).abs().max())
    scale = float(before.abs().max().clamp(min=1.0))
    if not diff <= rtol * scale:
        raise AjusteError(f"export check failed: logits of {out} differ from {run_dir} by up to {diff:.3g}; "
                          f"the export is not usable")
    summary: dict[str, Any] = dict(run.summary or {})
    summary["export"] = {"from": str(run_dir), "merged": bool(merge and method), "method": method,
                         "max_abs_logit_diff": diff}
    atomic_write_json(out / "summary.json", summary)
    return ExportResult(out=out, merged=bool(merge and method), method=method, max_abs_diff=diff,
                        peft_needed=bool(bb.peft and bb.peft["method"] != "bitfit"),
                        model_bytes=(out / "model.safetensors").stat().st_size)
