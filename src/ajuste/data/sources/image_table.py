"""An image folder whose labels are in a table, not in class sub-folders: ``<root>/labels.csv`` with one row per
image, the file's path relative to ``<root>`` and its label. This is how multi-label images (``file,labels`` with
``|``-separated names, or several 0/1 columns named with ``--label-col``) and image regression (``file,value``)
come; a single class per row works too."""

from __future__ import annotations

import os
from pathlib import Path

from ajuste.data.sources.common import IMAGE_EXTENSIONS, _display, _listing
from ajuste.data.sources.images import _drop_unreadable
from ajuste.data.sources.records import _Raw
from ajuste.data.sources.table_columns import _as_label, _resolve_column, combine_label_columns
from ajuste.data.sources.table_read import _read_table
from ajuste.errors import DataError

LABELS_FILE = "labels.csv"
_FILE_NAMES = ("file", "filename", "image", "path", "image_path", "file_name")


def has_label_table(folder: Path) -> bool:
    return (folder / LABELS_FILE).is_file()


def load_image_table(root: Path, *, label_col: str | None, strict: bool = False) -> _Raw:
    shown = _display(root)
    path = root / LABELS_FILE
    table, label_col = combine_label_columns(_read_table(path, "csv", strict=strict), label_col)
    if not table.rows:
        raise DataError(f"{path} has a header but no rows; add one row per image: file,label")
    file_col = next((c for c in table.columns if c.lower() in _FILE_NAMES), table.columns[0])
    others = [c for c in table.columns if c != file_col]
    if label_col:
        label = _resolve_column(table, label_col, "--label-col")
    elif len(others) == 1:
        label = others[0]
    else:
        raise DataError(f"cannot tell which column of {path} holds the label ({', '.join(others) or 'none'}); "
                        f"choose with --label-col (several 0/1 columns: --label-col a,b,c)")
    fi, li = table.columns.index(file_col), table.columns.index(label)
    paths, labels, missing, not_image, no_label = [], [], [], [], []
    for row, line in zip(table.rows, table.lines):
        name = str(row[fi] or "").strip()
        lab = _as_label(row[li], f"on line {line} of {path}")
        p = root / name
        if not name or not p.is_file():
            missing.append(f"{name or '(empty)'} (line {line})")
        elif p.suffix.lower() not in IMAGE_EXTENSIONS:
            not_image.append(name)
        elif lab is None:
            no_label.append(line)
        else:
            paths.append(p)
            labels.append(lab)
    if missing:
        raise DataError(f"{path} names {len(missing)} files that are not in {shown}: {_listing(missing)}; paths "
                        f"are relative to {shown} — fix the names or remove those rows")
    if not_image:
        raise DataError(f"{path} names files that are not images: {_listing(not_image)}; supported are "
                        f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))}")
    warnings = []
    if no_label:
        if strict:
            raise DataError(f"line {no_label[0]} of {path} has no label ('{label}'); fill it in or remove the row")
        warnings.append(f"dropped {len(no_label)} rows with no label ('{label}') in {path}: lines "
                        f"{_listing(no_label)}")
    paths, labels, _, skipped = _drop_unreadable(root, paths, labels, [""] * len(paths), warnings, strict=strict)
    return _Raw(modality="image", inputs=[os.path.abspath(p) for p in paths], labels=labels, splits={},
                where=f"in {path} (column '{label}')", describe=f"image folder {shown} with {LABELS_FILE}",
                unit="images", warnings=warnings, class_hint=f"add rows for it to {path} or remove its rows",
                details=f"file column '{file_col}', label column '{label}'", skipped=skipped, label_name=label)
