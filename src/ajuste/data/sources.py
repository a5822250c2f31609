"""Load a labelled data set from wherever it lives into one uniform `LabelledData`.

Supported sources (see `load_data`):

- ``"digits"``: scikit-learn's bundled 8x8 digits, the built-in default that needs no files;
- an image folder ``root/<class>/*.jpg`` or ``root/{train,val|validation,test}/<class>/*.jpg``;
- a ``.npz`` file (``x``/``y``, ``images``/``labels``, ``x_train``/``y_train``... or MedMNIST-style
  ``{train,val,test}_images`` + ``{train,val,test}_labels``);
- a text table ``.csv`` / ``.tsv`` / ``.jsonl`` (or an extension-less tab-separated file), or a folder holding
  ``train.csv`` + ``test.csv`` (+ ``val|validation|dev.csv``), also in ``.tsv`` / ``.jsonl``.

Every user-facing failure is a `DataError` whose message is one line: what is wrong, where, how to fix it.
"""

from __future__ import annotations

import csv
import errno
import io
import json
import math
import os
import re
import warnings as pywarnings
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ajuste.errors import DataError
from ajuste.io import ajuste_dir_kind

__all__ = ["LabelledData", "load_data", "load_texts", "check_images", "BUILTIN_SOURCES", "IMAGE_EXTENSIONS",
           "TEXT_EXTENSIONS"]

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

# Column names that obviously hold the text / the label (compared lower-cased).
_TEXT_NAMES = ("text", "sentence", "sms", "message", "review", "question", "content", "body")
_LABEL_NAMES = ("label", "labels", "class", "category", "target", "y")
# Cell values that mean "missing" (what pandas and spreadsheets write for NaN/None).
_MISSING_LABELS = frozenset({"", "nan", "na", "n/a", "null", "#n/a"})
_MISSING_TEXTS = frozenset({"", "nan"})

_IMAGE_CHECK_WORKERS = 2  # this machine has 2 cores; decoding is PIL C code that releases the GIL
_MAX_LISTED = 5  # how many file names / line numbers a warning or error lists before "+N more"


@dataclass(eq=False, repr=False)
class LabelledData:
    """A labelled data set, whatever its source.

    ``inputs`` holds image file paths (str), or a uint8 image array (N,H,W,3) / (N,H,W), or texts (list[str]).
    ``labels`` are int64 indices into ``classes``. ``splits`` maps "train"/"val"/"test" to int64 index arrays
    when the source defines them ({} otherwise).
    """

    modality: str
    inputs: list[str] | np.ndarray
    labels: np.ndarray
    classes: list[str]
    splits: dict[str, np.ndarray] = field(default_factory=dict)
    source: str = ""
    warnings: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.modality not in ("image", "text"):
            raise ValueError(f"modality must be 'image' or 'text', got {self.modality!r}")
        self.labels = np.asarray(self.labels, dtype=np.int64).reshape(-1)
        if len(self.inputs) != len(self.labels):
            raise ValueError(f"inputs has {len(self.inputs)} items but labels has {len(self.labels)}")
        self.splits = {k: np.asarray(v, dtype=np.int64).reshape(-1) for k, v in self.splits.items()}

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def __repr__(self) -> str:
        splits = ", ".join(f"{k}={len(v)}" for k, v in self.splits.items()) or "none"
        return (
            f"LabelledData(modality={self.modality!r}, n={len(self)}, classes={len(self.classes)}, "
            f"splits: {splits}, source={self.source!r}, warnings={len(self.warnings)})"
        )

    def class_counts(self) -> dict[str, int]:
        """Number of examples per class name, in class-index order."""
        counts = np.bincount(self.labels, minlength=len(self.classes))
        return {name: int(c) for name, c in zip(self.classes, counts)}

    def subset(self, indices) -> LabelledData:
        """The examples at ``indices`` (in that order); predefined splits are dropped."""
        idx = np.asarray(indices, dtype=np.int64).reshape(-1)
        if isinstance(self.inputs, np.ndarray):
            inputs: list[str] | np.ndarray = self.inputs[idx]
        else:
            inputs = [self.inputs[i] for i in idx]
        return LabelledData(
            modality=self.modality,
            inputs=inputs,
            labels=self.labels[idx],
            classes=list(self.classes),
            splits={},
            source=self.source,
            warnings=list(self.warnings),
        )


# ---------------------------------------------------------------------------------------------- entry point


def load_data(
    source: str | Path,
    *,
    text_col: str | None = None,
    label_col: str | None = None,
    classes: list[str] | None = None,
    modality: str | None = None,
    strict: bool = False,
) -> LabelledData:
    """Load a labelled data set from ``source`` (a path or the built-in name ``"digits"``).

    ``text_col`` / ``label_col`` pick the columns of a text table (auto-detected when obvious).
    ``classes`` (the class list of a trained run) maps labels onto that fixed order; a label outside it is an error.
    ``modality`` (that of a trained run's model): other data is refused before its labels are compared.
    A plain string equal to a built-in name always means the built-in; write ``./digits`` for a folder of that name.
    Unreadable images, malformed JSONL lines and rows without a text or a label are skipped, each kind counted in
    one of ``.warnings``; ``strict=True`` raises `DataError` on the first of them instead (naming file and line).
    A source where nothing is usable is an error either way.
    """
    if isinstance(source, str) and source.strip().lower() in BUILTIN_SOURCES:
        raw = _load_digits()
    else:
        path = Path(source).expanduser()
        if not path.exists():
            raise DataError(_missing_path_message(str(source)))
        if path.is_dir():
            made = _MADE_BY.get(ajuste_dir_kind(path))
            if made:
                raise DataError(f"{source} is {made} made by ajuste, not a data set; give a folder of images "
                                f"(<class>/*.jpg), a .npz or a table of texts")
            if _find_split_tables(path):
                raw = _load_text_dir(path, text_col=text_col, label_col=label_col, strict=strict)
            else:
                raw = _load_image_folder(path, strict=strict)
        else:
            kind = _file_kind(path)
            if kind == "npz":
                raw = _load_npz(path)
            else:
                raw = _load_text_file(path, kind, text_col=text_col, label_col=label_col, strict=strict)
    if modality is not None and raw.modality != modality:
        article = "an" if modality[0] in "aeiou" else "a"
        raise DataError(f"{source} holds {raw.modality} data but the model is {article} {modality} model; "
                        f"give {modality} data")
    with _noting(raw.skipped):
        return _finish(raw, classes=classes)


_MADE_BY = {"run": "a training run", "study": "a study (`ajuste compare`)", "search": "a search (`ajuste tune`)"}


def _missing_path_message(source: str) -> str:
    looks_like_name = not any(sep in source for sep in "/\\") and "." not in source
    if looks_like_name:
        return (
            f"data source '{source}' is neither an existing path nor a built-in data set; "
            f"use the built-in 'digits' or give the path of {SUPPORTED_FILES}"
        )
    hint = "" if Path(source).expanduser().is_absolute() else f" (relative paths start from {os.getcwd()})"
    return f"data source '{source}' does not exist; check the path{hint}"


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


# ------------------------------------------------------------------------------------- common post-processing


@dataclass
class _Raw:
    """What a loader found, before labels become indices. ``labels`` are class names (str)."""

    modality: str
    inputs: list[str] | np.ndarray
    labels: list[str]
    splits: dict[str, np.ndarray]
    where: str  # "in hymenoptera/" / "in data.csv (column 'label')": used in error messages
    describe: str  # "image folder hymenoptera/": the start of LabelledData.source
    unit: str  # "images" / "rows"
    warnings: list[str] = field(default_factory=list)
    declared_classes: list[str] | None = None  # image class folders, including empty ones
    class_hint: str = "add examples or remove the class"  # how to fix a class with too few; may use {cls}
    details: str = ""  # extra facts for LabelledData.source ("text column 'x', label column 'y'")
    skipped: list[str] = field(default_factory=list)  # what was skipped, for an error that follows (see _noting)


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


def _finish(raw: _Raw, *, classes: list[str] | None) -> LabelledData:
    labels = _normalise_numeric_labels(raw.labels)
    n = len(labels)
    if n == 0:
        raise DataError(f"no examples found {raw.where}")
    if classes is not None:
        class_list = [str(c) for c in classes]
        if len(set(class_list)) != len(class_list):
            raise ValueError(f"classes contains duplicates: {class_list}")
        known = set(_normalise_numeric_labels(class_list))
        unseen = sorted(set(labels) - known, key=_class_sort_key(labels))
        if unseen:
            raise DataError(
                f"labels {raw.where} not seen in train: {_listing(unseen)}; the model knows "
                f"{_listing(class_list, limit=20)}; remove those examples or retrain with them"
            )
        # numeric normalisation ("1.0" -> "1") applied to both sides so train/eval files agree
        index = {c: i for i, c in enumerate(_normalise_numeric_labels(class_list))}
    else:
        found = set(labels)
        class_list = sorted(found | set(raw.declared_classes or ()), key=_class_sort_key(list(found)))
        index = {c: i for i, c in enumerate(class_list)}
        _check_class_counts(labels, class_list, raw)
    y = np.fromiter((index[c] for c in labels), dtype=np.int64, count=n)

    summary = (raw.details + "; " if raw.details else "") + f"{len(class_list)} classes, {n} {raw.unit}"
    if raw.splits:
        summary += "; splits " + " / ".join(f"{k} {len(v)}" for k, v in raw.splits.items())
    return LabelledData(
        modality=raw.modality,
        inputs=raw.inputs,
        labels=y,
        classes=class_list,
        splits=raw.splits,
        source=f"{raw.describe} ({summary})",
        warnings=raw.warnings,
    )


def _check_class_counts(labels: list[str], class_list: list[str], raw: _Raw) -> None:
    if len(class_list) < 2:
        only = f"'{class_list[0]}'" if class_list else "none"
        raise DataError(
            f"only one class ({only}) {raw.where}; a classifier needs at least 2 classes — "
            + (
                "put each class in its own subfolder <root>/<class>/"
                if raw.modality == "image" and raw.declared_classes is not None
                else "check that the label column is the right one (--label-col)"
                if raw.unit == "rows"
                else "check the labels"
            )
        )
    counts = Counter(labels)
    small = [(c, counts.get(c, 0)) for c in class_list if counts.get(c, 0) < 2]
    if small:
        name, k = small[0]
        what = f"class '{name}' has {'only 1 example' if k == 1 else 'no examples'}"
        more = f" (also {_listing([f'{c}: {k}' for c, k in small[1:]])})" if len(small) > 1 else ""
        fix = raw.class_hint.replace("{cls}", name)
        raise DataError(f"{what} {raw.where}{more}; every class needs at least 2 — {fix}")


def _is_number(s: str) -> bool:
    try:
        return math.isfinite(float(s))
    except ValueError:
        return False


def _normalise_numeric_labels(labels: list[str]) -> list[str]:
    """All-integral numeric labels get one canonical spelling ("1.0", " 1" -> "1"); others are kept as they are."""
    uniq = set(labels)
    if uniq and all(_is_number(u) for u in uniq) and all(float(u).is_integer() for u in uniq):
        canon = {u: str(int(float(u))) for u in uniq}
        return [canon[x] for x in labels]
    return list(labels)


def _class_sort_key(labels: list[str]):
    """Numeric order when every label is a number ("2" < "10"), else plain string order."""
    if labels and all(_is_number(x) for x in set(labels)):
        return lambda c: (0, float(c), c) if _is_number(c) else (1, 0.0, c)
    return lambda c: (0, 0.0, c)


def _listing(items, limit: int = _MAX_LISTED) -> str:
    items = [str(x) for x in items]
    shown = ", ".join(items[:limit])
    return shown + (f" (+{len(items) - limit} more)" if len(items) > limit else "")


def _display(path: Path) -> str:
    """A short, recognisable name for messages: the path as given, with a trailing slash for folders."""
    s = str(path)
    return s + "/" if path.is_dir() and not s.endswith("/") else s


# --------------------------------------------------------------------------------------------------- digits


def _digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's 8x8 digits, (N, 8, 8) values 0..16 and (N,) targets: read from the CSV that ships
    inside scikit-learn without importing it (3.3 s here, paid again by every study worker process);
    through ``load_digits`` if the file is not where scikit-learn keeps it."""
    import gzip
    import importlib.util

    spec = importlib.util.find_spec("sklearn")
    for root in (spec.submodule_search_locations or []) if spec else []:
        path = Path(root) / "datasets" / "data" / "digits.csv.gz"
        if path.is_file():
            with gzip.open(path, "rt") as fh:
                table = np.loadtxt(fh, delimiter=",")
            return table[:, :-1].reshape(-1, 8, 8), table[:, -1].astype(int)
    from sklearn.datasets import load_digits

    d = load_digits()
    return d.images, d.target


def _load_digits() -> _Raw:
    images, target = _digits_arrays()
    # images are float 0..16 (N, 8, 8); stretch to the uint8 0..255 range every image pipeline expects
    x = np.rint(images * (255.0 / 16.0)).clip(0, 255).astype(np.uint8)
    return _Raw(
        modality="image",
        inputs=x,
        labels=[str(int(t)) for t in target],
        splits={},
        where="in the built-in digits",
        describe="built-in digits",
        details="scikit-learn load_digits, 8x8 greyscale",
        unit="images",
    )


# --------------------------------------------------------------------------------------------- image folder


def _visible_dirs(path: Path, loops: set[str] | None = None) -> list[Path]:
    """Sub-folders that can be classes or splits; symbolic links back to ``path`` or above are left out (their
    names go to ``loops``): such a "class" would hold every image again."""
    # __MACOSX/ is the resource-fork folder macOS zips carry along: never a class
    found = []
    for p in path.iterdir():
        if not p.is_dir() or p.name.startswith(".") or p.name == "__MACOSX":
            continue
        if p.is_symlink():
            target, here = os.path.realpath(p), os.path.realpath(path)
            if here == target or here.startswith(target.rstrip(os.sep) + os.sep):
                if loops is not None:
                    loops.add(f"{p.name} -> {os.readlink(p)}")
                continue
        found.append(p)
    return sorted(found)


def _image_files(folder: Path) -> list[Path]:
    """Image files under ``folder`` (recursively), hidden files and folders skipped, in a stable order."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d != "__MACOSX")
        for name in sorted(filenames):
            if not name.startswith(".") and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return found


def _check_image(path: Path) -> str | None:
    """None if PIL can fully decode the file, else a short reason it cannot (shown in the 'skipped' warning).

    Call it with PIL's DecompressionBombWarning turned into an error (see `_load_image_folder`): PIL only warns
    between MAX_IMAGE_PIXELS and twice that, and then decodes hundreds of megabytes.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        if os.path.getsize(path) == 0:  # follows symlinks: a loop or a dangling link raises OSError here
            return "empty file"
        with Image.open(path) as im:
            im.load()  # decodes every pixel: catches truncated/corrupt files that open() alone accepts
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        return _bomb_reason(exc)
    except UnidentifiedImageError:
        return "not an image PIL can read"
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            return "symbolic link loop"
        if exc.errno == errno.ENOENT and os.path.islink(path):
            return "broken symbolic link"
        if "truncated" in str(exc):
            return "truncated file"
        return _short_reason(exc, path)
    except Exception as exc:  # PIL raises SyntaxError, ValueError, struct.error... depending on the codec
        return _short_reason(exc, path)
    return None


def check_images(paths: list[Path]) -> list[str | None]:
    """`_check_image` of every path, in order: None where the file decodes, else the reason it does not."""
    from PIL import Image

    # Decoding thousands of photos takes seconds: 2 threads (PIL releases the GIL while decoding). The warnings
    # filter is process-wide, so it is set once here around the pool, not per thread.
    with pywarnings.catch_warnings(), ThreadPoolExecutor(max_workers=_IMAGE_CHECK_WORKERS) as pool:
        pywarnings.simplefilter("error", Image.DecompressionBombWarning)
        return list(pool.map(_check_image, paths))


def _bomb_reason(exc: Exception) -> str:
    """'900 M pixels, above the 89 M-pixel decompression-bomb limit' from PIL's DecompressionBomb* message."""
    from PIL import Image

    m = re.search(r"\((\d+) pixels\)", str(exc))
    size = f"{int(m.group(1)) / 1e6:.0f} M pixels" if m else "too many pixels"
    limit = Image.MAX_IMAGE_PIXELS or 0
    return f"{size}, above the {limit / 1e6:.0f} M-pixel decompression-bomb limit; downscale it"


def _short_reason(exc: Exception, path: Path) -> str:
    # PIL messages often repeat the full path, which the warning already names
    msg = " ".join(str(exc).replace(str(path), "").replace("''", "").split())
    return f"{type(exc).__name__}: {msg}"[:100]


def _load_image_folder(root: Path, *, strict: bool = False) -> _Raw:
    shown = _display(root)
    loops: set[str] = set()
    subdirs = _visible_dirs(root, loops)
    split_dirs: dict[str, Path] = {}
    for d in subdirs:
        key = _SPLIT_NAMES.get(d.name.lower())
        if key is not None and d.name.lower() != "dev":
            if key in split_dirs:
                raise DataError(
                    f"{shown} has both {split_dirs[key].name}/ and {d.name}/ as the {key} split; keep only one"
                )
            split_dirs[key] = d
    warnings: list[str] = []
    if "train" in split_dirs:
        others = [d.name for d in subdirs if d not in split_dirs.values()]
        if others:
            warnings.append(f"ignored folders in {shown} that are not train/val/test: {_listing(others)}")
        layout = [(k, split_dirs[k]) for k in _SPLIT_ORDER if k in split_dirs]
    elif split_dirs and len(split_dirs) == len(subdirs):
        names = ", ".join(d.name + "/" for d in split_dirs.values())
        raise DataError(f"{shown} has {names} but no train/ folder; add train/<class>/ images (train is required)")
    else:
        layout = [("", root)]

    train_dir = layout[0][1]
    class_dirs = _visible_dirs(train_dir, loops)
    class_names = [d.name for d in class_dirs]
    where_train = _display(train_dir)
    if not class_dirs:
        loose = _image_files(train_dir)
        if loose:
            raise DataError(
                f"found {len(loose)} images directly in {where_train} but no class subfolders; "
                f"move each class into its own folder {where_train}<class>/"
            )
        tables = sorted(p.name for p in root.iterdir() if p.suffix.lower() in TEXT_EXTENSIONS + (".npz",))
        hint = f" (for the table {tables[0]}, pass the file path itself)" if tables else ""
        raise DataError(
            f"no images found in {shown}{hint}; expected {shown}<class>/*.jpg "
            f"(or train/<class>/...), extensions {', '.join(sorted(IMAGE_EXTENSIONS))}"
        )

    paths: list[Path] = []
    labels: list[str] = []
    split_of: list[str] = []
    for split, sdir in layout:
        sub = _visible_dirs(sdir, loops)
        if split and split != "train":
            extra = [d.name for d in sub if d.name not in class_names]
            if extra:
                raise DataError(
                    f"class folders in {_display(sdir)} not seen in train: {_listing(extra)}; "
                    f"add them to {where_train} or remove them"
                )
        for cdir in sub:
            files = _image_files(cdir)
            paths.extend(files)
            labels.extend([cdir.name] * len(files))
            split_of.extend([split] * len(files))
    if not paths:
        raise DataError(
            f"no images found in {shown} (class folders {_listing(class_names)} are empty or hold no "
            f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files)"
        )

    if loops:
        warnings.append(
            f"ignored symbolic links in {shown} that loop back to a parent folder: {_listing(sorted(loops))}"
        )
    problems = check_images(paths)
    bad = [i for i, p in enumerate(problems) if p is not None]
    if bad and strict:
        raise DataError(f"{paths[bad[0]]} cannot be read ({problems[bad[0]]}); replace or remove it")
    if len(bad) == len(paths):
        first = paths[0].relative_to(root).as_posix()
        raise DataError(
            f"none of the {len(paths)} images in {shown} could be read (e.g. {first}: {problems[0]}); "
            "check that the files are real, complete images"
        )
    skipped: list[str] = []
    if bad:
        names = [f"{paths[i].relative_to(root).as_posix()} ({problems[i]})" for i in bad]
        warnings.append(f"skipped {len(bad)} unreadable images in {shown}: {_listing(names)}")
        skipped.append(warnings[-1])
        keep = [i for i, p in enumerate(problems) if p is None]
        paths = [paths[i] for i in keep]
        labels = [labels[i] for i in keep]
        split_of = [split_of[i] for i in keep]

    splits: dict[str, np.ndarray] = {}
    if layout[0][0]:
        tags = np.asarray(split_of)
        for split, _ in layout:
            idx = np.flatnonzero(tags == split).astype(np.int64)
            if len(idx):
                splits[split] = idx
            else:
                warnings.append(f"split folder {_display(split_dirs[split])} has no readable images; ignored")
    return _Raw(
        modality="image",
        inputs=[os.path.abspath(p) for p in paths],
        labels=labels,
        splits=splits,
        where=f"in {shown}",
        describe=f"image folder {shown}",
        unit="images",
        warnings=warnings,
        declared_classes=class_names,
        class_hint=f"add images to {where_train}" + "{cls}/ or remove that folder",
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------------------------ npz

_NPZ_SPLIT_KEYS = {
    # MedMNIST style
    "train_images": ("train", "train_labels"),
    "val_images": ("val", "val_labels"),
    "test_images": ("test", "test_labels"),
    # keras.datasets style (mnist.npz)
    "x_train": ("train", "y_train"),
    "x_val": ("val", "y_val"),
    "x_test": ("test", "y_test"),
}
_NPZ_PLAIN_KEYS = (("x", "y"), ("images", "labels"), ("X", "y"), ("X", "Y"))


def _load_npz(path: Path) -> _Raw:
    with open(path, "rb") as fh:
        magic = fh.read(4)
    if magic != b"PK\x03\x04":  # .npz is a zip archive; np.load would otherwise try other formats
        raise DataError(f"{path} is not a .npz (zip) archive; save the arrays with numpy.savez(path, x=..., y=...)")
    try:
        archive = np.load(path, allow_pickle=False)
    except Exception as exc:
        raise DataError(
            f"cannot read {path} as a .npz archive ({type(exc).__name__}: {exc}); re-save it with numpy.savez"
        ) from None
    with archive:
        keys = set(archive.files)
        parts: list[tuple[str, str, str]] = []  # (split, image key, label key)
        for xk, (split, yk) in _NPZ_SPLIT_KEYS.items():
            if xk in keys:
                if yk not in keys:
                    raise DataError(f"{path} has '{xk}' but no '{yk}'; save the labels under '{yk}'")
                parts.append((split, xk, yk))
        if parts and not any(s == "train" for s, _, _ in parts):
            names = ", ".join(k for _, k, _ in parts)
            raise DataError(f"{path} has {names} but no train split; add train_images/train_labels")
        if not parts:
            for xk, yk in _NPZ_PLAIN_KEYS:
                if xk in keys and yk in keys:
                    parts.append(("", xk, yk))
                    break
        if not parts:
            raise DataError(
                f"{path} has arrays {_listing(sorted(keys), limit=10)}; expected x/y, images/labels, "
                "or train_images/train_labels (+ val_, test_); rename the arrays with numpy.savez"
            )
        xs, ys, warnings = [], [], []
        for _, xk, yk in parts:
            try:
                x, y = archive[xk], archive[yk]
            except ValueError as exc:  # object arrays need pickle, which we refuse for safety
                raise DataError(
                    f"cannot load '{xk}'/'{yk}' from {path} ({exc}); save plain numeric arrays, not objects"
                ) from None
            xs.append(_npz_images(x, path, xk, warnings))
            ys.append(_npz_labels(y, path, yk, len(xs[-1])))
    shapes = {x.shape[1:] for x in xs}
    if len(shapes) > 1:
        raise DataError(
            f"image shapes differ between splits in {path}: "
            + ", ".join(f"{xk} {x.shape[1:]}" for (_, xk, _), x in zip(parts, xs))
            + "; resize them to one size"
        )
    x_all = np.concatenate(xs) if len(xs) > 1 else xs[0]
    labels = [lab for y in ys for lab in y]
    splits: dict[str, np.ndarray] = {}
    start = 0
    for (split, _, _), y in zip(parts, ys):
        if split:
            splits[split] = np.arange(start, start + len(y), dtype=np.int64)
        start += len(y)
    splits = {k: splits[k] for k in _SPLIT_ORDER if k in splits}
    return _Raw(
        modality="image",
        inputs=x_all,
        labels=labels,
        splits=splits,
        where=f"in {path}",
        describe=f"npz {path}",
        details=f"{'x'.join(map(str, x_all.shape[1:]))} images",
        unit="images",
        warnings=warnings,
    )


def _npz_images(x: np.ndarray, path: Path, key: str, warnings: list[str]) -> np.ndarray:
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]  # (N,H,W,1) -> (N,H,W)
    if not (x.ndim == 3 or (x.ndim == 4 and x.shape[-1] == 3)):
        raise DataError(
            f"'{key}' in {path} has shape {x.shape}; expected images (N,H,W), (N,H,W,1) or (N,H,W,3)"
        )
    if x.dtype == np.uint8:
        return x
    if x.size == 0:
        return x.astype(np.uint8)
    lo, hi = float(x.min()), float(x.max())
    if np.issubdtype(x.dtype, np.integer) or x.dtype == bool:
        if lo < 0 or hi > 255:
            raise DataError(f"'{key}' in {path} has values {lo:g}..{hi:g}; expected uint8 pixels 0..255")
        return x.astype(np.uint8)
    if np.issubdtype(x.dtype, np.floating) and np.isfinite(x).all() and lo >= 0:
        if hi <= 1.0:
            warnings.append(f"'{key}' in {path} is {x.dtype} in 0..1; scaled to uint8 0..255")
            return np.rint(x * 255.0).astype(np.uint8)
        if hi <= 255.0:
            warnings.append(f"'{key}' in {path} is {x.dtype} in 0..255; rounded to uint8")
            return np.rint(x).astype(np.uint8)
    raise DataError(f"'{key}' in {path} is {x.dtype} with values {lo:g}..{hi:g}; save images as uint8 0..255")


def _npz_labels(y: np.ndarray, path: Path, key: str, n: int) -> list[str]:
    if y.ndim == 2 and y.shape[1] == 1:
        y = y[:, 0]  # MedMNIST stores labels as (N, 1)
    if y.ndim != 1:
        raise DataError(
            f"'{key}' in {path} has shape {y.shape}; expected one label per image (N,) — "
            "multi-label or one-hot labels are not supported (use argmax for one-hot)"
        )
    if len(y) != n:
        raise DataError(f"'{key}' in {path} has {len(y)} labels for {n} images; they must match")
    if np.issubdtype(y.dtype, np.integer) or y.dtype == bool:
        return [str(int(v)) for v in y]
    if np.issubdtype(y.dtype, np.floating):
        if not np.isfinite(y).all():
            raise DataError(f"'{key}' in {path} contains NaN/inf labels; remove those examples")
        return [str(int(v)) if float(v).is_integer() else repr(float(v)) for v in y]
    if y.dtype.kind in "US":
        return [v.decode() if isinstance(v, bytes) else str(v) for v in y.tolist()]
    raise DataError(f"'{key}' in {path} has dtype {y.dtype}; save labels as integers or strings")


# ------------------------------------------------------------------------------------------------ text tables


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


def _load_text_file(path: Path, fmt: str, *, text_col: str | None, label_col: str | None,
                    strict: bool = False) -> _Raw:
    table = _read_table(path, fmt, strict=strict)
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
        details=f"text column '{text}', label column '{label}'",
        unit="rows",
        warnings=warnings,
        class_hint="add rows for it or remove its rows",
        skipped=skipped,
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


def _load_text_dir(folder: Path, *, text_col: str | None, label_col: str | None, strict: bool = False) -> _Raw:
    files = _find_split_tables(folder)
    shown = _display(folder)
    warnings: list[str] = []
    train_table = _read_table(*files["train"], strict=strict)
    if not train_table.rows:
        raise DataError(f"{files['train'][0]} has a header but no rows; add one row per example")
    skipped = [train_table.skipped] if train_table.skipped else []
    texts: list[str] = []
    labels: list[str] = []
    splits: dict[str, np.ndarray] = {}
    with _noting(skipped):
        text, label = _detect_columns(train_table, text_col, label_col)
        for split in _SPLIT_ORDER:
            if split not in files:
                continue
            table = train_table if split == "train" else _read_table(*files[split], strict=strict)
            if table is not train_table and table.skipped:
                skipped.append(table.skipped)
            t_col = _resolve_column(table, text, "--text-col")
            l_col = _resolve_column(table, label, "--label-col")
            t, lab = _table_rows(table, t_col, l_col, warnings, strict=strict)
            if split == "train" and not t:
                raise DataError(
                    f"every row of {table.path} lacks a text or a label; check --text-col/--label-col"
                )
            if split != "train" and lab:
                train_labels = set(_normalise_numeric_labels(labels[: len(splits["train"])]))
                unseen = sorted(set(_normalise_numeric_labels(lab)) - train_labels)
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
            f"text column '{text}', label column '{label}'"
        ),
        unit="rows",
        warnings=warnings,
        class_hint=f"add rows for it to {files['train'][0].name} or remove its rows",
        skipped=skipped,
    )


# ------------------------------------------------------------------------------------- unlabelled texts


def load_texts(path: str | Path, *, text_col: str | None = None, strict: bool = False,
               warn: Any = None) -> tuple[list[str], list[int]]:
    """Texts to predict on from a .csv / .tsv / .jsonl table: (texts, 1-based line of each in the file).

    No label column is needed (one is ignored if present). The text column is ``text_col``, else the only
    column, else an obviously named one (text, sentence...), else the longest one. Empty rows are skipped.
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
