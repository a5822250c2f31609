"""What every source kind shares: the supported extensions and split names, the one-line wording helpers of
messages (`_listing`, `_display`, `_noting`), and how a file's kind is told from its name or first line."""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from ajuste.errors import DataError

BUILTIN_SOURCES = ("digits",)
IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"})
TEXT_EXTENSIONS = (".csv", ".tsv", ".jsonl")
SUPPORTED_FILES = (
    "an image folder (<root>/<class>/*.jpg), a folder with train.csv/test.csv, a .npz, .csv, .tsv or .jsonl file "
    "or a tab-separated file without extension"
)
SUPPORTED_DESCRIPTION = SUPPORTED_FILES + ", or the built-in 'digits'"

# Folder / file stems that name a predefined split, mapped to the canonical split key.
_SPLIT_NAMES = {"train": "train", "val": "val", "validation": "val", "dev": "val", "test": "test"}
_SPLIT_ORDER = ("train", "val", "test")

_MAX_LISTED = 5  # how many file names / line numbers a warning or error lists before "+N more"


def _listing(items, limit: int = _MAX_LISTED) -> str:
    items = [str(x) for x in items]
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _display(path: Path) -> str:
    """A short, recognisable name for messages: the path as given, with a trailing slash for folders."""
    s = str(path)
    return s + "/" if path.is_dir() and not s.endswith("/") else s


@contextmanager
def _noting(notes: list[str]):
    """A DataError raised after inputs were skipped also says what was skipped: the skip warnings are never
    shown then, and "only one class" with no word about the malformed half of the file would mislead.
    ``notes`` may grow inside the block (a folder of tables read one by one)."""
    try:
        yield
    except DataError as exc:
        if not notes:
            raise
        raise DataError(f"{exc} ({'; '.join(notes)})") from None


def _file_kind(path: Path) -> str:
    """'npz', 'csv', 'tsv' or 'jsonl' from the extension, sniffing extension-less (and .txt) files."""
    suffix = path.suffix.lower()
    if suffix == ".npz":
        return "npz"
    if suffix in (".csv", ".tsv", ".jsonl"):
        return suffix[1:]
    if suffix in (".ndjson",):
        return "jsonl"
    if suffix in ("", ".txt"):
        with open(path, "rb") as fh:
            first = fh.readline(1 << 20)
        if b"\t" in first:
            return "tsv"
        hint = "it has no tab in its first line, so it is not a TSV table"
    else:
        hint = f"'{suffix}' files are not supported"
    raise DataError(f"cannot read {path}: {hint}; supported sources are {SUPPORTED_DESCRIPTION}")
