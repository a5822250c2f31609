"""What ``ajuste predict`` is given, turned into what the model classifies: image files from files, folders, globs
and stdin; texts from tables, text files, globs, stdin and the command line. Unreadable images are skipped or
refused with the reasons `ajuste train` gives; input of the wrong modality is refused in one line."""

from __future__ import annotations

import glob
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ajuste.data.sources import check_images, load_texts
from ajuste.data.sources.common import _listing
from ajuste.data.sources.table_read import _decode
from ajuste.errors import AjusteError, DataError

_IMAGE_EXT = {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff"}
_TEXT_EXT = {".csv", ".tsv", ".jsonl", ".txt"}


_FILE_EXT = _IMAGE_EXT | _TEXT_EXT | {".json", ".npz", ".npy", ".parquet", ".xlsx", ".xls", ".pdf", ".docx"}


def _looks_like_a_file(item: str) -> bool:
    """One word ending in a file suffix ("reviews.csv", "data/*.tsv"): meant as a path, not as a text."""
    return not any(ch.isspace() for ch in item) and Path(item).suffix.lower() in _FILE_EXT


def read_stdin(stdin: Any) -> list[str]:
    stream = sys.stdin if stdin is None else stdin
    if getattr(stream, "isatty", lambda: False)():
        raise AjusteError("- reads inputs from stdin, but stdin is a terminal; pipe them in "
                          "(e.g. `ls shots/*.jpg | ajuste predict RUN -`)")
    return stream.read().splitlines()


def _is_glob(item: str) -> bool:
    return glob.has_magic(item) and not Path(item).exists()


def _glob(item: str) -> list[Path]:
    return [Path(m) for m in sorted(glob.glob(str(Path(item).expanduser()), recursive=True))
            if not Path(m).name.startswith(".")]


def _images_in(folder: Path) -> list[str]:
    return sorted(str(f) for f in folder.rglob("*") if f.suffix.lower() in _IMAGE_EXT
                  and not f.name.startswith(".") and f.is_file())


def expand_image_inputs(inputs: list[str], stdin_lines: list[str] = ()) -> list[str]:
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


def readable_images(files: list[str], *, strict: bool, warn: Any) -> list[str]:
    """``files`` less those that do not decode (with the reasons `ajuste train` gives when it skips them)."""
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


def expand_text_inputs(inputs: list[str], text_col: str | None, stdin_lines: list[str] = (), *,
                       strict: bool = False, warn: Any = None) -> tuple[list[str], list[str]]:
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


# --- inputs given in memory (the Python API) ---------------------------------------------------------------


def pair_names(run: Any) -> str:
    """The two columns a text-pair run was trained on, in words ("'premise' and 'hypothesis'")."""
    cols = [c.strip() for c in str(run.config.data.text_col or "first,second").split(",")]
    return " and ".join(f"'{c}'" for c in cols)


def check_pairs(items: Any, run: Any) -> None:
    """Refuse, in one line, texts given to a text-pair model and pairs given to a single-text one."""
    pair = bool(getattr(run.preprocessing, "text_pair", False))
    bad = next((x for x in items if isinstance(x, tuple) != pair), None)
    if bad is None:
        return
    if pair:
        raise AjusteError(f"{run.run_dir} is a text-pair model (columns {pair_names(run)}) but was given a single "
                          f"text ({str(bad)[:40]!r}); give a .csv/.tsv/.jsonl table with both columns (other "
                          f"names: --text-col FIRST,SECOND), or (first, second) tuples in Python")
    raise AjusteError(f"{run.run_dir} is a single-text model but was given text pairs; give one text per example "
                      f"(--text-col names one column)")


def _in_memory_texts(inputs: Any, run: Any) -> tuple[list[Any], bool]:
    """Texts, or (first, second) tuples for a text-pair run: one or a list."""
    if getattr(run.preprocessing, "text_pair", False):
        if isinstance(inputs, tuple) and len(inputs) == 2 and all(isinstance(t, str) for t in inputs):
            return [inputs], True
        if isinstance(inputs, str):
            check_pairs([inputs], run)
        items = [tuple(x) if isinstance(x, list) else x for x in list(inputs)]
        check_pairs(items, run)
        if not items or not all(len(x) == 2 and all(isinstance(t, str) for t in x) for x in items):
            raise AjusteError("a text-pair model predicts (first, second) tuples of strings: give one, or a "
                              "non-empty list of them")
        return items, False
    if isinstance(inputs, str):
        return [inputs], True
    texts = list(inputs)
    check_pairs(texts, run)
    if not texts or not all(isinstance(t, str) for t in texts):
        raise AjusteError("a text model predicts strings: give one, or a non-empty list of them")
    return texts, False


def in_memory_items(inputs: Any, run: Any) -> tuple[Any, bool]:
    """What ``run_eval.predict_items`` takes for inputs given in memory (the Python API's ``Run.predict``): texts
    ((first, second) tuples for a text-pair run), image paths, PIL images or numpy arrays, one or a list; and
    whether ``inputs`` was one item."""
    if run.backbone.modality == "text":
        return _in_memory_texts(inputs, run)
    stack = run.preprocessing.square  # trained on arrays: arrays are resized whole, as they were
    if isinstance(inputs, np.ndarray):
        if inputs.ndim == 4 or (inputs.ndim == 3 and inputs.shape[-1] not in (3, 4)):
            return _image_arrays(list(inputs), stack), False
        return _image_arrays([inputs], stack), True
    if isinstance(inputs, (str, Path)) or _is_pil(inputs):
        return [_image_item(inputs)], True
    items = list(inputs)
    if not items:
        raise AjusteError("nothing to predict: give an image, a path, an array or a non-empty list of them")
    if all(isinstance(x, np.ndarray) for x in items):
        return _image_arrays(items, stack), False
    return [_image_item(x) for x in items], False


def _is_pil(x: Any) -> bool:
    return type(x).__module__.startswith("PIL.")


def _image_item(x: Any) -> Any:
    if isinstance(x, (str, Path)):
        if not Path(x).is_file():
            raise AjusteError(f"image {x} does not exist")
        return str(x)
    if _is_pil(x):
        return x
    if isinstance(x, np.ndarray):
        from PIL import Image

        return Image.fromarray(_uint8(x))
    raise AjusteError(f"cannot predict a {type(x).__name__}: give image paths, PIL images or numpy arrays")


def _image_arrays(arrays: list[np.ndarray], stack: bool) -> Any:
    images = [_uint8(a) for a in arrays]
    if not stack:
        return [_image_item(a) for a in images]
    if len({a.shape for a in images}) > 1:
        raise AjusteError("the arrays differ in shape; give images of one shape (the model resizes them)")
    return np.stack(images)


def _uint8(a: np.ndarray) -> np.ndarray:
    """An image array as uint8 0–255: uint8 as it is, floats in [0, 1] scaled; anything else refused (a silent
    guess at its range would give confident nonsense)."""
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[-1] not in (1, 3, 4)):
        raise AjusteError(f"an image array has shape (H, W) or (H, W, C) with C 1, 3 or 4; got {a.shape}")
    if a.dtype == np.uint8:
        return a[..., 0] if a.ndim == 3 and a.shape[-1] == 1 else a
    if np.issubdtype(a.dtype, np.floating) and a.size and 0.0 <= float(a.min()) and float(a.max()) <= 1.0:
        return _uint8(np.rint(a * 255.0).astype(np.uint8))
    lo, hi = (float(a.min()), float(a.max())) if a.size else (0.0, 0.0)
    raise AjusteError(f"an image array of {a.dtype} with values {lo:g}..{hi:g}: give uint8 0–255 or floats in "
                      f"[0, 1], scaled as the training images were (scikit-learn's digits, 0..16: "
                      f"(images * 255 / 16).round().astype('uint8'))")
