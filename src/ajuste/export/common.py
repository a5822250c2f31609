"""What the export formats share: the probe batches an export's logits are compared on, the positional form of
the backbone that exporters and tracers take, the files written beside a bare model (labels, preprocessing,
tokenizer), and the silence that exporters and loaders are kept in."""

from __future__ import annotations

import contextlib
import io
import warnings
from pathlib import Path
from typing import Any

import torch

from ajuste.io import atomic_write_json
from ajuste.lazy import quiet_transformers

_PROBE_TEXTS = ["a probe sentence for the export check", "short", "another, rather different line of text!",
                "free entry in a weekly prize draw"]
# A second batch of another size and length: catches shapes a trace or an exporter baked in. The long
# text is cut at the run's max_length, so truncation is checked too.
_PROBE_TEXTS_2 = ["ok", "the second probe batch has a different size and a much longer sequence than the first "
                  * 20, "third", "fourth line", "fifth, the last one"]


def probe_inputs(backbone: Any, preprocessing: Any, n: int = 4, *, second: bool = False) -> Any:
    """A small fixed batch in the model's input format (images: noise at the input size). ``second``:
    another batch of a different size (and sequence length)."""
    g = torch.Generator().manual_seed(1 if second else 0)
    if backbone.modality == "image":
        size = preprocessing.image_size
        return torch.randn(n + 3 if second else n, 3, size, size, generator=g)
    return encode_probes(backbone.tokenizer, n=n, second=second, pair=getattr(preprocessing, "text_pair", False),
                         max_length=preprocessing.max_length)


def probe_texts(n: int = 4, second: bool = False) -> list[str]:
    return list(_PROBE_TEXTS_2) if second else _PROBE_TEXTS[:n]


def encode_probes(tokenizer: Any, *, n: int = 4, second: bool = False, pair: bool = False,
                  **kwargs: Any) -> dict[str, torch.Tensor]:
    """The probe texts as a padded batch. ``pair`` (a text-pair model): each probe paired with the next, so a
    check runs token type ids of 1 and the second separator through the export (one that dropped them would
    disagree)."""
    texts = probe_texts(n, second)
    if pair:
        return dict(tokenizer(texts, texts[1:] + texts[:1], padding=True, truncation="longest_first",
                              return_tensors="pt", **kwargs))
    return dict(tokenizer(texts, padding=True, truncation=True, return_tensors="pt", **kwargs))


@torch.no_grad()
def probe_logits(backbone: Any, inputs: Any) -> torch.Tensor:
    backbone.eval()
    return backbone(inputs).float()


def probe_shape(p: Any) -> list[int]:
    return list((p["input_ids"] if isinstance(p, dict) else p).shape)


def exported(logits: torch.Tensor, task: Any, temperature: float = 1.0) -> torch.Tensor:
    """What an exported network outputs (`Positional`): a classifier's logits divided by the run's temperature
    (their softmax: its calibrated probabilities); a regression run's predictions in the target's units; a
    multi-label run's logits (their sigmoid: each label's probability, decided at task.json's thresholds)."""
    if task is not None and task.kind == "regression":
        return logits * task.std + task.mean
    if task is not None and task.kind == "multilabel":
        return logits
    return logits if temperature == 1.0 else logits / temperature


class Positional(torch.nn.Module):
    """The backbone with positional tensor inputs (the form exporters and tracers take), its outputs as `exported`
    makes them (the temperature, or a regression target's scale, a constant in the exported graph)."""

    def __init__(self, backbone: Any, names: list[str], temperature: float = 1.0, task: Any = None) -> None:
        super().__init__()
        self.backbone = backbone
        self.names = names
        self.temperature = float(temperature)
        self.task = task

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        if self.names == ["pixel_values"]:
            logits = self.backbone(tensors[0])
        else:
            logits = self.backbone(dict(zip(self.names, tensors)))
        return exported(logits, self.task, self.temperature)


def input_names(probe: Any) -> list[str]:
    return list(probe) if isinstance(probe, dict) else ["pixel_values"]


def as_args(probe: Any, names: list[str]) -> tuple[torch.Tensor, ...]:
    return tuple(probe[n] for n in names) if isinstance(probe, dict) else (probe,)


def save_tokenizer(bb: Any, run: Any, folder: Path) -> None:
    """The run's tokenizer, truncating at the run's max_length by default (as `ajuste predict` does)."""
    tok = bb.tokenizer
    old = tok.model_max_length
    tok.model_max_length = int(run.preprocessing.max_length)
    try:
        tok.save_pretrained(folder)
    finally:
        tok.model_max_length = old


def write_sidecars(bb: Any, run: Any, stage: Path, names: list[str]) -> None:
    atomic_write_json(stage / "labels.json", list(run.classes))
    pre = run.preprocessing.to_dict()
    pre["inputs"] = names
    atomic_write_json(stage / "preprocessing.json", pre)
    # what the exported logits were divided by: their softmax is the run's calibrated probabilities
    atomic_write_json(stage / "calibration.json", {"temperature": run.temperature, "applied_in_model": True})
    atomic_write_json(stage / "task.json", {**run.task.to_json(), "applied_in_model": run.task.kind == "regression"})
    if bb.modality == "text":
        save_tokenizer(bb, run, stage)


@contextlib.contextmanager
def quiet():
    """Exporters and loaders print progress and deprecation notes; the CLI prints one summary line."""
    quiet_transformers()
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield
