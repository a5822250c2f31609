"""Evaluate and predict with a trained backbone or a run directory."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ajuste.errors import AjusteError
from ajuste.io import ajuste_dir_kind, read_json
from ajuste.train.prepare import prepare_data
from ajuste.train.run_dir import read_status, status_error, weights_digest
from ajuste.train.run_dir import weights_metadata  # noqa: F401 - callers import it from here


def trainable_share(backbone: Any, phases: list[Any]) -> int:
    """Parameters that any phase trains (the union of their layer groups or PEFT selections)."""
    chosen: dict[int, int] = {}
    for ph in phases:
        for p in backbone.trainable_selection(ph.train_groups, select=getattr(ph, "select", None)):
            chosen[id(p)] = p.numel()
    return int(sum(chosen.values()))


def evaluate_split(backbone: Any, pipeline: Any, split: str, classes: list[str], cfg: Any) -> dict[str, Any]:
    from ajuste.metrics import classification_metrics
    from ajuste.train.loop import amp_for, predict_logits, use_channels_last

    loader = pipeline.loader(split, batch_size=max(64, pipeline.batch_size))
    logits, y = predict_logits(backbone, loader, amp=amp_for(cfg, backbone, training=False),
                               channels_last=use_channels_last(cfg, backbone))
    return classification_metrics(y.numpy(), logits.argmax(1).numpy(), classes)


@dataclass
class LoadedRun:
    run_dir: Path
    backbone: Any
    classes: list[str]
    preprocessing: Any
    config: Any
    summary: dict[str, Any] | None


def load_run(run_dir: str | Path) -> LoadedRun:
    """Rebuild a finished run's model offline; refuse a run directory whose files disagree."""
    from safetensors.torch import load_file

    from ajuste.backbones.factory import rebuild_backbone
    from ajuste.config import load_config
    from ajuste.train import stored_weights
    from ajuste.data.pipeline import Preprocessing

    run_dir = Path(run_dir)
    if run_dir.is_file():
        raise AjusteError(f"{run_dir} is a file; give the run directory `ajuste train` wrote (its --out)")
    if not run_dir.is_dir():
        raise AjusteError(f"run directory {run_dir} does not exist")
    needed = ["config.yaml", "labels.json", "preprocessing.json", "backbone.json", "model.safetensors"]
    missing = [n for n in needed if not (run_dir / n).is_file()]
    kind = ajuste_dir_kind(run_dir) if missing else ""
    if kind == "study":
        raise AjusteError(f"{run_dir} is a study of `ajuste compare`, not a run; its recommended model is "
                          f"{run_dir / 'best_model'}")
    if kind == "search":
        raise AjusteError(f"{run_dir} is a search of `ajuste tune`, not a run; train its best trial with "
                          f"`ajuste train --from-study {run_dir}`")
    if missing:
        status = read_status(run_dir)
        hint = f" (status: {status}; re-run the same `ajuste train` command to finish it)" if status else ""
        if status == "failed":  # re-running the same command would fail the same way: say why it failed
            hint = f" (training failed: {status_error(run_dir)})"
        elif (run_dir / "summary.json").is_file():  # finished, then damaged: re-running would refuse
            hint = " (the run had finished; a file was moved or deleted — retrain with `ajuste train ... --overwrite`)"
        raise AjusteError(f"{run_dir} is not a finished run: missing {', '.join(missing)}{hint}")
    classes = _read_json(run_dir, "labels.json")
    if not (isinstance(classes, list) and len(classes) >= 2 and all(isinstance(c, str) for c in classes)
            and len(set(classes)) == len(classes)):
        raise AjusteError(f"{run_dir}/labels.json must list the class names (at least 2 distinct strings); it "
                          f"holds {str(classes)[:80]} — restore it from the run or retrain")
    desc = _read_json(run_dir, "backbone.json")
    if not isinstance(desc, dict) or "kind" not in desc:
        raise AjusteError(f"{run_dir}/backbone.json does not describe a backbone (no 'kind'); restore it or retrain")
    if desc.get("num_classes") != len(classes):
        raise AjusteError(f"{run_dir}: backbone.json says {desc.get('num_classes')} classes but labels.json "
                          f"lists {len(classes)}; the run directory is inconsistent")
    summary = _read_json(run_dir, "summary.json") if (run_dir / "summary.json").is_file() else None
    if isinstance(summary, dict) and isinstance(summary.get("classes"), list) and summary["classes"] != classes:
        raise AjusteError(f"{run_dir}/labels.json lists {_short(classes)} but the run was trained on "
                          f"{_short(summary['classes'])} (summary.json); restore labels.json or retrain")
    if desc["kind"] == "hf" and not (run_dir / "hf").is_dir():
        raise AjusteError(f"{run_dir} is a text run but has no hf/ folder (encoder config and tokenizer); "
                          "restore it from the run or retrain")
    weights = run_dir / "model.safetensors"
    meta = _check_weights_file(run_dir, weights, classes, summary)
    try:
        state = load_file(weights)
    except Exception as exc:  # noqa: BLE001 - safetensors raises its own SafetensorError for a damaged header
        raise AjusteError(f"cannot read {weights} ({type(exc).__name__}: {str(exc)[:120]}); the file is damaged "
                          "— retrain or restore it") from None
    ref = stored_weights.reference(meta)
    if ref is not None:  # the trained tensors only: the rest from the base weights, checked by their hash
        backbone, state = stored_weights.with_base(run_dir, desc, state, ref)
    else:
        backbone = rebuild_backbone(desc, run_dir)
    _check_state_shapes(run_dir, backbone, state)
    try:
        backbone.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        first = str(exc).splitlines()[0]
        raise AjusteError(f"{run_dir}/model.safetensors does not match the architecture in backbone.json "
                          f"({first[:200]})") from None
    backbone.eval()
    try:
        pre = Preprocessing.from_dict(_read_json(run_dir, "preprocessing.json"))
    except (TypeError, ValueError) as exc:
        raise AjusteError(f"{run_dir}/preprocessing.json is not a preprocessing record ({exc}); restore it "
                          "or retrain") from None
    return LoadedRun(run_dir, backbone, classes, pre, load_config(run_dir / "config.yaml"), summary)


def _check_weights_file(run_dir: Path, weights: Path, classes: list[str], summary: Any) -> dict[str, str]:
    """Refuse weights that are not this run's: the classes in the file's header (runs since the header carries
    them) and the checksum in summary.json (when recorded). Returns the header."""
    from safetensors import safe_open

    try:
        with safe_open(str(weights), framework="pt") as fh:
            meta = fh.metadata() or {}
    except Exception as exc:  # noqa: BLE001 - a damaged or foreign file: safetensors' own error type
        raise AjusteError(f"cannot read {weights} ({type(exc).__name__}: {str(exc)[:120]}); it is not a complete "
                          "safetensors file — retrain or restore it") from None
    if "labels" in meta:
        try:
            trained = json.loads(meta["labels"])
        except json.JSONDecodeError:
            trained = None
        if trained != classes:
            raise AjusteError(f"{weights} was trained for the classes {_short(trained)} but labels.json lists "
                              f"{_short(classes)}; the weights belong to another run — restore this run's files "
                              "or retrain")
    want = summary.get("weights_sha256") if isinstance(summary, dict) else None
    if want and weights_digest(weights) != want:
        raise AjusteError(f"{weights} is not the file this run saved (its sha256 differs from summary.json); it was "
                          "replaced or damaged — restore it or retrain")
    return meta


def _check_state_shapes(run_dir: Path, backbone: Any, state: dict) -> None:
    """Name the first missing, unexpected or differently shaped tensor (load_state_dict's message is a list)."""
    expected = backbone.state_dict()
    missing = [k for k in expected if k not in state]
    extra = [k for k in state if k not in expected]
    wrong = [(k, tuple(state[k].shape), tuple(v.shape)) for k, v in expected.items()
             if k in state and tuple(state[k].shape) != tuple(v.shape)]
    if wrong:
        k, got, want = wrong[0]
        more = f" (+{len(wrong) - 1} more)" if len(wrong) > 1 else ""
        raise AjusteError(f"{run_dir}/model.safetensors does not fit backbone.json: {k} has shape {list(got)}, the "
                          f"architecture needs {list(want)}{more}; the weights belong to another model — restore "
                          "this run's files or retrain")
    if missing or extra:
        what = f"lacks {missing[0]}" if missing else f"has {extra[0]}, which the architecture does not"
        n = len(missing) + len(extra) - 1
        raise AjusteError(f"{run_dir}/model.safetensors does not fit backbone.json: it {what}"
                          f"{f' (+{n} more differences)' if n else ''}; restore this run's files or retrain")


def _read_json(run_dir: Path, name: str) -> Any:
    return read_json(run_dir / name, "restore it from the run or retrain")


def _short(items: Any, limit: int = 6) -> str:
    if not isinstance(items, list):
        return repr(items)[:60]
    shown = ", ".join(map(str, items[:limit]))
    return f"[{shown}{', ...' if len(items) > limit else ''}] ({len(items)})"


def evaluate_run(run_dir: str | Path, data_source: str | None = None, *, text_col: str | None = None,
                 label_col: str | None = None, warn: Any = None, strict: bool = False) -> dict[str, Any]:
    """Metrics of a run on its own test split (default) or on another labelled source. ``warn`` receives the
    data's warnings (skipped images, dropped rows). ``strict``: an unreadable image or malformed row is an error
    (the run's own split is also re-read strictly when it was trained with ``data.strict``)."""
    from ajuste.data.pipeline import Pipeline
    from ajuste.data.sources import load_data
    from ajuste.metrics import classification_metrics
    from ajuste.train.loop import amp_for, predict_logits, use_channels_last

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
                         classes=run.classes, modality=run.backbone.modality, strict=strict)
        test_idx = np.asarray(data.splits["test"]) if "test" in data.splits else np.arange(len(data))
        where = f"{'test split of ' if 'test' in data.splits else ''}{data_source}"
    for note in data.warnings if warn is not None else ():
        warn(note)
    pipe = Pipeline(data, {"test": test_idx}, run.preprocessing, tokenizer=getattr(run.backbone, "tokenizer", None),
                    augment="none")
    logits, y = predict_logits(run.backbone, pipe.loader("test", batch_size=64),
                               amp=amp_for(cfg, run.backbone, training=False),
                               channels_last=use_channels_last(cfg, run.backbone))
    metrics = classification_metrics(y.numpy(), logits.argmax(1).numpy(), run.classes)
    metrics["evaluated_on"] = where
    return metrics


def inference_device(cfg: Any) -> Any:
    """Where evaluate and predict run a loaded model: the CPU when its config says so, else the GPU when one is
    here. A run trained on a GPU (train.device=cuda) is still evaluated on a machine without one."""
    from ajuste.train.execution import resolve_device

    return resolve_device("cpu" if cfg.train.device == "cpu" else "auto")


def _own_test_split(run_dir: Path, data: Any, source: Any) -> np.ndarray:
    """The rows of ``data`` that were the run's test split, found by content: the file may have been reordered.
    Changed content is refused (some "test" rows could be training rows now): one line saying what changed."""
    from ajuste.data import fingerprint

    saved = fingerprint.read(run_dir)
    if saved is None:  # a run made before fingerprints were kept: its row numbers are all there is
        test_idx = np.asarray(_read_json(run_dir, "splits.json")["test"])
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
    from ajuste.data.pipeline import Pipeline
    from ajuste.data.sources import LabelledData
    from ajuste.train.loop import amp_for, predict_logits, use_channels_last

    if not inputs:
        raise AjusteError("nothing to predict: give files, folders, globs, texts, or - to read stdin")
    blank = [k for k, item in enumerate(inputs, start=1) if not str(item).strip()]
    if blank:
        raise AjusteError(f"input {blank[0]} is empty (''); give a file, folder, glob, text, or - to read stdin")
    run = load_run(run_dir)
    run.backbone.to(inference_device(run.config))
    stdin_lines = _read_stdin(stdin) if "-" in inputs else []
    if run.backbone.modality == "image":
        names = _readable_images(_expand_image_inputs(inputs, stdin_lines), strict=strict, warn=warn)
        items: Any = names
    else:
        names, items = _expand_text_inputs(inputs, text_col or run.config.data.text_col, stdin_lines,
                                           strict=strict, warn=warn)
    data = LabelledData(modality=run.backbone.modality, inputs=items, labels=np.zeros(len(items), dtype=np.int64),
                        classes=run.classes, splits={}, source="predict", warnings=[])
    pipe = Pipeline(data, {"test": np.arange(len(items))}, run.preprocessing,
                    tokenizer=getattr(run.backbone, "tokenizer", None), augment="none")
    logits, _ = predict_logits(run.backbone, pipe.loader("test", batch_size=64),
                               amp=amp_for(run.config, run.backbone, training=False),
                               channels_last=use_channels_last(run.config, run.backbone))
    probs = torch.softmax(logits, 1).numpy()
    out = []
    for name, p in zip(names, probs):
        k = int(p.argmax())
        out.append({"input": name, "label": run.classes[k], "probability": float(p[k])})
    return out


_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_TEXT_EXT = {".csv", ".tsv", ".jsonl", ".txt"}


_FILE_EXT = _IMAGE_EXT | _TEXT_EXT | {".json", ".npz", ".npy", ".parquet", ".xlsx", ".xls", ".pdf", ".docx"}


def _looks_like_a_file(item: str) -> bool:
    """One word ending in a file suffix ("reviews.csv", "data/*.tsv"): meant as a path, not as a text."""
    return not any(ch.isspace() for ch in item) and Path(item).suffix.lower() in _FILE_EXT


def _read_stdin(stdin: Any) -> list[str]:
    import sys

    stream = sys.stdin if stdin is None else stdin
    if getattr(stream, "isatty", lambda: False)():
        raise AjusteError("- reads inputs from stdin, but stdin is a terminal; pipe them in "
                          "(e.g. `ls shots/*.jpg | ajuste predict RUN -`)")
    return stream.read().splitlines()


def _is_glob(item: str) -> bool:
    import glob

    return glob.has_magic(item) and not Path(item).exists()


def _glob(item: str) -> list[Path]:
    import glob

    return [Path(m) for m in sorted(glob.glob(str(Path(item).expanduser()), recursive=True))
            if not Path(m).name.startswith(".")]


def _images_in(folder: Path) -> list[str]:
    return sorted(str(f) for f in folder.rglob("*") if f.suffix.lower() in _IMAGE_EXT
                  and not f.name.startswith(".") and f.is_file())


def _expand_image_inputs(inputs: list[str], stdin_lines: list[str] = ()) -> list[str]:
    files: list[str] = []
    for item in inputs:
        if item == "-":
            paths = [ln.strip() for ln in stdin_lines if ln.strip()]
            if not paths:
                raise AjusteError("- (stdin) gave no image paths; pipe one path per line")
            for ln in paths:
                if not Path(ln).is_file():
                    raise AjusteError(f"stdin names {ln}, which is not an image file; pipe one image path per line")
            files.extend(paths)
            continue
        p = Path(item)
        if _is_glob(item):
            matched = _glob(item)
            found = [str(m) for m in matched if m.is_file() and m.suffix.lower() in _IMAGE_EXT]
            for m in matched:
                if m.is_dir():
                    found.extend(_images_in(m))
            if not found:
                raise AjusteError(f"{item}: no image files match this pattern (extensions "
                                  f"{', '.join(sorted(_IMAGE_EXT))})")
            files.extend(found)
        elif p.is_dir():
            files.extend(_images_in(p))
        elif p.is_file():
            if p.suffix.lower() in _TEXT_EXT:
                raise AjusteError(f"{item} is a text table but the run is an image model; give image files or folders")
            files.append(str(p))
        else:
            raise AjusteError(f"{item}: no such image file or folder")
    if not files:
        raise AjusteError(f"no images found in {', '.join(inputs)}")
    return files


def _readable_images(files: list[str], *, strict: bool, warn: Any) -> list[str]:
    """``files`` less those that do not decode (with the reasons `ajuste train` gives when it skips them)."""
    from ajuste.data.sources import _listing, check_images
    from ajuste.errors import DataError

    problems = check_images([Path(f) for f in files])
    bad = [i for i, p in enumerate(problems) if p is not None]
    if not bad:
        return files
    first = f"{files[bad[0]]} cannot be read ({problems[bad[0]]}); replace or remove it"
    if strict or len(files) == 1:
        raise DataError(first)
    if len(bad) == len(files):
        raise DataError(f"none of the {len(files)} images could be read (e.g. {files[0]}: {problems[0]}); check "
                        "that the files are real, complete images")
    if warn is not None:
        warn(f"skipped {len(bad)} unreadable image{'s' if len(bad) > 1 else ''} of {len(files)}: "
             f"{_listing(f'{files[i]} ({problems[i]})' for i in bad)}")
    return [f for f, p in zip(files, problems) if p is None]


def _expand_text_inputs(inputs: list[str], text_col: str | None, stdin_lines: list[str] = (), *,
                        strict: bool = False, warn: Any = None) -> tuple[list[str], list[str]]:
    from ajuste.data.sources import _decode, load_texts

    names: list[str] = []
    texts: list[str] = []

    def add_file(p: Path, label: str) -> None:
        if p.suffix.lower() in (".csv", ".tsv", ".jsonl"):
            rows, lines = load_texts(p, text_col=text_col, strict=strict, warn=warn)
            names.extend(f"{label}:{line}" for line in lines)
            texts.extend(rows)
        else:
            numbered = [(no, ln) for no, ln in enumerate(_decode(p).splitlines(), start=1) if ln.strip()]
            names.extend(f"{label}:{no}" for no, _ in numbered)
            texts.extend(ln for _, ln in numbered)

    for item in inputs:
        if item == "-":
            numbered = [(no, ln) for no, ln in enumerate(stdin_lines, start=1) if ln.strip()]
            names.extend(f"stdin:{no}" for no, _ in numbered)
            texts.extend(ln for _, ln in numbered)
            continue
        p = Path(item)
        # a text model would happily "classify" the file name of an image: refuse instead
        if p.is_dir() or (p.is_file() and p.suffix.lower() in _IMAGE_EXT):
            raise AjusteError(f"{item} is an image {'folder' if p.is_dir() else 'file'} but the run is a text "
                              f"model; give texts, or a .csv/.tsv/.jsonl/.txt file of texts")
        if _is_glob(item):
            # A pattern that matches text files is a glob; anything else ("why?") is a text to classify.
            matched = [m for m in _glob(item) if m.is_file()]
            if matched and all(m.suffix.lower() in _TEXT_EXT for m in matched):
                for m in matched:
                    add_file(m, str(m))
                continue
            if matched and any(m.suffix.lower() in _IMAGE_EXT for m in matched):
                raise AjusteError(f"{item} matches image files but the run is a text model; give texts, or "
                                  f".csv/.tsv/.jsonl/.txt files of texts")
        if p.is_file() and p.suffix.lower() in (".csv", ".tsv", ".jsonl", ".txt", ""):
            add_file(p, p.name)
        elif p.is_file():
            raise AjusteError(f"{item}: a text model reads texts from .csv/.tsv/.jsonl/.txt files, not "
                              f"{p.suffix} files; convert it, or pass the texts themselves")
        elif _looks_like_a_file(item):
            raise AjusteError(f"{item}: {'no file matches this pattern' if _is_glob(item) else 'no such file'}"
                              f"; check the path (a text to classify that looks like a file name: add a word)")
        else:
            names.append(item if len(item) <= 60 else item[:57] + "...")
            texts.append(item)
    if not texts:
        raise AjusteError("nothing to predict: no text found in the inputs")
    return names, texts
