"""``--format ajuste``: a run directory that ``load_run``, ``ajuste evaluate`` and ``ajuste predict`` load — the
run's records copied, its weights written in full (merged when asked), checked by loading it as a run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ajuste.errors import AjusteError
from ajuste.export.common import exported, probe_logits
from ajuste.export.output import copy_file, inside
from ajuste.io import atomic_save_safetensors, atomic_write_json
from ajuste.training.run_dir import weights_metadata
from ajuste.training.run_load import load_run

# Files a run directory needs for evaluate/predict, plus its records (summary last: it marks completion).
_COPY = ["config.yaml", "labels.json", "preprocessing.json", "splits.json", "metrics.jsonl", "calibration.json",
         "task.json"]


def write(bb: Any, run: Any, stage: Path, probes: list[Any]) -> None:
    run_dir = run.run_dir
    for name in _COPY:
        if (run_dir / name).is_file():
            copy_file(run_dir / name, stage, name)
    if (run_dir / "hf").is_dir():
        hf = inside(stage, "hf")
        hf.mkdir()
        for f in sorted((run_dir / "hf").iterdir()):
            if not f.is_file() and not f.is_symlink():
                raise AjusteError(f"{f} is not a regular file; a run's hf/ folder holds only config and tokenizer "
                                  f"files")
            copy_file(f, hf, f.name)
    if bb.peft and (run_dir / "adapter.safetensors").is_file():
        copy_file(run_dir / "adapter.safetensors", stage, "adapter.safetensors")
    atomic_write_json(stage / "backbone.json", bb.describe())
    atomic_save_safetensors(stage / "model.safetensors", bb.state_dict(), metadata=weights_metadata(run.classes))
    return None


def check(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    loaded = load_run(stage)  # its temperature and task from the copied calibration.json and task.json
    return [exported(probe_logits(loaded.backbone, p), loaded.task, loaded.temperature) for p in probes]
