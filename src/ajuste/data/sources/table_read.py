"""Reading a text table into rows: the bytes decoded (BOMs, UTF-16, binary files saved under a table's name
refused), CSV/TSV delimiters and quoting told apart, JSONL one object per line with malformed lines counted.
Which columns mean what is `table_columns`' business."""

from __future__ import annotations

import csv
import io
import json
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ajuste.data.sources.common import _listing
from ajuste.errors import DataError


@dataclass
class _Table:
    path: Path
    fmt: str  # "csv" | "tsv" | "jsonl"
    columns: list[str]
    rows: list[list[Any]]  # one value per column; None = missing
    lines: list[int]  # 1-based line in the file where each row starts
    warning: str | None = None  # the malformed lines skipped (JSONL), as the user sees it
    skipped: str | None = None  # the same, worded to follow an error (see _noting)


# Binary formats people save under a table's name, by their first bytes: (magic, what it is, how to fix).
_BINARY_MAGIC = (
    (b"PK\x03\x04", "a zip archive (an Excel .xlsx?)", "export it as CSV (e.g. Save As > CSV UTF-8)"),
    (b"\xd0\xcf\x11\xe0", "an old Excel .xls/OLE file", "export it as CSV (e.g. Save As > CSV UTF-8)"),
    (b"\x1f\x8b", "gzip-compressed", "decompress it first (gunzip)"),
)


def _decode(path: Path) -> str:
    raw = path.read_bytes()
    for magic, what, fix in _BINARY_MAGIC:
        if raw.startswith(magic):
            raise DataError(f"{path} is {what}, not a text table; {fix}")
    if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # UTF-16 with BOM: Excel's "Unicode text" export
        try:
            return raw.decode("utf-16")
        except UnicodeDecodeError:
            pass
    try:
        return raw.decode("utf-8-sig")  # strips a UTF-8 BOM (Excel writes one)
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise DataError(
            f"{path} is not valid UTF-8 (byte 0x{raw[exc.start]:02x} on line {line}); re-save it as UTF-8 "
            f"(e.g. iconv -f cp1252 -t utf-8 {path.name} > fixed{path.suffix})"
        ) from None


def _read_table(path: Path, fmt: str, *, strict: bool = False) -> _Table:
    text = _decode(path)
    if fmt == "jsonl":
        return _read_jsonl(path, text, strict=strict)
    first_line = text.split("\n", 1)[0]
    if fmt == "tsv":
        delimiter = "\t"
    elif "," not in first_line and ";" in first_line:
        delimiter = ";"  # European spreadsheet CSV
    elif "," not in first_line and "\t" in first_line:
        delimiter = "\t"
    else:
        delimiter = ","
    if delimiter == "\t":
        # TSV has no quoting convention and raw text often starts with a quote ('"Pete can you...'); the csv
        # module would then swallow tabs and newlines up to the next quote. Read quotes literally unless that
        # gives ragged rows (a TSV written with csv-style quoting of embedded tabs/newlines).
        table = _read_delimited(path, text, fmt, delimiter, csv.QUOTE_NONE, strict=False)
        if table is not None:
            return table
    return _read_delimited(path, text, fmt, delimiter, csv.QUOTE_MINIMAL, strict=True)


def _read_delimited(path: Path, text: str, fmt: str, delimiter: str, quoting: int, *, strict: bool) -> _Table | None:
    # the csv module refuses fields over 128 KiB by default; a whole document in one cell is legitimate text
    # (the limit is process-wide: restored on the way out)
    old_limit = csv.field_size_limit(max(csv.field_size_limit(), len(text) + 1))
    try:
        return _read_records(path, text, fmt, delimiter, quoting, strict=strict)
    finally:
        csv.field_size_limit(old_limit)


def _read_records(path: Path, text: str, fmt: str, delimiter: str, quoting: int, *, strict: bool) -> _Table | None:
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delimiter, quoting=quoting)
    rows: list[list[Any]] = []
    lines: list[int] = []
    header: list[str] | None = None
    start = 1
    try:
        for record in reader:
            if record and header is None:
                header = [h.strip() for h in record]
                while len(header) > 1 and header[-1] == "":
                    header.pop()  # trailing delimiter on the header line
                _check_header(path, header)
            elif record and any(cell.strip() for cell in record):
                if len(record) > len(header) and not any(c.strip() for c in record[len(header):]):
                    record = record[: len(header)]  # trailing empty fields
                if len(record) != len(header):
                    if not strict:
                        return None
                    if reader.line_num > start and any("\n" in c for c in record):
                        raise DataError(
                            f"a quote opened on line {start} of {path} runs on to line {reader.line_num}, "
                            "swallowing the lines between; close the quote (write a literal quote as \"\")"
                        )
                    raise DataError(
                        f"line {start} of {path} has {len(record)} fields but the header has {len(header)}; "
                        + ("quote fields that contain commas" if delimiter == "," else "fix that line")
                    )
                rows.append(record)
                lines.append(start)
            start = reader.line_num + 1
    except csv.Error as exc:
        if not strict:
            return None
        raise DataError(f"cannot parse {path} near line {start}: {exc}; check for an unclosed quote") from None
    if header is None:
        raise DataError(f"{path} is empty; it needs a header line and one row per example")
    return _Table(path, fmt, header, rows, lines)


def _check_header(path: Path, header: list[str]) -> None:
    # pandas' to_csv writes its index as a first column with an empty name: give such columns a name, not an error
    header[:] = [h or f"column{i + 1}" for i, h in enumerate(header)]
    dup = [h for h, k in Counter(header).items() if k > 1]
    if dup:
        raise DataError(f"the header line of {path} repeats the column name '{dup[0]}'; give each column a unique name")


def _read_jsonl(path: Path, text: str, *, strict: bool = False) -> _Table:
    """One record per JSON-object line. A malformed line (not JSON, not an object, nested too deeply) is skipped
    and counted in ``warning``; ``strict`` raises on the first; a file with no good line is an error either way."""
    columns: dict[str, None] = {}
    records: list[dict] = []
    lines: list[int] = []
    bad: list[tuple[int, str, str]] = []  # (line, what is wrong with it, how to fix it)
    # split on "\n" only: str.splitlines() would also split inside strings holding U+2028 or \x1c..\x1e
    for no, line in enumerate(text.split("\n"), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            bad.append((no, f"is not valid JSON ({exc.msg})", "write one JSON object per line"))
        except RecursionError:
            bad.append((no, "nests JSON arrays/objects too deeply to read", "write one flat object per line"))
        else:
            if not isinstance(obj, dict):
                bad.append((no, f"is a JSON {_json_type(obj)}, not an object", "write one {...} per line"))
            else:
                for k in obj:
                    columns.setdefault(str(k), None)
                records.append({str(k): v for k, v in obj.items()})
                lines.append(no)
        if bad and strict:
            no_, what, fix = bad[0]
            raise DataError(f"line {no_} of {path} {what}; {fix}")
    if bad and not records:
        no_, what, fix = bad[0]
        if len(bad) == 1:
            raise DataError(f"line {no_} of {path} {what}; {fix}")
        raise DataError(f"none of the {len(bad)} lines of {path} holds a JSON object (line {no_} {what}); {fix}")
    if not records:
        raise DataError(f"{path} has no JSON lines; write one object per line, e.g. {{\"text\": ..., \"label\": ...}}")
    if not columns:
        raise DataError(f"every line of {path} is an empty JSON object {{}}; write one object per line with a text "
                        "and a label, e.g. {\"text\": ..., \"label\": ...}")
    cols = list(columns)
    table = _Table(path, "jsonl", cols, [[r.get(c) for c in cols] for r in records], lines)
    if len(bad) == 1:
        no_, what, fix = bad[0]
        table.warning = f"skipped 1 malformed line in {path}: line {no_} {what}; {fix}"
        table.skipped = f"skipped 1 malformed line: line {no_} of {path.name} {what}"
    elif bad:
        nos = [b[0] for b in bad]
        no_, what, fix = bad[0]
        table.warning = (f"skipped {len(bad)} malformed lines in {path}: lines {_listing(nos)} "
                         f"(line {no_} {what}); {fix}")
        also = f"line{'s' if len(bad) > 2 else ''} {_listing(nos[1:])}"
        table.skipped = f"skipped {len(bad)} malformed lines: line {no_} of {path.name} {what}, also {also}"
    return table


def _json_type(v: Any) -> str:
    """JSON's name for the type of a parsed value ("array", not Python's "list")."""
    names = {dict: "object", list: "array", str: "string", bool: "boolean", type(None): "null"}
    return names.get(type(v), "number")
