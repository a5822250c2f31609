"""What a run trains on, settled before anything is built: the data and its train/val/test split, the backbone
``model.name: auto`` names for that data, and the refusal of a model of the other modality.

Training a run, evaluating one on its own test split, and the commands that name things after the backbone
(a run directory, a study, a search) all start here.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ajuste.backbones import zoo
from ajuste.config import RunConfig
from ajuste.data.sources import load_data
from ajuste.data.splits import fraction_note, make_splits, take_fraction
from ajuste.errors import AjusteError


def prepare_data(cfg: RunConfig, *, data: Any = None, splits: dict[str, np.ndarray] | None = None,
                 notes: list[str] | None = None):
    """Load the source and fix the train/val/test split; the training fraction is taken from train.
    ``notes`` receives what the caller should warn about the split (a share raised to one per class)."""
    if data is None:
        data = load_data(cfg.data.source, text_col=cfg.data.text_col, label_col=cfg.data.label_col,
                         strict=cfg.data.strict, task=cfg.data.task, notes=notes)
    if splits is None:
        splits = make_splits(data, seed=cfg.data.split_seed, val_size=cfg.data.val_size,
                             test_size=cfg.data.test_size)
    splits = dict(splits)
    if cfg.data.fraction != 1.0:
        pool = splits["train"]
        splits["train"] = take_fraction(pool, data.labels, cfg.data.fraction, seed=cfg.data.split_seed)
        note = fraction_note(cfg.data.fraction, len(pool), len(splits["train"]), len(np.unique(data.labels[pool])))
        if note and notes is not None:
            notes.append(note)
    return data, splits


def resolve_model(cfg: RunConfig, data: Any) -> RunConfig:
    """``model.name: auto`` (the default) → the offline backbone for this data (``zoo.auto_model``)."""
    if cfg.model.name != "auto":
        return cfg
    return cfg.override({"model.name": zoo.auto_model(data.modality, len(data))}, where="model.name=auto")


def resolve_model_early(cfg: RunConfig, data: Any = None) -> tuple[RunConfig, Any]:
    """For callers that name things after the backbone before training (a run directory, a study): the config
    with ``model.name`` resolved, and the data, loaded only when ``auto`` needed it (else as given)."""
    if cfg.model.name != "auto":
        return cfg, data
    if data is None:
        data, _ = prepare_data(cfg)
    return resolve_model(cfg, data), data


def check_model_modality(model: str, modality: str | None, data: Any, source: Any) -> None:
    """Refuse a model of the other modality: ``modality`` is the built backbone's, or None to look the name up
    among the offline models (before anything is built)."""
    if modality is None:
        entry = zoo.ZOO.get(model)
        modality = entry.modality if entry is not None else None
    if modality is not None and modality != data.modality:
        raise AjusteError(f"model {model!r} is {_with_article(modality)} model but {source} holds "
                          f"{data.modality} data; pick {_with_article(data.modality)} model (`ajuste models`)")


def _with_article(modality: str) -> str:
    return f"an {modality}" if modality[:1] in "aeiou" else f"a {modality}"
