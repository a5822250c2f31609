"""Which columns of a table hold the text and the label (given names, obvious names, then column statistics),
and the cell values read as a text or a label (missing values, JSON arrays, numbers spelled as floats).

A text pair (NLI, paraphrase, duplicate questions) is named, never guessed: ``--text-col premise,hypothesis``.
Its rows are ``(first, second)`` tuples of the two columns' texts."""

from __future__ import annotations

import json
import math
from dataclasses import replace
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
    if isinstance(v, list) and all(isinstance(x, (str, int)) and not isinstance(x, bool) for x in v):
        return "|".join(str(x).strip() for x in v) or "|"  # a set of labels (multi-label); [] is the empty set
    if isinstance(v, (list, dict)):
        raise DataError(
            f"a label {where} is a JSON {_json_type(v)}; a label is a name, a number, or a list of names "
            f"(multi-label)"
        )
    if isinstance(v, bool):
        s = str(v).lower()
    elif isinstance(v, float) and v.is_integer():
        s = str(int(v))
    else:
        s = str(v).strip()
    return None if s.lower() in _MISSING_LABELS else s


_ON, _OFF = frozenset({"1", "true", "yes"}), frozenset({"0", "false", "no"})


def combine_label_columns(table: _Table, label_col: str | None) -> tuple[_Table, str | None]:
    """``--label-col a,b,c``: the 0/1 columns of a multi-label table, read as one column of ``|``-joined names
    (named ``a+b+c``); a row with no 1 has the empty set. Any other ``label_col`` is returned as given."""
    if not label_col or "," not in label_col:
        return table, label_col
    names = [n.strip() for n in label_col.split(",") if n.strip()]
    cols = [_resolve_column(table, n, "--label-col") for n in names]
    idx = [table.columns.index(c) for c in cols]
    rows = []
    for row, line in zip(table.rows, table.lines):
        on = []
        for c, i in zip(cols, idx):
            v = _as_label(row[i], f"on line {line} of {table.path}")
            if v is not None and v.lower() in _ON:
                on.append(c)
            elif v is not None and v.lower() not in _OFF:
                raise DataError(f"column '{c}' on line {line} of {table.path} holds {v!r}, not 0 or 1; "
                                f"--label-col {label_col} names the 0/1 columns of a multi-label table")
        rows.append([*row, "|".join(on) or "|"])
    combined = "+".join(cols)
    return replace(table, columns=[*table.columns, combined], rows=rows), combined


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


def pair_columns(text_col: str | None, columns: list[str] = ()) -> tuple[str, str] | None:
    """The two column names of ``--text-col first,second``; None for one column (a name holding a comma that is
    a column of the table is that one column). More than two, or an empty name, is one `DataError` line."""
    if not text_col or "," not in text_col or text_col in columns:
        return None
    parts = [p.strip() for p in text_col.split(",")]
    if len(parts) != 2 or not all(parts):
        raise DataError(f"--text-col {text_col!r} names {len(parts)} columns; a text is one column or a pair of "
                        f"two, 'first,second' (e.g. premise,hypothesis)")
    return parts[0], parts[1]


def text_columns_in_words(text: str | tuple[str, str]) -> str:
    """How a source's description names its text column(s)."""
    if isinstance(text, tuple):
        return f"text pair columns '{text[0]}' and '{text[1]}'"
    return f"text column '{text}'"


def _resolve_text(table: _Table, text: str | tuple[str, str]) -> str | tuple[str, str]:
    """``text`` (one column or a pair) resolved in ``table`` (another split's file of the same source)."""
    if isinstance(text, tuple):
        return tuple(_resolve_column(table, c, "--text-col FIRST,SECOND") for c in text)  # type: ignore[return-value]
    return _resolve_column(table, text, "--text-col")


def _detect_pair(table: _Table, pair: tuple[str, str], label_col: str | None) -> tuple[tuple[str, str], str]:
    """(the pair's two columns, the label column) of a table whose text is a named pair."""
    a, b = _resolve_text(table, pair)
    if a == b:
        raise DataError(f"--text-col names column '{a}' of {table.path} twice; a text pair is two different columns")
    label = _resolve_column(table, label_col, "--label-col") if label_col else None
    if label in (a, b):
        raise DataError(f"--label-col names column '{label}' of {table.path}, which is also one side of the text "
                        f"pair; pick a label column outside the pair")
    if label is None:
        hits = [c for c in table.columns if c.lower() in _LABEL_NAMES and c not in (a, b)]
        if len(hits) > 1:
            raise DataError(f"several columns of {table.path} could be the label column ({', '.join(hits)}); "
                            f"available columns: {', '.join(table.columns)}; choose with --label-col")
        label = hits[0] if hits else _label_by_statistics(table, (a, b))
    return (a, b), label


def _is_numeric(v: Any) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return math.isfinite(v)
    try:
        return isinstance(v, str) and math.isfinite(float(v))
    except ValueError:
        return False


def _label_by_statistics(table: _Table, texts: tuple[str, ...]) -> str:
    """The one column outside ``texts`` with few distinct values (2 to half the rows, at most 1000)."""
    n = len(table.rows)
    few = []
    for i, c in enumerate(table.columns):
        if c in texts:
            continue
        values = [r[i] for r in table.rows]
        if any(isinstance(v, (list, dict)) for v in values):
            continue  # JSON arrays/objects: not a label column
        uniq = {_as_label(v, "") for v in values} - {None}
        if 2 <= len(uniq) <= max(2, min(1000, n // 2)):
            few.append(c)
    rest = [c for c in table.columns if c not in texts]
    if not few and len(rest) == 1 and all(_is_numeric(v) for v in (r[table.columns.index(rest[0])]
                                                                    for r in table.rows[:1000])):
        few = rest  # the one other column, all numbers: a regression target (data.task auto tells)
    if len(few) != 1:
        reason = "several candidates: " + ", ".join(few) if few else "no column has few distinct values"
        raise DataError(
            f"cannot tell which column of {table.path} holds the label ({reason}); available columns: "
            f"{', '.join(table.columns)}; choose with --label-col"
        )
    return few[0]


def _detect_columns(table: _Table, text_col: str | None,
                    label_col: str | None) -> tuple[str | tuple[str, str], str]:
    """Pick (text column, label column): given names first, then obvious names, then column statistics. A
    named pair (``first,second``) gives the text as a tuple of its two columns."""
    cols = table.columns
    pair = pair_columns(text_col, cols)
    if pair is not None:
        return _detect_pair(table, pair, label_col)
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
        label = _label_by_statistics(table, (text,))
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


def _table_rows(table: _Table, text: str | tuple[str, str], label: str, warnings: list[str], *,
                strict: bool = False) -> tuple[list[Any], list[str]]:
    """The (text, label) rows; rows missing either are dropped with a warning (``strict``: an error). A pair's
    text is the tuple of its two cells, missing when either is."""
    if table.warning:
        warnings.append(table.warning)
    tis = [table.columns.index(c) for c in (text if isinstance(text, tuple) else (text,))]
    li = table.columns.index(label)
    text = "' or '".join(text) if isinstance(text, tuple) else text
    texts: list[Any] = []
    labels: list[str] = []
    no_text: list[int] = []
    no_label: list[int] = []
    for row, line in zip(table.rows, table.lines):
        parts = [_as_text(row[i]) for i in tis]
        t = None if None in parts else parts[0] if len(parts) == 1 else tuple(parts)
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
