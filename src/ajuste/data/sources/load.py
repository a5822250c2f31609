"""`load_data`, the one entry point: what kind of source it was given, the loader table that reads each kind,
and the refusals every kind shares (a missing path, a folder ajuste made, data of the wrong modality)."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ajuste.data.sources.common import BUILTIN_SOURCES, SUPPORTED_FILES, _file_kind, _noting
from ajuste.data.sources.digits import _load_digits
from ajuste.data.sources.image_table import has_label_table, load_image_table
from ajuste.data.sources.images import _load_image_folder
from ajuste.data.sources.labels import _finish
from ajuste.data.sources.npz import _load_npz
from ajuste.data.sources.records import LabelledData, _Raw
from ajuste.data.sources.table_columns import pair_columns
from ajuste.data.sources.tables import _find_split_tables, _load_text_dir, _load_text_file
from ajuste.data.sources.targets import detect_task, finish_multilabel, finish_regression
from ajuste.errors import DataError
from ajuste.io import ajuste_dir_kind


@dataclass(frozen=True)
class _Options:
    """What `load_data` was asked beyond the source; each loader reads the fields it needs."""

    text_col: str | None
    label_col: str | None
    strict: bool
    task: str = "auto"


def _table_file(path: Path, kind: str, o: _Options) -> _Raw:
    return _load_text_file(path, kind, text_col=o.text_col, label_col=o.label_col, strict=o.strict)


# kind (from `_source_kind`) -> loader(path, kind, options); the path is None for a built-in source.
_LOADERS: dict[str, Callable[[Path | None, str, _Options], _Raw]] = {
    "digits": lambda path, kind, o: _load_digits(),
    "image folder": lambda path, kind, o: _load_image_folder(path, strict=o.strict),
    "image table": lambda path, kind, o: load_image_table(path, label_col=o.label_col, strict=o.strict),
    "table folder": lambda path, kind, o: _load_text_dir(path, text_col=o.text_col, label_col=o.label_col,
                                                         strict=o.strict, task=o.task),
    "npz": lambda path, kind, o: _load_npz(path),
    "csv": _table_file,
    "tsv": _table_file,
    "jsonl": _table_file,
}

_TABLE_KINDS = frozenset({"table folder", "csv", "tsv", "jsonl"})
_KIND_IN_WORDS = {"digits": "the built-in image set digits", "image folder": "an image folder",
                  "image table": "an image folder with labels.csv",
                  "npz": "an array file (.npz)"}
_MADE_BY = {"run": "a training run", "study": "a study (`ajuste compare`)", "search": "a search (`ajuste tune`)"}


def load_data(
    source: str | Path,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    classes: list[str] | None = None,
    modality: str | None = None,
    strict: bool = False,
    task: str = "auto",
    notes: list[str] | None = None,
) -> LabelledData:
    """Load a labelled data set from ``source`` (a path or the built-in name ``"digits"``).

    ``text_col`` / ``label_col`` pick the columns of a text table (auto-detected when obvious).
    ``classes`` (the class list of a trained run) maps labels onto that fixed order; a label outside it is an error.
    ``modality`` (that of a trained run's model): other data is refused before its labels are compared.
    A plain string equal to a built-in name always means the built-in; write ``./digits`` for a folder of that name.
    Unreadable images, malformed JSONL lines and rows without a text or a label are skipped, each kind counted in
    one of ``.warnings``; ``strict=True`` raises `DataError` on the first of them instead (naming file and line).
    A source where nothing is usable is an error either way.
    ``task``: auto | classification | multilabel | regression (`targets.detect_task`); what auto detected is said
    in ``notes``.
    """
    kind, path = _source_kind(source)
    if kind not in _TABLE_KINDS and pair_columns(text_col) is not None:
        raise DataError(f"--text-col {text_col} names a text pair, but {source} is {_KIND_IN_WORDS.get(kind, kind)}, "
                        f"not a table; a text pair comes from two columns of a .csv/.tsv/.jsonl table")
    raw = _LOADERS[kind](path, kind, _Options(text_col=text_col, label_col=label_col, strict=strict,
                                                      task=task))
    if modality is not None and raw.modality != modality:
        article = "an" if modality[0] in "aeiou" else "a"
        raise DataError(f"{source} holds {raw.modality} data but the model is {article} {modality} model; "
                        f"give {modality} data")
    kind, why = detect_task(raw.labels, task)
    if why and notes is not None:
        notes.append(why)
    with _noting(raw.skipped):
        if kind == "multilabel":
            return finish_multilabel(raw, classes=classes)
        if kind == "regression":
            return finish_regression(raw)
        return _finish(raw, classes=classes)


def _source_kind(source: str | Path) -> tuple[str, Path | None]:
    """(kind, path) of a source: a key of `_LOADERS`, and the path to read (None for a built-in)."""
    if isinstance(source, str) and source.strip().lower() in BUILTIN_SOURCES:
        return source.strip().lower(), None
    path = Path(source).expanduser()
    if not path.exists():
        raise DataError(_missing_path_message(str(source)))
    if path.is_dir():
        made = _MADE_BY.get(ajuste_dir_kind(path))
        if made:
            raise DataError(f"{source} is {made} made by ajuste, not a data set; give a folder of images "
                            f"(<class>/*.jpg), a .npz or a table of texts")
        if has_label_table(path):
            return "image table", path
        return ("table folder" if _find_split_tables(path) else "image folder"), path
    return _file_kind(path), path


def _missing_path_message(source: str) -> str:
    looks_like_name = not any(sep in source for sep in "/\\") and "." not in source
    if looks_like_name:
        return (
            f"data source '{source}' is neither an existing path nor a built-in data set; "
            f"use the built-in 'digits' or give the path of {SUPPORTED_FILES}"
        )
    hint = "" if Path(source).expanduser().is_absolute() else f" (relative paths start from {os.getcwd()})"
    return f"data source '{source}' does not exist; check the path{hint}"
