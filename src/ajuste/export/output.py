"""Where an export goes, and that it stays there: the output directory an export may take (never the run, never
something that is not an earlier export), file names copied from a run kept inside the staging directory, and
the staging tree checked for links that point outside it before it becomes the output."""

from __future__ import annotations

import shutil
from pathlib import Path

from ajuste.errors import AjusteError
from ajuste.io import ajuste_dir_kind, read_json


def check_out(run_dir: Path, out: Path, *, overwrite: bool) -> bool:
    """Refuse an output that would clobber the run or something that is not an earlier export.
    Returns whether an existing export is to be replaced (after the new one checks out)."""
    r, o = run_dir.resolve(), out.resolve()
    if o == r:
        raise AjusteError("--out must differ from the run directory")
    if o in r.parents:
        raise AjusteError(f"--out {out} contains the run directory {run_dir}; choose a directory outside it")
    if out.is_symlink():
        raise AjusteError(f"--out {out} is a symbolic link; give a real directory path")
    if not out.exists():
        return False
    if not out.is_dir():
        raise AjusteError(f"--out {out} is a file; give a directory path")
    if not any(out.iterdir()):
        return False  # renaming the finished export onto an empty directory replaces it
    if not overwrite:
        raise AjusteError(f"{out} exists and is not empty; use another --out or --overwrite")
    made = _made_by_ajuste(out)
    if made != "an export":
        raise AjusteError(f"{out} holds {made}, not an earlier export; --overwrite replaces only an export — "
                          f"choose another --out")
    return True


def _made_by_ajuste(path: Path) -> str:
    """What ``path`` holds, in words: "an export" only for what `export_run` wrote. An ajuste-format export
    is laid out like a run (config.yaml, summary.json...), so a run is told apart by what an export never has:
    a status.json or checkpoint/ (every training run, finished or not), or a summary without an export
    record. backbone.json alone proves nothing: every run directory has one."""
    if (path / "export.json").is_file():
        return "an export"
    kind = ajuste_dir_kind(path)
    if kind == "study":
        return "a study of `ajuste compare`"
    if kind == "search":
        return "a search of `ajuste tune`"
    if (path / "status.json").exists() or (path / "checkpoint").exists():
        return "a training run"
    if kind == "run":  # config.yaml and summary.json, no status: an ajuste-format export if it says so
        rec = read_json(path / "summary.json", "choose another --out")
        return "an export" if isinstance(rec, dict) and "export" in rec else "a training run"
    return "files that ajuste did not write"


def inside(root: Path, name: str) -> Path:
    """``root/name`` for a file name taken from a run's files: never a path that leaves ``root``."""
    target = root / name
    if not name or Path(name).is_absolute() or name in (".", "..") or len(Path(name).parts) != 1 \
            or not target.resolve().is_relative_to(root.resolve()):
        raise AjusteError(f"refusing to export file name {name!r}: it would be written outside {root}")
    return target


def copy_file(src: Path, dst_dir: Path, name: str) -> None:
    if src.is_symlink():
        raise AjusteError(f"{src} is a symbolic link; an export copies only regular files of the run directory "
                          f"(replace the link by the file)")
    shutil.copy2(src, inside(dst_dir, name))


def check_tree(root: Path) -> None:
    """Everything under the staging directory is a regular file or directory inside it."""
    base = root.resolve()
    for p in root.rglob("*"):
        if p.is_symlink() or not p.resolve().is_relative_to(base):
            raise AjusteError(f"export wrote {p}, which points outside {root}; refusing to finish")
