"""Atomic, durable writes: a reader never sees a half-written file as complete.

Write to a temporary file in the same directory, fsync it, rename it over the target (atomic on POSIX within
one file system), then fsync the directory: the rename itself is a change to the directory, and until that is on
disk a power cut can leave the old file (or none) in place although the writer went on.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from ajuste.errors import AjusteError


def _atomic(path: Path, write: Callable[[str], None]) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        with open(tmp, "rb") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException as exc:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(exc, OSError):
            _raise_naming(exc, path)
        raise


def _raise_naming(exc: OSError, path: Path) -> None:
    """A write() that hits a full disk names no file: re-raise naming the one being written."""
    if exc.filename is None:
        raise OSError(exc.errno, exc.strerror, str(path)) from exc


def fsync_dir(folder: Path) -> None:
    """Make a directory's entries (a rename, a new file) durable. A no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - Windows, or a file system that refuses
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some network file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


def atomic_write_text(path: Path, text: str) -> None:
    def write(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(text)

    _atomic(path, write)


def atomic_write_json(path: Path, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False, default=_json_default) + "\n")


def atomic_save_safetensors(path: Path, tensors: dict, metadata: dict[str, str] | None = None) -> None:
    from safetensors.torch import save_file

    # safetensors refuses shared or non-contiguous storage: give it plain copies (on the CPU: weights trained on
    # a GPU are written from host memory).
    flat = {k: v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(flat, tmp, metadata=metadata))


def atomic_torch_save(path: Path, obj: Any) -> None:
    import torch

    _atomic(path, lambda tmp: torch.save(obj, tmp))


def append_jsonl(path: Path, record: dict[str, Any]) -> None:
    """Append one line and fsync it: a line is either whole or absent after a crash."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    new = not path.exists()
    try:
        with open(path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record, default=_json_default) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
    except OSError as exc:
        _raise_naming(exc, path)
        raise
    if new:  # the file's directory entry must reach the disk too, once
        fsync_dir(path.parent)


def read_json(path: Path, fix: str) -> Any:
    """A JSON file ajuste wrote; one line naming it, and ``fix``, when it is damaged or cannot be read."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AjusteError(f"{path} is damaged ({type(exc).__name__}); {fix}") from None
    except OSError as exc:  # missing, unreadable
        raise AjusteError(f"cannot read {path} ({exc.strerror or type(exc).__name__}); {fix}") from None


def ajuste_dir_kind(path: Path) -> str:
    """What ajuste wrote in directory ``path``: "run" (`ajuste train`), "study" (`ajuste compare`),
    "search" (`ajuste tune`), or "" (none of these)."""
    path = Path(path)
    if (path / "config.yaml").is_file() and ((path / "status.json").is_file() or (path / "summary.json").is_file()):
        return "run"
    if (path / "study.json").is_file():
        return "study"
    if (path / "tune.json").is_file():
        return "search"
    return ""


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    """Read whole lines; a torn last line (from a kill mid-write) is ignored."""
    path = Path(path)
    if not path.exists():
        return []
    out = []
    for line in path.read_bytes().splitlines():
        try:
            out.append(json.loads(line.decode("utf-8")))
        except (UnicodeDecodeError, json.JSONDecodeError):  # torn or garbled: skipped
            continue
    return out


def _json_default(obj: Any) -> Any:
    try:
        import numpy as np

        if isinstance(obj, np.generic):
            return obj.item()
        if isinstance(obj, np.ndarray):
            return obj.tolist()
    except ImportError:  # pragma: no cover
        pass
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")
