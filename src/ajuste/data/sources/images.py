"""The image-folder source: ``root/<class>/*.jpg`` or ``root/{train,val|validation,test}/<class>/*.jpg``.

It owns the walk of the folders (hidden files, ``__MACOSX/`` and symbolic-link loops left out), the check that
every image decodes (`check_images`, also used before predicting) and the skipping of those that do not.
"""

from __future__ import annotations

import errno
import os
import re
import warnings as pywarnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from ajuste.data.sources.common import (
    _SPLIT_NAMES,
    _SPLIT_ORDER,
    IMAGE_EXTENSIONS,
    TEXT_EXTENSIONS,
    _display,
    _listing,
)
from ajuste.data.sources.records import _Raw
from ajuste.errors import DataError

_IMAGE_CHECK_WORKERS = 2  # this machine has 2 cores; decoding is PIL C code that releases the GIL


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

    Call it with PIL's DecompressionBombWarning turned into an error (as `check_images` does): PIL only warns
    between MAX_IMAGE_PIXELS and twice that, and then decodes hundreds of megabytes.
    """
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
    # Decoding thousands of photos takes seconds: 2 threads (PIL releases the GIL while decoding). The warnings
    # filter is process-wide, so it is set once here around the pool, not per thread.
    with pywarnings.catch_warnings(), ThreadPoolExecutor(max_workers=_IMAGE_CHECK_WORKERS) as pool:
        pywarnings.simplefilter("error", Image.DecompressionBombWarning)
        return list(pool.map(_check_image, paths))


def _bomb_reason(exc: Exception) -> str:
    """'900 M pixels, above the 89 M-pixel decompression-bomb limit' from PIL's DecompressionBomb* message."""
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
    warnings: list[str] = []
    layout, split_dirs = _split_layout(root, shown, loops, warnings)
    train_dir = layout[0][1]
    class_names = _class_names(root, train_dir, shown, loops)
    where_train = _display(train_dir)
    paths, labels, split_of = _collect_images(layout, class_names, where_train, loops)
    if not paths:
        raise DataError(
            f"no images found in {shown} (class folders {_listing(class_names)} are empty or hold no "
            f"{'/'.join(sorted(e[1:] for e in IMAGE_EXTENSIONS))} files)"
        )

    if loops:
        warnings.append(
            f"ignored symbolic links in {shown} that loop back to a parent folder: {_listing(sorted(loops))}"
        )
    paths, labels, split_of, skipped = _drop_unreadable(root, paths, labels, split_of, warnings, strict=strict)
    splits = _split_indices(layout, split_dirs, split_of, warnings)
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


def _split_layout(root: Path, shown: str, loops: set[str],
                  warnings: list[str]) -> tuple[list[tuple[str, Path]], dict[str, Path]]:
    """The (split, folder) pairs to read, train first: ``root``'s train/val/test folders when it has a train/,
    else [("", root)]; and the split folders found, by split key."""
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
    if "train" in split_dirs:
        others = [d.name for d in subdirs if d not in split_dirs.values()]
        if others:
            warnings.append(f"ignored folders in {shown} that are not train/val/test: {_listing(others)}")
        return [(k, split_dirs[k]) for k in _SPLIT_ORDER if k in split_dirs], split_dirs
    if split_dirs and len(split_dirs) == len(subdirs):
        names = ", ".join(d.name + "/" for d in split_dirs.values())
        raise DataError(f"{shown} has {names} but no train/ folder; add train/<class>/ images (train is required)")
    return [("", root)], split_dirs


def _class_names(root: Path, train_dir: Path, shown: str, loops: set[str]) -> list[str]:
    """The class folders of the train folder; none is an error that says what the folder holds instead."""
    class_dirs = _visible_dirs(train_dir, loops)
    if class_dirs:
        return [d.name for d in class_dirs]
    where_train = _display(train_dir)
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


def _collect_images(layout: list[tuple[str, Path]], class_names: list[str], where_train: str,
                    loops: set[str]) -> tuple[list[Path], list[str], list[str]]:
    """Every image file of every split folder: (paths, class name of each, split of each)."""
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
    return paths, labels, split_of


def _drop_unreadable(root: Path, paths: list[Path], labels: list[str], split_of: list[str], warnings: list[str], *,
                     strict: bool) -> tuple[list[Path], list[str], list[str], list[str]]:
    """The images that decode, with their labels and splits, and what was skipped (for an error that follows);
    ``strict``: the first that does not is an error. None decoding is an error either way."""
    shown = _display(root)
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
    return paths, labels, split_of, skipped


def _split_indices(layout: list[tuple[str, Path]], split_dirs: dict[str, Path], split_of: list[str],
                   warnings: list[str]) -> dict[str, np.ndarray]:
    """{split: indices} of a train/val/test layout ({} for a plain one); a split left with no image is dropped."""
    splits: dict[str, np.ndarray] = {}
    if layout[0][0]:
        tags = np.asarray(split_of)
        for split, _ in layout:
            idx = np.flatnonzero(tags == split).astype(np.int64)
            if len(idx):
                splits[split] = idx
            else:
                warnings.append(f"split folder {_display(split_dirs[split])} has no readable images; ignored")
    return splits
