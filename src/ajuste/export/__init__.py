"""Export a finished run directory for inference, in ajuste's own format or for other runtimes.

``export_run(run_dir=..., out=..., format=...)``:

- ``ajuste`` (default): a run directory ``load_run`` / ``ajuste evaluate`` / ``predict`` load; with
  ``merge=True`` LoRA/IA3 adapters are folded into the weights (peft ``merge_and_unload``) so it loads
  without peft, otherwise the adapters are kept.
- ``hf``: text runs → a Hugging Face folder (custom code: the encoder, ajuste's pooling, the linear head)
  for ``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)``; image runs →
  timm's hub format for ``timm.create_model("local-dir:" + dir, pretrained=True)``.
- ``onnx``: ``model.onnx`` with a dynamic batch axis (and sequence axis for text).
- ``torchscript``: ``model.pt`` from ``torch.jit.trace``.

A calibrated run's temperature T travels with every format: ``ajuste`` copies calibration.json; ONNX,
TorchScript and the Hugging Face text folder output the logits already divided by T (so their softmax is the
calibrated probabilities ``ajuste predict`` gives); timm's image format cannot hold it in the network, so its
config.json names it (``ajuste_calibration.temperature``) for the user to divide by.

Every format but ``ajuste`` needs a plain network: LoRA/IA3 are merged first; prompt/prefix tuning
(learned extra inputs) is refused. The export is written into a staging directory next to ``out``,
reloaded the way users load it, and its logits on two probe batches (different batch sizes and, for
text, sequence lengths) are compared with the source run's; only an export that matches is moved to
``out``.

One module per format (``ajuste_dir``, ``hf``, ``onnx``, ``torchscript``), each a writer and a checker;
``common`` holds the probes and what the formats share, ``output`` where an export may go.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ajuste.backbones.adapters import get_method, merge_adapters, mergeable_methods
from ajuste.errors import AjusteError
from ajuste.export import ajuste_dir, hf, onnx, torchscript
from ajuste.export.common import exported, probe_inputs, probe_logits, probe_shape
from ajuste.export.output import check_out, check_tree
from ajuste.export.output import inside as _inside  # noqa: F401 - its name before export became a package
from ajuste.io import atomic_write_json
from ajuste.training.run_dir import weights_digest
from ajuste.training.run_load import load_run

FORMATS = ("ajuste", "hf", "onnx", "torchscript")
# Each format's writer and checker. export_run looks the pair up here when it runs (tests swap one in).
_FORMATS_IMPL = {
    "ajuste": (ajuste_dir.write, ajuste_dir.check),
    "hf": (hf.write, hf.check),
    "onnx": (onnx.write, onnx.check),
    "torchscript": (torchscript.write, torchscript.check),
}


@dataclass
class ExportResult:
    out: Path
    merged: bool
    method: str | None  # the PEFT method of the source run, None for a plain run
    max_abs_diff: float  # largest |logit difference| (logits / T) between source and export on the probe batches
    peft_needed: bool  # whether loading the export needs the peft library
    model_bytes: int
    format: str = "ajuste"
    exporter: str | None = None  # onnx: "dynamo" or "torchscript" (the legacy exporter)
    files: list[str] = field(default_factory=list)
    modality: str = "image"


def export_run(*, run_dir: str | Path, out: str | Path, format: str = "ajuste", merge: bool = False,
               overwrite: bool = False, rtol: float = 1e-3) -> ExportResult:
    """Write ``run_dir`` to ``out`` in ``format`` and check it reproduces the run's logits (|Δ| ≤ rtol ×
    max(1, max |logit|)); raise ``AjusteError`` and leave ``out`` untouched otherwise."""
    if format not in FORMATS:
        raise AjusteError(f"--format {format!r} is not one of {', '.join(FORMATS)}")
    run_dir, out = Path(run_dir), Path(out)
    if format == "onnx":
        onnx.require_onnx()
    replace = check_out(run_dir, out, overwrite=overwrite)
    run = load_run(run_dir)
    bb = run.backbone
    method = bb.peft["method"] if bb.peft else None
    peft_method = get_method(method) if method else None
    if format != "ajuste" and peft_method and peft_method.wraps and not peft_method.mergeable:
        raise AjusteError(f"{run_dir} is a {method} run: {peft_method.why_no_merge}, so there is no plain network "
                          f"to export as {format}; use --format ajuste (only {' and '.join(mergeable_methods())} "
                          f"merge)")
    why_not = bb.why_not_format(format)
    if why_not:
        raise AjusteError(f"{run_dir} cannot be exported as {format}: {why_not}")
    probes = [probe_inputs(bb, run.preprocessing)]
    if format != "ajuste":
        probes.append(probe_inputs(bb, run.preprocessing, second=True))
    # What the run's predict computes: the logits divided by its temperature (calibration.json; 1 without one).
    # Every format carries T, so an export that dropped it fails the comparison below.
    before = [exported(probe_logits(bb, p), run.task, run.temperature) for p in probes]
    merge = merge or format != "ajuste"
    if merge:
        merge_adapters(bb)  # raises a one-line ConfigError for prompt/prefix tuning
    merged = bool(merge and peft_method and peft_method.wraps)

    stage = out.parent / f".{out.name}.partial-{os.getpid()}"
    if stage.exists():
        shutil.rmtree(stage)
    stage.mkdir(parents=True)
    try:
        writer, checker = _FORMATS_IMPL[format]
        exporter = writer(bb, run, stage, probes)
        # Check the written directory, not the in-memory model: this is what users will load.
        after = checker(stage, bb, run, probes)
        diff = max(float((a - b).abs().max()) for a, b in zip(after, before))
        scale = max(float(b.abs().max()) for b in before + [torch.ones(1)])
        if not diff <= rtol * scale:
            raise AjusteError(f"export check failed: {format} logits differ from {run_dir} by up to {diff:.3g} "
                              f"(allowed {rtol * scale:.2g}); nothing was written to {out}")
        record = {"format": format, "from": str(run_dir), "merged": merged, "method": method,
                  "max_abs_logit_diff": diff, "probe_batches": [probe_shape(p) for p in probes],
                  "temperature": run.temperature}
        if exporter:
            record["exporter"] = exporter
        if format == "ajuste":
            summary: dict[str, Any] = dict(run.summary or {})
            summary["export"] = record
            summary["weights_sha256"] = weights_digest(stage / "model.safetensors")  # merged weights: a new file
            atomic_write_json(stage / "summary.json", summary)
        else:
            atomic_write_json(stage / "export.json", record)
        check_tree(stage)
        if replace:
            shutil.rmtree(out)
        os.replace(stage, out)
    finally:
        if stage.exists():
            shutil.rmtree(stage, ignore_errors=True)
    main_file = {"ajuste": "model.safetensors", "hf": "model.safetensors", "onnx": "model.onnx",
                 "torchscript": "model.pt"}[format]
    return ExportResult(out=out, merged=merged, method=method, max_abs_diff=diff,
                        peft_needed=bool(format == "ajuste" and bb.peft and peft_method.wraps),
                        model_bytes=(out / main_file).stat().st_size, format=format, exporter=exporter,
                        files=sorted(p.name for p in out.iterdir()), modality=bb.modality)
