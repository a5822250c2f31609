"""What a run was trained and tested on, by content rather than by row number.

A run used to keep only row indices (splits.json). A data file edited in place but of the same length (its rows
reversed, say) then gave `ajuste evaluate` training rows as "test" rows, in silence. A run now also stores
``fingerprint.json``: one short hash per example (its bytes: the image file, the array, the text or both texts of a
pair, plus its label) for the whole data set and for each split. From it:

- the data set's digest, independent of row order: the same examples in another order are the same data;
- each split's membership by content, so `evaluate` finds the test examples wherever they now stand;
- when the content did change, what changed (examples added, removed or edited, and how many test examples are
  gone), for a one-line refusal.

Hashes are BLAKE2b, 64 bits per example: a collision among a million examples has a chance of about 3e-8.
"""

from __future__ import annotations

import hashlib
import weakref
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from ajuste.errors import DataError
from ajuste.io import read_json

FINGERPRINT_FILE = "fingerprint.json"
VERSION = 1
_CHUNK = 1 << 20
# One data set's hashes, computed once per process (a study's cells, evaluate after train) and dropped with it.
_MEMO: "weakref.WeakKeyDictionary[Any, list[str]]" = weakref.WeakKeyDictionary()


def example_hashes(data: Any) -> list[str]:
    """One 16-hex-digit hash per example of a `LabelledData`, in its row order."""
    memo = _MEMO.get(data)
    if memo is not None and len(memo) == len(data):
        return memo
    out = []
    arrays = isinstance(data.inputs, np.ndarray)
    for i in range(len(data)):
        h = hashlib.blake2b(digest_size=8)
        if getattr(data, "targets", None) is not None:  # multi-label or regression: the target row itself
            h.update(np.ascontiguousarray(data.targets[i], dtype=np.float32).tobytes())
        else:
            h.update(data.classes[int(data.labels[i])].encode("utf-8", "surrogatepass"))
        h.update(b"\0")
        item = data.inputs[i]
        if arrays:
            h.update(str(item.shape).encode())
            h.update(np.ascontiguousarray(item).tobytes())
        elif data.modality == "image":  # a file path: its bytes, not its name (a moved file is the same image)
            with open(item, "rb") as fh:
                for block in iter(lambda: fh.read(_CHUNK), b""):
                    h.update(block)
        elif isinstance(item, tuple):  # a text pair: both sides, in order, apart (("ab", "c") is not ("a", "bc"))
            h.update(b"pair\0")
            for side in item:
                h.update(str(side).encode("utf-8", "surrogatepass"))
                h.update(b"\0")
        else:
            h.update(str(item).encode("utf-8", "surrogatepass"))
        out.append(h.hexdigest())
    _MEMO[data] = out
    return out


def _digest(hashes: list[str]) -> str:
    return hashlib.sha256("\n".join(sorted(hashes)).encode()).hexdigest()


def data_digest(data: Any) -> str:
    """The data set's digest alone, independent of row order (a search records it; --from-study checks it)."""
    return _digest(example_hashes(data))


def fingerprint(data: Any, splits: dict[str, np.ndarray]) -> dict[str, Any]:
    """The record a run stores: the data's order-independent digest, every example's hash, each split's."""
    hashes = example_hashes(data)
    return {"version": VERSION, "examples": len(hashes), "digest": _digest(hashes), "hashes": sorted(hashes),
            "splits": {k: sorted(hashes[int(i)] for i in idx) for k, idx in splits.items()}}


def describe_change(saved: dict[str, Any], data: Any, split: str | None = None) -> str | None:
    """None when ``data`` holds the same examples as when ``saved`` was taken (in any order); else what
    changed, in words ("3 examples added, 2 removed or edited; 1 of the 90 test examples is gone")."""
    hashes = example_hashes(data)
    if _digest(hashes) == saved["digest"]:
        return None
    now, then = Counter(hashes), Counter(saved["hashes"])
    added, removed = sum((now - then).values()), sum((then - now).values())
    parts = [f"{added} example{'s' * (added != 1)} added", f"{removed} removed or edited"]
    if split is not None:
        wanted = Counter(saved["splits"][split])
        gone = sum((wanted - now).values())
        total = sum(wanted.values())
        parts.append(f"{gone} of the {total} {split} examples {'is' if gone == 1 else 'are'} gone")
    return ", ".join(parts)


def locate(saved: dict[str, Any], data: Any, split: str) -> np.ndarray:
    """Sorted row indices of ``split``'s examples in ``data``, found by content; ``data`` must hold them all
    (`describe_change` returned None). Identical examples are interchangeable: any one of them will do."""
    rows: dict[str, list[int]] = {}
    for i, h in enumerate(example_hashes(data)):
        rows.setdefault(h, []).append(i)
    out = []
    for h in saved["splits"][split]:
        free = rows.get(h)
        if not free:
            raise DataError(f"an example of the {split} split is missing from {data.source}")
        out.append(free.pop())
    return np.sort(np.asarray(out, dtype=np.int64))


def read(run_dir: Path) -> dict[str, Any] | None:
    """A run's stored fingerprint; None for a run made before fingerprints were kept."""
    path = Path(run_dir) / FINGERPRINT_FILE
    if not path.is_file():
        return None
    rec = read_json(path, "delete the run directory and train again, or evaluate on DATA given explicitly")
    if not isinstance(rec, dict) or rec.get("version") != VERSION or "digest" not in rec:
        raise DataError(f"{path} is not a fingerprint this version of ajuste reads; evaluate on DATA given "
                        f"explicitly")
    return rec
