"""``--format torchscript``: ``model.pt`` from ``torch.jit.trace`` with the run's labels, preprocessing and
tokenizer beside it, checked by loading the file back and running the probes through it."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from ajuste.export.common import Positional, as_args, input_names, quiet, write_sidecars


def write(bb: Any, run: Any, stage: Path, probes: list[Any]) -> None:
    names = input_names(probes[0])
    with quiet(), torch.no_grad():
        traced = torch.jit.trace(Positional(bb, names, run.temperature, run.task).eval(), as_args(probes[0], names), strict=False,
                                 check_trace=False)
        torch.jit.save(traced, str(stage / "model.pt"))
    write_sidecars(bb, run, stage, names)
    return None


def check(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    with quiet():
        model = torch.jit.load(str(stage / "model.pt"), map_location="cpu")
    model.eval()
    with torch.no_grad():
        return [model(*as_args(p, input_names(p))).float() for p in probes]
