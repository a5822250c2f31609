"""Frozen-prefix activation cache: run the frozen layers once, train the rest from their output.

When layer groups 0..k-1 stay frozen for a whole phase and the input transform is deterministic, the
activations at the input of group k (``Backbone.forward_prefix``) are the same every epoch. They are
computed once per split, stored (bf16 by default: half the memory of fp32; storage only, the suffix
computes in fp32 unless bf16 is native), and the trainable suffix trains from them
(``Backbone.forward_suffix``). At the head the activations are the pooled features (linear probe,
the head phase of two-stage and gradual).

An entry is keyed by everything its values depend on (``cache_key``): the frozen prefix's weights and
buffers (a hash of the tensors, not the model's name), the cut, the data (inputs — file paths with
size and mtime, array bytes, or token ids — and the split's indices), the preprocessing (image size,
crop, mean/std, max length), the storage and compute dtypes, and the torch version. Nothing else may
hit: other weights or another transform always miss.

Where entries live:

- a process-wide registry in memory (epochs, the phases of one run, the trials of ``ajuste tune`` and
  the cells of a study all hit it), least recently used first out, within ``MEMORY_SHARE`` of the
  memory the kernel can give;
- a directory (``train.cache_dir``, or the one a study/tune sets with ``shared_dir``): every entry is
  also written there, so other processes (tune workers, a resumed study) read it instead of
  recomputing. A file is one entry: ``MAGIC | data | header JSON | header length | MAGIC``; the
  header holds the key, shape, dtype and a BLAKE2b checksum of the data, so a truncated or corrupt
  file is detected on load and rebuilt;
- an entry too large for memory is a read-only memmap of its file (in the directory, or a temporary
  one removed at exit); one larger than ``train.cache_max_gb`` is not cached at all: the frozen
  layers are recomputed every epoch, with a one-line notice.

Text (per-token activations of variable length) is stored *ragged*: each example's real tokens only,
concatenated, with their lengths; a batch is re-padded to its own longest example. Padding values do
not matter: attention masks padded keys, and pooling masks padded positions.

An entry and its file format are ``ajuste.training.cache_store``'s; this module decides which entries exist,
where they live and when one is built.
"""

from __future__ import annotations

import atexit
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ajuste.data.pipeline import available_memory
from ajuste.training.cache_store import (DTYPES, FORMAT, MAGIC, CorruptCache, Entry, Writer, entry_path,  # noqa: F401
                                      load_file, read_header)  # MAGIC: callers read it from here

# Share of (available + already cached) memory the in-memory entries may take together: the decoded
# images (ImageStore) take up to half of what is available, the model and its activations need the rest.
MEMORY_SHARE = 0.4


class CacheTooLarge(Exception):
    """An entry would exceed ``train.cache_max_gb`` (or the disk it would spill to)."""


# --- notices ----------------------------------------------------------------------------------------

_SAID: set[str] = set()


def notice_once(message: str, console: Any = None, *, key: str | None = None) -> None:
    """One line, once per process and ``key`` (default: the message) — a study's cells and a tune's
    trials would repeat it otherwise."""
    key = message if key is None else key
    if key in _SAID:
        return
    _SAID.add(key)
    if console is not None:
        console.print(f"note: {message}", markup=False, highlight=False, soft_wrap=True)
    else:
        print(f"note: {message}", file=sys.stderr)


# --- settings -----------------------------------------------------------------------------------------

_SHARED_DIRS: list[Path] = []


@contextlib.contextmanager
def shared_dir(path: str | Path | None) -> Iterator[None]:
    """Runs inside write their cache entries to ``path`` (unless their config names a ``train.cache_dir``):
    a study's cells and a tune's trials in other processes, or after a restart, read them from there."""
    if path is None:
        yield
        return
    _SHARED_DIRS.append(Path(path))
    try:
        yield
    finally:
        _SHARED_DIRS.pop()


@dataclass
class Settings:
    enabled: bool
    directory: Path | None
    max_bytes: int
    dtype: torch.dtype

    @classmethod
    def from_config(cls, train_cfg: Any) -> "Settings":
        directory = Path(train_cfg.cache_dir).expanduser() if train_cfg.cache_dir else \
            (_SHARED_DIRS[-1] if _SHARED_DIRS else None)
        return cls(enabled=train_cfg.cache != "off", directory=directory,
                   max_bytes=int(train_cfg.cache_max_gb * 2**30), dtype=DTYPES[train_cfg.cache_dtype])


# --- keys -----------------------------------------------------------------------------------------------


def digest_tensors(named: list[tuple[str, torch.Tensor]]) -> str:
    """BLAKE2b of names, dtypes, shapes and bytes (memory format does not matter: contiguous copies)."""
    h = hashlib.blake2b(digest_size=16)
    for name, t in named:
        t = t.detach()
        h.update(f"{name}|{t.dtype}|{tuple(t.shape)}|".encode())
        if t.numel():
            h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())
    return h.hexdigest()


def digest_json(obj: Any) -> str:
    return hashlib.blake2b(json.dumps(obj, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def cache_key(*, backbone: Any, split: Any, pipeline: Any, split_name: str, amp: torch.dtype | None,
              channels_last: bool, dtype: torch.dtype, device: torch.device | None = None) -> dict[str, Any]:
    """Every input of the cached values, as a JSON-able dict; ``digest_json`` of it names the entry. ``amp``
    is the autocast dtype of the pass that computes them (None: fp32), ``device`` where it runs."""
    net = backbone.net
    compute: dict[str, Any] = {"bf16": amp is torch.bfloat16, "channels_last": bool(channels_last)}
    if amp is torch.float16:
        compute["fp16"] = True
    if device is not None and device.type != "cpu":  # other kernels, other roundings; CPU keys stay as they were
        compute["device"] = device.type
    return {
        "format": FORMAT,
        "torch": torch.__version__,
        "model": f"{type(net).__module__}.{type(net).__qualname__}",
        "cut": split.name,
        "group": split.group,
        "weights": digest_tensors(backbone.prefix_state(split)),
        "data": pipeline.fingerprint(split_name),
        "transform": pipeline.eval_transform_identity(),
        "dtype": str(dtype),
        "compute": compute,
    }


# --- entries --------------------------------------------------------------------------------------------


class Registry:
    """Process-wide in-memory entries, least recently used evicted first."""

    def __init__(self) -> None:
        self.entries: OrderedDict[str, Entry] = OrderedDict()
        self.stats = {"hits": 0, "disk_hits": 0, "builds": 0, "rebuilt_corrupt": 0, "too_large": 0}

    def get(self, key: str) -> Entry | None:
        entry = self.entries.get(key)
        if entry is not None:
            self.entries.move_to_end(key)
        return entry

    @property
    def memory_bytes(self) -> int:
        return sum(e.nbytes for e in self.entries.values() if e.in_memory)

    def room_for(self, nbytes: int) -> bool:
        """Whether ``nbytes`` more fit in memory, after evicting least recently used entries if needed."""
        avail = available_memory()
        held = self.memory_bytes
        budget = MEMORY_SHARE * ((avail if avail is not None else 8 * 2**30) + held)
        if nbytes > budget:
            return False
        while held + nbytes > budget and self.entries:
            _, old = self.entries.popitem(last=False)
            if old.in_memory:
                held -= old.nbytes
        return held + nbytes <= budget

    def put(self, entry: Entry) -> None:
        self.entries[entry.key] = entry
        self.entries.move_to_end(entry.key)

    def clear(self) -> None:
        self.entries.clear()
        for k in self.stats:
            self.stats[k] = 0


REGISTRY = Registry()


def clear() -> None:
    """Forget every in-memory entry (files in cache directories stay)."""
    REGISTRY.clear()


# --- files ----------------------------------------------------------------------------------------------

_SPILL_DIR: Path | None = None


def _spill_dir() -> Path:
    """A private directory for entries too large for memory when no cache directory is set; removed at exit."""
    global _SPILL_DIR
    if _SPILL_DIR is None:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "ajuste"
        base.mkdir(parents=True, exist_ok=True)
        _SPILL_DIR = Path(tempfile.mkdtemp(prefix="prefix-cache-", dir=base))
        atexit.register(shutil.rmtree, _SPILL_DIR, True)
    return _SPILL_DIR


# --- building -------------------------------------------------------------------------------------------


def lookup(key: str, settings: Settings, *, console: Any = None) -> Entry | None:
    """The entry from memory, else from the cache directory (verified); None when absent or corrupt."""
    entry = REGISTRY.get(key)
    if entry is not None:
        REGISTRY.stats["hits"] += 1
        return entry
    if settings.directory is None:
        return None
    path = entry_path(settings.directory, key)
    if not path.is_file():
        return None
    try:
        header = read_header(path, key)
        entry = load_file(path, key, in_memory=REGISTRY.room_for(header["nbytes"]))
    except (CorruptCache, OSError, KeyError, ValueError, TypeError) as exc:
        REGISTRY.stats["rebuilt_corrupt"] += 1
        notice_once(f"activation cache file {path} is damaged ({exc}); rebuilding it", console)
        with contextlib.suppress(OSError):
            path.unlink()
        return None
    REGISTRY.stats["disk_hits"] += 1
    REGISTRY.put(entry)
    return entry


def build(key: str, settings: Settings, batches: Iterator[tuple[torch.Tensor, np.ndarray | None]], *, n: int,
          lengths: np.ndarray | None) -> Entry:
    """Store the activations ``batches`` yields — (B, ...) tensors in row order, with their examples'
    token counts for ragged (text) activations — as entry ``key``. Raises ``CacheTooLarge`` before
    storing anything when the entry would exceed the size limit."""
    t0 = time.perf_counter()
    ragged = lengths is not None
    writer: Writer | None = None
    data: Any = None
    row = 0
    itemsize = torch.empty(0, dtype=settings.dtype).element_size()
    try:
        for acts, lens in batches:
            acts = acts.detach().to(settings.dtype)
            if data is None and writer is None:
                row_shape = tuple(acts.shape[2:] if ragged else acts.shape[1:])
                rows = int(lengths.sum()) if ragged else n
                nbytes = rows * int(np.prod(row_shape, dtype=np.int64)) * itemsize
                if nbytes > settings.max_bytes:
                    raise CacheTooLarge(f"{_size(nbytes)}, over train.cache_max_gb={settings.max_bytes / 2**30:g}")
                in_memory = REGISTRY.room_for(nbytes)
                directory = settings.directory or (None if in_memory else _spill_dir())
                if directory is not None:
                    free = shutil.disk_usage(_existing_parent(directory)).free
                    if free < nbytes + 256 * 2**20:
                        if not in_memory:
                            raise CacheTooLarge(f"{_size(nbytes)}, too large for memory and for the "
                                                f"{_size(free)} free under {directory}")
                        directory = None
                if directory is not None:
                    writer = Writer(entry_path(directory, key))
                if in_memory:
                    data = torch.empty((rows, *row_shape), dtype=settings.dtype)
            block = torch.cat([acts[i, :int(k)] for i, k in enumerate(lens)]) if ragged else acts
            if data is not None:
                data[row:row + len(block)] = block
            if writer is not None:
                writer.write(block)
            row += len(block)
        header = {"format": FORMAT, "key": key, "kind": "ragged" if ragged else "dense",
                  "dtype": {v: k for k, v in DTYPES.items()}[settings.dtype], "shape": [row, *row_shape],
                  "row_shape": list(row_shape), "lengths": None if not ragged else [int(x) for x in lengths],
                  "seconds": round(time.perf_counter() - t0, 3)}
        if writer is not None:
            writer.finish(header)
    except BaseException:
        if writer is not None:
            writer.abort()
        raise
    REGISTRY.stats["builds"] += 1
    if data is None:  # too large for memory: read back from the file it was streamed to
        entry = load_file(writer.path, key, in_memory=False)
    else:
        entry = Entry(key, header["kind"], data, settings.dtype, row_shape, lengths,
                      path=writer.path if writer else None, in_memory=True, seconds=header["seconds"])
    REGISTRY.put(entry)
    return entry


def _size(nbytes: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20)):
        if nbytes >= scale / 10:
            return f"{nbytes / scale:.1f} {unit}"
    return f"{nbytes / 2**10:.1f} KiB"


def _existing_parent(p: Path) -> Path:
    p = Path(p)
    while not p.exists() and p != p.parent:
        p = p.parent
    return p


def activations(*, key_parts: dict[str, Any], settings: Settings, compute: Callable[[], Iterator], n: int,
                lengths: np.ndarray | None, console: Any = None) -> Entry | None:
    """The entry for ``key_parts``: from memory, from the cache directory, or computed now by iterating
    ``compute()``. None when it would be too large (the caller then runs the frozen layers live)."""
    key = digest_json(key_parts)
    entry = lookup(key, settings, console=console)
    if entry is not None:
        return entry
    batches = compute()
    try:
        return build(key, settings, batches, n=n, lengths=lengths)
    except CacheTooLarge as exc:
        REGISTRY.stats["too_large"] += 1
        notice_once(f"not caching the frozen layers' output at {key_parts.get('cut')}: it would take {exc}; "
                    f"they run every epoch instead", console, key=f"too-large {key_parts.get('cut')}")
        return None
    finally:
        close = getattr(batches, "close", None)
        if close is not None:
            close()  # a generator stopped early: its cleanup (model back in train mode) runs now
