"""The table sources: one ``.csv`` / ``.tsv`` / ``.jsonl`` file (or an extension-less tab-separated one), or a
folder holding ``train.csv`` + ``test.csv`` (+ ``val|validation|dev.csv``), also in ``.tsv`` / ``.jsonl``; and
`load_texts`, the unlabelled texts to predict on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from ajuste.data.sources.common import (
    _SPLIT_NAMES,
    _SPLIT_ORDER,
    TEXT_EXTENSIONS,
    _display,
    _file_kind,
    _listing,
    _noting,
)
from ajuste.data.sources.images import _image_files
from ajuste.data.sources.labels import _normalise_numeric_labels
from ajuste.data.sources.records import _Raw
from ajuste.data.sources.table_columns import (
    _TEXT_NAMES,
    _as_text,
    _detect_columns,
    _resolve_column,
    _resolve_text,
    _table_rows,
    combine_label_columns,
    pair_columns,
    text_columns_in_words,
)
from ajuste.data.sources.table_read import _read_table
from ajuste.data.sources.targets import detect_task, label_sets
from ajuste.errors import DataError


def _load_text_file(path: Path, fmt: str, *, text_col: str | None, label_col: str | None,
                    strict: bool = False) -> _Raw:
    table, label_col = combine_label_columns(_read_table(path, fmt, strict=strict), label_col)
    if not table.rows:
        raise DataError(f"{path} has a header but no rows; add one row per example")
    skipped = [table.skipped] if table.skipped else []
    warnings: list[str] = []
    with _noting(skipped):
        text, label = _detect_columns(table, text_col, label_col)
        texts, labels = _table_rows(table, text, label, warnings, strict=strict)
        if not texts:
            raise DataError(f"every row of {path} lacks a text or a label; check --text-col/--label-col")
    return _Raw(
        modality="text",
        inputs=texts,
        labels=labels,
        splits={},
        where=f"in {path} (column '{label}')",
        describe=f"{fmt.upper()} table {path}",
        details=f"{text_columns_in_words(text)}, label column '{label}'",
        unit="rows",
        warnings=warnings,
        class_hint="add rows for it or remove its rows",
        skipped=skipped,
        label_name=label,
    )


def _find_split_tables(folder: Path) -> dict[str, tuple[Path, str]]:
    """{split: (file, fmt)} for files named train/val/validation/dev/test with a table extension; {} if no train."""
    found: dict[str, tuple[Path, str]] = {}
    for p in sorted(folder.iterdir()):
        if not p.is_file() or p.name.startswith("."):
            continue
        stem, suffix = p.stem.lower(), p.suffix.lower()
        split = _SPLIT_NAMES.get(stem)
        if split is None or suffix not in TEXT_EXTENSIONS:
            continue
        if split in found:
            raise DataError(
                f"{_display(folder)} has two files for the {split} split ({found[split][0].name}, {p.name}); keep one"
            )
        found[split] = (p, suffix[1:])
    if found and "train" not in found:
        names = ", ".join(p.name for p, _ in found.values())
        if not _image_files(folder):
            raise DataError(f"{_display(folder)} has {names} but no train file; add train.csv (train is required)")
        return {}
    return found


def _load_text_dir(folder: Path, *, text_col: str | None, label_col: str | None, strict: bool = False,
                   task: str = "auto") -> _Raw:
    files = _find_split_tables(folder)
    shown = _display(folder)
    warnings: list[str] = []
    train_table, combined = combine_label_columns(_read_table(*files["train"], strict=strict), label_col)
    if not train_table.rows:
        raise DataError(f"{files['train'][0]} has a header but no rows; add one row per example")
    skipped = [train_table.skipped] if train_table.skipped else []
    texts: list[Any] = []
    labels: list[str] = []
    splits: dict[str, np.ndarray] = {}
    with _noting(skipped):
        text, label = _detect_columns(train_table, text_col, combined)
        for split in _SPLIT_ORDER:
            if split not in files:
                continue
            table = train_table if split == "train" else \
                combine_label_columns(_read_table(*files[split], strict=strict), label_col)[0]
            if table is not train_table and table.skipped:
                skipped.append(table.skipped)
            t_col = _resolve_text(table, text)
            l_col = _resolve_column(table, label, "--label-col")
            t, lab = _table_rows(table, t_col, l_col, warnings, strict=strict)
            if split == "train" and not t:
                raise DataError(
                    f"every row of {table.path} lacks a text or a label; check --text-col/--label-col"
                )
            seen = labels[: len(splits["train"])] if split != "train" else []
            kind = task if task != "auto" else detect_task(seen, "auto")[0]
            if split != "train" and lab and kind != "regression":  # a label name missing from train
                train_labels = set(_normalise_numeric_labels([n for s in label_sets(seen) for n in s]))
                unseen = sorted(set(_normalise_numeric_labels([n for s in label_sets(lab) for n in s]))
                                - train_labels)
                if unseen:
                    raise DataError(
                        f"labels in {table.path} not seen in train ({files['train'][0].name}): {_listing(unseen)}; "
                        "add them to train or remove those rows"
                    )
            if not t:
                warnings.append(f"{table.path} has no usable rows; the {split} split is ignored")
                continue
            splits[split] = np.arange(len(texts), len(texts) + len(t), dtype=np.int64)
            texts.extend(t)
            labels.extend(lab)
    fmts = sorted({fmt for _, fmt in files.values()})
    return _Raw(
        modality="text",
        inputs=texts,
        labels=labels,
        splits=splits,
        where=f"in {shown} (column '{label}')",
        describe=f"{'/'.join(f.upper() for f in fmts)} folder {shown}",
        details=(
            f"{', '.join(files[k][0].name for k in _SPLIT_ORDER if k in files)}; "
            f"{text_columns_in_words(text)}, label column '{label}'"
        ),
        unit="rows",
        warnings=warnings,
        class_hint=f"add rows for it to {files['train'][0].name} or remove its rows",
        skipped=skipped,
        label_name=label,
    )


# ------------------------------------------------------------------------------------- unlabelled texts


def load_texts(path: str | Path, *, text_col: str | None = None, strict: bool = False,
               warn: Any = None) -> tuple[list[Any], list[int]]:
    """Texts to predict on from a .csv / .tsv / .jsonl table: (texts, 1-based line of each in the file).

    No label column is needed (one is ignored if present). The text column is ``text_col``, else the only
    column, else an obviously named one (text, sentence...), else the longest one. Empty rows are skipped.
    ``text_col`` naming a pair (``first,second``) gives ``(first, second)`` tuples, rows missing either skipped.
    Malformed JSONL lines are skipped too, and ``warn`` (a callable) receives the one warning that counts
    them; ``strict=True`` raises `DataError` on the first instead.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    table = _read_table(path, _file_kind(path), strict=strict)
    if table.warning and warn is not None:
        warn(table.warning)
    if not table.rows:
        raise DataError(f"{path} has a header but no rows; add one row per text")
    cols = table.columns
    pair = pair_columns(text_col, cols)
    if pair is not None:
        return _pairs(table, _resolve_text(table, pair))
    if text_col:
        col = _resolve_column(table, text_col, "--text-col")
    elif len(cols) == 1:
        col = cols[0]
    else:
        named = [c for c in cols if c.lower() in _TEXT_NAMES]
        if len(named) > 1:
            raise DataError(
                f"several columns of {path} could be the text column ({', '.join(named)}); choose with --text-col"
            )
        if named:
            col = named[0]
        else:
            lengths = {c: sum(len(_as_text(r[i]) or "") for r in table.rows) for i, c in enumerate(cols)}
            col = max(cols, key=lengths.get)
    i = cols.index(col)
    texts: list[str] = []
    lines: list[int] = []
    for row, line in zip(table.rows, table.lines):
        t = _as_text(row[i])
        if t is not None:
            texts.append(t)
            lines.append(line)
    return texts, lines


def _pairs(table: Any, pair: tuple[str, str]) -> tuple[list[tuple[str, str]], list[int]]:
    """The (first, second) texts of a table's two pair columns, and the line of each row kept."""
    ia, ib = (table.columns.index(c) for c in pair)
    texts, lines = [], []
    for row, line in zip(table.rows, table.lines):
        a, b = _as_text(row[ia]), _as_text(row[ib])
        if a is not None and b is not None:
            texts.append((a, b))
            lines.append(line)
    return texts, lines
