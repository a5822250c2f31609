"""Which columns of a table hold the text and the label (given names, obvious names, then column statistics),
and the cell values read as a text or a label (missing values, JSON arrays, numbers spelled as floats)."""

from __future__ import annotations

import json
import math
from typing import Any

from ajuste.data.sources.common import _listing
from ajuste.data.sources.table_read import _json_type, _Table
from ajuste.errors import DataError

# Column names that obviously hold the text / the label (compared lower-cased).
_TEXT_NAMES = ("text", "sentence", "sms", "message", "review", "question", "content", "body")
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "y")
# Cell values that mean "missing" (what pandas and spreadsheets write for NaN/None).
_MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "null", "#n/a"})
_MISSING_TEXTS = frozenset({"", "nan"})


def _as_text(v: Any) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    s = v if isinstance(v, str) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)
    return None if s.strip().lower() in _MISSING_TEXTS else s


def _as_label(v: Any, where: str) -> str | None:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    if isinstance(v, (list, dict)):
        raise DataError(
            f"a label {where} is a JSON {_json_type(v)}; multi-label data is not supported (one label per row)"
        )
    if isinstance(v, bool):
        s = str(v).lower()
    elif isinstance(v, float) and v.is_integer():
        s = str(int(v))
    else:
        s = str(v).strip()
    return None if s.lower() in _MISSING_LABELS else s


def _resolve_column(table: _Table, name: str, flag: str) -> str:
    if name in table.columns:
        return name
    folded = [c for c in table.columns if c.lower() == name.lower()]
    if len(folded) == 1:
        return folded[0]
    raise DataError(
        f"column '{name}' not found in {table.path}; available columns: {', '.join(table.columns)}; "
        f"pass one of them with {flag}"
    )


def _detect_columns(table: _Table, text_col: str | None, label_col: str | None) -> tuple[str, str]:
    """Pick (text column, label column): given names first, then obvious names, then column statistics."""
    cols = table.columns
    available = f"available columns: {', '.join(cols)}"
    if len(cols) < 2:
        raise DataError(
            f"{table.path} has a single column ({cols[0]!r}); it needs a text column and a label column "
            "(is the delimiter right? .csv uses commas, .tsv tabs)"
        )
    text = _resolve_column(table, text_col, "--text-col") if text_col else None
    label = _resolve_column(table, label_col, "--label-col") if label_col else None
    if text is not None and text == label:
        raise DataError(
            f"--text-col and --label-col both name column '{text}' of {table.path}; pick two different columns"
        )

    def named(candidates: tuple[str, ...], exclude: str | None, flag: str) -> str | None:
        hits = [c for c in cols if c.lower() in candidates and c != exclude]
        if len(hits) > 1:
            raise DataError(
                f"several columns of {table.path} could be the {flag[2:-4]} column ({', '.join(hits)}); "
                f"{available}; choose with {flag}"
            )
        return hits[0] if hits else None

    values = {c: [r[i] for r in table.rows] for i, c in enumerate(cols)}
    auto = text is None and label is None
    if label is None:
        label = named(_LABEL_NAMES, text, "--label-col")
    if text is None:
        text = named(_TEXT_NAMES, label, "--text-col")
    if text is None:
        lengths = {}
        for c in cols:
            if c == label:
                continue
            strs = [_as_text(v) or "" for v in values[c]]
            lengths[c] = sum(map(len, strs)) / max(1, len(strs))
        ranked = sorted(lengths, key=lengths.get, reverse=True)
        if not ranked or lengths[ranked[0]] == 0:
            raise DataError(
                f"cannot tell which column of {table.path} holds the text; {available}; choose with --text-col"
            )
        # two similarly long columns (title and body?) are a genuine ambiguity: ask rather than guess
        if len(ranked) > 1 and lengths[ranked[1]] >= 20 and lengths[ranked[1]] >= 0.5 * lengths[ranked[0]]:
            raise DataError(
                f"cannot tell which column of {table.path} holds the text ({ranked[0]} or {ranked[1]}); "
                f"{available}; choose with --text-col"
            )
        text = ranked[0]
    if label is None:
        n = len(table.rows)
        rest = [c for c in cols if c != text]
        few = []
        for c in rest:
            if any(isinstance(v, (list, dict)) for v in values[c]):
                continue  # JSON arrays/objects: not a label column
            uniq = {_as_label(v, "") for v in values[c]} - {None}
            if 2 <= len(uniq) <= max(2, min(1000, n // 2)):
                few.append(c)
        if len(few) != 1:
            reason = "several candidates: " + ", ".join(few) if few else "no column has few distinct values"
            raise DataError(
                f"cannot tell which column of {table.path} holds the label ({reason}); {available}; "
                "choose with --label-col"
            )
        label = few[0]
    if auto:
        _check_header_is_not_data(table, text, label, values)
    return text, label


def _check_header_is_not_data(table: _Table, text: str, label: str, values: dict[str, list]) -> None:
    """A header-less file silently loses its first row and gets nonsense column names: catch the obvious case."""
    # arrays/objects are skipped here; reading the rows then names the line that holds one
    label_values = {_as_label(v, "") for v in values[label][:1000] if not isinstance(v, (list, dict))}
    if label in label_values or len(text.split()) >= 6:
        first = table.path.read_text(encoding="utf-8-sig", errors="replace").split("\n", 1)[0][:60]
        sep = "<TAB>" if table.fmt == "tsv" else ","
        raise DataError(
            f"{table.path} seems to have no header line (its first line {first!r} looks like data); "
            f"add one, e.g. 'label{sep}text' (or, if that line is the header, name the columns with "
            "--text-col and --label-col)"
        )


def _table_rows(table: _Table, text: str, label: str, warnings: list[str], *,
                strict: bool = False) -> tuple[list[str], list[str]]:
    """The (text, label) rows; rows missing either are dropped with a warning (``strict``: an error)."""
    if table.warning:
        warnings.append(table.warning)
    ti, li = table.columns.index(text), table.columns.index(label)
    texts: list[str] = []
    labels: list[str] = []
    no_text: list[int] = []
    no_label: list[int] = []
    for row, line in zip(table.rows, table.lines):
        t = _as_text(row[ti])
        lab = _as_label(row[li], f"on line {line} of {table.path}")
        if strict and (t is None or lab is None):
            what = f"an empty text ('{text}')" if t is None else f"no label ('{label}')"
            raise DataError(f"line {line} of {table.path} has {what}; fill it in or remove the row")
        if t is None:
            no_text.append(line)
        elif lab is None:
            no_label.append(line)
        else:
            texts.append(t)
            labels.append(lab)
    if no_text:
        warnings.append(
            f"dropped {len(no_text)} rows with empty text ('{text}') in {table.path}: lines {_listing(no_text)}"
        )
    if no_label:
        warnings.append(
            f"dropped {len(no_label)} rows with no label ('{label}') in {table.path}: lines {_listing(no_label)}"
        )
    return texts, labels
