"""Evaluate and predict with a trained backbone or a run directory.

A run directory is loaded by ``ajuste.training.run_load``, and what ``ajuste predict`` is given is read by
``ajuste.training.predict_inputs``; the names callers imported from here before those modules existed still are.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajuste.data import fingerprint
from ajuste.data.pipeline import Pipeline
from ajuste.data.sources import LabelledData, load_data
from ajuste.errors import AjusteError
from ajuste.metrics import classification_metrics, metric_name, softmax
from ajuste.tasks import Task, multilabel_metrics, regression_metrics, tune_thresholds
from ajuste.training import calibration
from ajuste.training.execution import resolve_device
from ajuste.training.inference import amp_for, predict_logits, use_channels_last
from ajuste.training.predict_inputs import (
    check_pairs,
    expand_image_inputs,
    expand_text_inputs,
    read_stdin,
    readable_images,
)
from ajuste.training.prepare import prepare_data
from ajuste.training.run_dir import weights_digest, weights_metadata  # noqa: F401 - callers import them from here
from ajuste.training.run_load import LoadedRun, load_run, read_run_json  # noqa: F401 - LoadedRun: likewise

_expand_text_inputs = expand_text_inputs  # the name tests import from here


def trainable_share(backbone: Any, phases: list[Any]) -> int:
    """Parameters that any phase trains (the union of their layer groups or PEFT selections)."""
    chosen: dict[int, int] = {}
    for ph in phases:
        for p in backbone.trainable_selection(ph.train_groups, select=getattr(ph, "select", None)):
            chosen[id(p)] = p.numel()
    return int(sum(chosen.values()))


def evaluate_split(backbone: Any, pipeline: Any, split: str, classes: list[str], cfg: Any, *,
                   temperature: float = 1.0) -> dict[str, Any]:
    """Metrics of one split for the pipeline's task; a classifier's with its calibration before and after dividing
    the logits by ``temperature``."""
    loader = pipeline.loader(split, batch_size=max(64, pipeline.batch_size))
    logits, y = predict_logits(backbone, loader, amp=amp_for(cfg, backbone, training=False),
                               channels_last=use_channels_last(cfg, backbone))
    return task_metrics(pipeline.task, logits, y, classes, temperature)


def task_metrics(task: Task, logits: torch.Tensor, y: torch.Tensor, classes: list[str],
                 temperature: float = 1.0) -> dict[str, Any]:
    """The metrics of ``task`` for ``logits`` against ``y``: classification's (with calibration), multi-label's
    (at the task's thresholds) or regression's (in the target's units)."""
    logits = logits.float()
    if task.kind == "regression":
        return regression_metrics(y.numpy(), task.outputs(logits))
    if task.kind == "multilabel":
        return multilabel_metrics(y.numpy(), task.outputs(logits), classes, task.thresholds)
    metrics = classification_metrics(y.numpy(), logits.argmax(1).numpy(), classes,
                                     probs=softmax(logits.numpy() / temperature))
    metrics["calibration"] = calibration.scores(logits, y, temperature)
    return metrics


@torch.no_grad()
def tune_label_thresholds(backbone: Any, pipeline: Any, cfg: Any) -> list[float]:
    """Multi-label: each label's decision threshold, the one with the best F1 on the validation split."""
    loader = pipeline.loader("val", batch_size=max(64, pipeline.batch_size))
    logits, y = predict_logits(backbone, loader, amp=amp_for(cfg, backbone, training=False),
                               channels_last=use_channels_last(cfg, backbone))
    return tune_thresholds(pipeline.task.outputs(logits), y.numpy())


def evaluate_run(run_dir: str | Path, data_source: str | None = None, *, text_col: str | None = None,
                 label_col: str | None = None, warn: Any = None, strict: bool = False) -> dict[str, Any]:
    """Metrics of a run on its own test split (default) or on another labelled source. ``warn`` receives the
    data's warnings (skipped images, dropped rows). ``strict``: an unreadable image or malformed row is an error
    (the run's own split is also re-read strictly when it was trained with ``data.strict``)."""
    run = load_run(run_dir)
    cfg = run.config
    run.backbone.to(inference_device(cfg))
    columns = " and ".join(f"--{n}" for n, v in (("text-col", text_col), ("label-col", label_col)) if v)
    verb = "are" if text_col and label_col else "is"
    if columns and run.backbone.modality != "text":
        raise AjusteError(f"{columns} {verb} for a table of texts, and {run.run_dir} is an image model; "
                          f"drop {columns}")
    if columns and data_source is None:
        raise AjusteError(f"{columns} {verb} for DATA, and none was given: {run.run_dir} is evaluated on its own "
                          f"test split, read with the columns it was trained on; pass DATA, or drop {columns}")
    if data_source is None:
        data, _ = prepare_data(cfg.override({"data.strict": True}) if strict else cfg)
        test_idx = _own_test_split(run.run_dir, data, cfg.data.source)
        where = f"test split of {cfg.data.source}"
    else:
        data = load_data(data_source, text_col=text_col or cfg.data.text_col, label_col=label_col or cfg.data.label_col,
                         classes=None if run.task.kind == "regression" else run.classes,
                         modality=run.backbone.modality, strict=strict, task=run.task.kind)
        test_idx = np.asarray(data.splits["test"]) if "test" in data.splits else np.arange(len(data))
        where = f"{'test split of ' if 'test' in data.splits else ''}{data_source}"
        check_pairs(data.inputs, run)
    for note in data.warnings if warn is not None else ():
        warn(note)
    pipe = Pipeline(data, {"test": test_idx}, run.preprocessing, tokenizer=getattr(run.backbone, "tokenizer", None),
                    augment="none", task=run.task)
    logits, y = predict_logits(run.backbone, pipe.loader("test", batch_size=64),
                               amp=amp_for(cfg, run.backbone, training=False),
                               channels_last=use_channels_last(cfg, run.backbone))
    metrics = task_metrics(run.task, logits, y, run.classes, run.temperature)
    metrics["task"] = run.task.kind
    metrics["metric"] = metric_name(cfg.train.monitor)  # what the run was judged on: shown first
    metrics["evaluated_on"] = where
    return metrics


def inference_device(cfg: Any) -> Any:
    """Where evaluate and predict run a loaded model: the CPU when its config says so, else the GPU when one is
    here. A run trained on a GPU (train.device=cuda) is still evaluated on a machine without one."""
    return resolve_device("cpu" if cfg.train.device == "cpu" else "auto")


def _own_test_split(run_dir: Path, data: Any, source: Any) -> np.ndarray:
    """The rows of ``data`` that were the run's test split, found by content: the file may have been reordered.
    Changed content is refused (some "test" rows could be training rows now): one line saying what changed."""
    saved = fingerprint.read(run_dir)
    if saved is None:  # a run made before fingerprints were kept: its row numbers are all there is
        test_idx = np.asarray(read_run_json(run_dir, "splits.json")["test"])
        if len(test_idx) and test_idx.max() >= len(data):
            raise AjusteError(f"{run_dir}: the data source {source} changed since training "
                              f"(test indices out of range); pass DATA explicitly")
        return test_idx
    change = fingerprint.describe_change(saved, data, "test")
    if change is not None:
        raise AjusteError(f"{source} changed since {run_dir} was trained ({change}), so its test split cannot be "
                          f"told apart from its training data any more; restore the data, or score the run on "
                          f"the data as it is on purpose: ajuste evaluate {run_dir} DATA")
    return fingerprint.locate(saved, data, "test")


def predict_inputs(run_dir: str | Path, inputs: list[str], *, text_col: str | None = None,
                   stdin: Any = None, strict: bool = False, warn: Any = None) -> list[dict[str, Any]]:
    """Label + probability for each input.

    Image runs: image files, folders (searched recursively), glob patterns (``"shots/**/*.jpg"``), or
    ``-`` for file paths read from stdin, one per line. Text runs: CSV/TSV/JSONL/TXT files of texts,
    globs matching such files, literal texts, or ``-`` for texts read from stdin, one per line. A single
    word ending in a file suffix is a path: if no file is there, that is an error, not a text.
    ``stdin`` defaults to ``sys.stdin``.

    An image that cannot be decoded, or a malformed line of a JSONL file, is skipped (no row for it) and
    ``warn`` receives one warning that counts them; ``strict=True`` raises `DataError` on the first instead.
    Nothing usable at all is an error either way.
    """
    if not inputs:
        raise AjusteError("nothing to predict: give files, folders, globs, texts, or - to read stdin")
    blank = [k for k, item in enumerate(inputs, start=1) if not str(item).strip()]
    if blank:
        raise AjusteError(f"input {blank[0]} is empty (''); give a file, folder, glob, text, or - to read stdin")
    run = load_run(run_dir)
    run.backbone.to(inference_device(run.config))
    stdin_lines = read_stdin(stdin) if "-" in inputs else []
    if run.backbone.modality == "image":
        names = readable_images(expand_image_inputs(inputs, stdin_lines), strict=strict, warn=warn)
        items: Any = names
    else:
        names, items = expand_text_inputs(inputs, text_col or run.config.data.text_col, stdin_lines,
                                          strict=strict, warn=warn)
        check_pairs(items, run)
    return [dict(input=name, **row) for name, row in zip(names, prediction_rows(run, predict_items(run, items)))]


def prediction_rows(run: LoadedRun, outputs: np.ndarray) -> list[dict[str, Any]]:
    """One answer per example: the label and its probability (classification); the labels over their thresholds
    and every label's probability (multi-label); the predicted value (regression)."""
    if run.task.kind == "regression":
        return [{"value": float(v)} for v in outputs]
    if run.task.kind == "multilabel":
        chosen = run.task.labels_of(outputs)
        return [{"labels": [run.classes[k] for k in np.flatnonzero(c)],
                 "probabilities": {name: round(float(q), 6) for name, q in zip(run.classes, p)}}
                for p, c in zip(outputs, chosen)]
    return [{"label": run.classes[int(p.argmax())], "probability": float(p.max())} for p in outputs]


def predict_items(run: LoadedRun, items: Any) -> np.ndarray:
    """Calibrated class probabilities (softmax of the logits divided by the run's temperature), (N, classes), of a
    loaded run (multi-label: each label's probability, (N, labels); regression: the values, (N,)) for ``items``
    already in memory: texts for a text run ((first, second) tuples for a text-pair run);
    for an image run, image files or PIL images (resized and centre-cropped as in training), or one uint8
    (N, H, W[, C]) array when the run was trained on arrays (resized whole, as they were)."""
    data = LabelledData(modality=run.backbone.modality, inputs=items, labels=np.zeros(len(items), dtype=np.int64),
                        classes=run.classes, splits={}, source="predict", warnings=[])
    pipe = Pipeline(data, {"test": np.arange(len(items))}, run.preprocessing,
                    tokenizer=getattr(run.backbone, "tokenizer", None), augment="none", task=run.task)
    logits, _ = predict_logits(run.backbone, pipe.loader("test", batch_size=64),
                               amp=amp_for(run.config, run.backbone, training=False),
                               channels_last=use_channels_last(run.config, run.backbone))
    return run.task.outputs(logits, run.temperature)  # a classifier's calibrated: the run's T (1 without one)
