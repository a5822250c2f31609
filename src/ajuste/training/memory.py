"""A run's memory: the peak it reached (summary.json) and, when an allocation failed, the one line of advice
that says which batch size to try.

Light on purpose (no torch): the CLI turns any unexpected error into a line through ``memory_error_message``.
"""

from __future__ import annotations

import os
import re
import threading
from typing import Any


class PeakMemory:
    """Peak resident memory of this process during a block (sampled; ru_maxrss is process-lifetime)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self.rss())


# What an allocation failure says: torch's CPU allocator, glibc via C++ (bad_alloc), CUDA/MPS, Windows.
_OOM_MARKERS = ("can't allocate memory", "Cannot allocate memory", "not enough memory", "out of memory",
                "std::bad_alloc", "OutOfMemoryError")


def memory_error_message(exc: BaseException, *, batch_size: int | None) -> str | None:
    """One line with the batch size to try when ``exc`` (or what caused it) is an allocation failure; else None.

    The run-level place where "the batch did not fit" becomes advice: the training loop raises whatever torch
    raised (a RuntimeError from the CPU allocator, torch.OutOfMemoryError on a GPU, MemoryError from numpy)."""
    e: BaseException | None = exc
    for _ in range(10):
        if e is None:
            return None
        text = str(e)
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
                isinstance(e, RuntimeError) and any(m in text for m in _OOM_MARKERS)):
            # torch's CPU message: "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate
            # memory: you tried to allocate 25769803776 bytes. Error code 12 (Cannot allocate memory)"
            m = re.search(r"allocate (\d+) bytes", text)
            if m:
                first = f"an allocation of {int(m.group(1)) / 2**30:.1f} GiB failed"
            else:
                first = " ".join(text.split()).split("] . ", 1)[-1][:100] or type(e).__name__
            if batch_size and batch_size > 1:
                return (f"out of memory at batch size {batch_size} ({first}); try a smaller batch: "
                        f"--set data.batch_size={batch_size // 2}")
            return (f"out of memory ({first}); lower data.batch_size (e.g. --set data.batch_size=8), "
                    "data.image_size or data.max_length")
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None
