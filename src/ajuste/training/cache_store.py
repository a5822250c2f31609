"""One activation-cache entry, held and stored: ``Entry`` (rows in memory, or a read-only memmap of its file), and
the file format that carries it between processes — ``MAGIC | data | header JSON | header length | MAGIC``,
written under a temporary name and renamed when complete, read back only after its frame, key, size and BLAKE2b
checksum check out (``CorruptCache`` otherwise).

Which entries exist, where they live and when one is built is ``ajuste.training.cache``'s business.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

FORMAT = 1
MAGIC = b"AJPFXC01"
DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
_NUMPY_STORAGE = {torch.bfloat16: np.uint16, torch.float16: np.float16, torch.float32: np.float32}
_CHUNK = 16 * 2**20


class Entry:
    """Activations of one split at one cut, rows in the split's order."""

    def __init__(self, key: str, kind: str, data: Any, dtype: torch.dtype, row_shape: tuple[int, ...],
                 lengths: np.ndarray | None, *, path: Path | None = None, in_memory: bool = True,
                 seconds: float = 0.0) -> None:
        self.key = key
        self.seconds = seconds  # what computing it took: a run that finds it computed saved that much
        self.kind = kind  # "dense" | "ragged"
        self.data = data  # torch tensor (memory) or numpy memmap (disk), storage dtype
        self.dtype = dtype
        self.row_shape = row_shape
        self.lengths = lengths
        self.offsets = None if lengths is None else np.concatenate([[0], np.cumsum(lengths)])
        self.path = path
        self.in_memory = in_memory

    @property
    def n(self) -> int:
        return len(self.lengths) if self.lengths is not None else int(self.data.shape[0])

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.data.shape)) * torch.empty(0, dtype=self.dtype).element_size()

    def _rows(self, start: int, stop: int) -> torch.Tensor:
        return self._to_torch(self.data[start:stop])

    def _to_torch(self, block: Any) -> torch.Tensor:
        if isinstance(block, torch.Tensor):
            return block
        t = torch.from_numpy(np.ascontiguousarray(block))
        return t.view(torch.bfloat16) if self.dtype == torch.bfloat16 else t

    def batch(self, idx: list[int]) -> Any:
        """float32 activations of these rows: (B, *row_shape); ragged: {"hidden": (B, T, H) padded with
        zeros to the longest example rounded up to 8 (as the live batches), "attention_mask": (B, T)}."""
        if self.kind == "dense":
            if isinstance(self.data, torch.Tensor):
                return self.data[torch.as_tensor(idx, dtype=torch.long)].float()
            order = np.asarray(idx)
            return self._to_torch(self.data[order]).float()
        lens = [int(self.lengths[i]) for i in idx]
        longest = -(-max(lens) // 8) * 8
        hidden = torch.zeros((len(idx), longest, *self.row_shape), dtype=torch.float32)
        mask = torch.zeros((len(idx), longest), dtype=torch.long)
        for b, (i, n) in enumerate(zip(idx, lens)):
            start = int(self.offsets[i])
            hidden[b, :n] = self._rows(start, start + n).float()
            mask[b, :n] = 1
        return {"hidden": hidden, "attention_mask": mask}


def entry_path(directory: Path, key: str) -> Path:
    return Path(directory) / f"{key}.acts"


class Writer:
    """Sequential writer of one cache file (tmp name, renamed when complete)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        self.fh = open(self.tmp, "wb")
        self.fh.write(MAGIC)
        self.hash = hashlib.blake2b(digest_size=16)
        self.nbytes = 0

    def write(self, block: torch.Tensor) -> None:
        raw = block.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
        self.hash.update(raw)
        self.fh.write(raw)
        self.nbytes += len(raw)

    def finish(self, header: dict[str, Any]) -> None:
        header = dict(header, nbytes=self.nbytes, blake2b=self.hash.hexdigest())
        raw = json.dumps(header).encode()
        self.fh.write(raw)
        self.fh.write(struct.pack("<Q", len(raw)))
        self.fh.write(MAGIC)
        self.fh.flush()
        os.fsync(self.fh.fileno())
        self.fh.close()
        os.replace(self.tmp, self.path)

    def abort(self) -> None:
        with contextlib.suppress(OSError):
            self.fh.close()
        with contextlib.suppress(OSError):
            self.tmp.unlink()


class CorruptCache(Exception):
    pass


def read_header(path: Path, key: str) -> dict[str, Any]:
    """The header of a cache file, after checking its frame, key and size (not yet the checksum)."""
    size = path.stat().st_size
    if size < 2 * len(MAGIC) + 8:
        raise CorruptCache(f"{size} bytes, too short")
    with open(path, "rb") as fh:
        if fh.read(len(MAGIC)) != MAGIC:
            raise CorruptCache("bad magic at the start")
        fh.seek(size - len(MAGIC) - 8)
        (hlen,) = struct.unpack("<Q", fh.read(8))
        if fh.read(len(MAGIC)) != MAGIC:
            raise CorruptCache("bad magic at the end (truncated?)")
        if hlen > size:
            raise CorruptCache("bad header length")
        fh.seek(size - len(MAGIC) - 8 - hlen)
        try:
            header = json.loads(fh.read(hlen))
        except (json.JSONDecodeError, UnicodeDecodeError):
            raise CorruptCache("unreadable header") from None
    if header.get("format") != FORMAT or header.get("key") != key:
        raise CorruptCache("header of another entry")
    if len(MAGIC) + header["nbytes"] + hlen + 8 + len(MAGIC) != size:
        raise CorruptCache(f"size {size} does not match the header")
    return header


def load_file(path: Path, key: str, *, in_memory: bool) -> Entry:
    """Read and verify a cache file: the checksum covers every data byte, so any damage is caught."""
    header = read_header(path, key)
    dtype = DTYPES[header["dtype"]]
    np_dtype = _NUMPY_STORAGE[dtype]
    shape = tuple(header["shape"])
    h = hashlib.blake2b(digest_size=16)
    buf = bytearray(header["nbytes"]) if in_memory else None
    with open(path, "rb") as fh:
        fh.seek(len(MAGIC))
        done = 0
        while done < header["nbytes"]:
            chunk = fh.read(min(_CHUNK, header["nbytes"] - done))
            if not chunk:
                raise CorruptCache("data ends early")
            h.update(chunk)
            if buf is not None:
                buf[done:done + len(chunk)] = chunk
            done += len(chunk)
    if h.hexdigest() != header["blake2b"]:
        raise CorruptCache("checksum mismatch")
    if buf is not None:
        arr = np.frombuffer(buf, dtype=np_dtype).reshape(shape)
        t = torch.from_numpy(arr)
        data: Any = t.view(torch.bfloat16) if dtype == torch.bfloat16 else t
    else:
        data = np.memmap(path, dtype=np_dtype, mode="r", offset=len(MAGIC), shape=shape)
    lengths = np.asarray(header["lengths"], dtype=np.int64) if header["kind"] == "ragged" else None
    row_shape = tuple(header["row_shape"])
    return Entry(key, header["kind"], data, dtype, row_shape, lengths, path=path, in_memory=in_memory,
                 seconds=float(header.get("seconds", 0.0)))
