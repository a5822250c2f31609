"""One writer per output directory: a run, a study or a search is written by one process at a time.

Two `ajuste train` processes started with the same ``--out`` used to both succeed and leave a mixed run (the
config of one, the summary of the other, every epoch twice in metrics.jsonl). Each writer now holds an
exclusive lock on ``<dir>/.ajuste.lock`` for as long as it writes there. The lock is ``filelock``'s
``flock(2)``: the kernel drops it when its process dies, kill -9 included, so a lock left by a killed process
never blocks the next run. The holder writes its PID into the file once it holds the lock, so that a second
process can say who is writing.
"""

from __future__ import annotations

import contextlib
import os
import shutil
from pathlib import Path
from typing import Iterator

from ajuste.errors import AjusteError

LOCK_NAME = ".ajuste.lock"
# (pid, resolved directory) -> depth of this process's holds; the pid keeps a forked child from believing it
# holds what its parent holds.
_HELD: dict[tuple[int, str], int] = {}


class DirectoryBusy(AjusteError):
    """Another process holds the directory's lock."""


def _write_pid(fd: int) -> None:
    # Called by filelock with the lock file's descriptor, right after the lock is taken: nobody else can be
    # writing the file now, and a waiter reads it only to name the holder.
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)


def holder(path: Path) -> int | None:
    """The PID written by the process that last took the lock of ``path``; None when unknown."""
    try:
        return int((Path(path) / LOCK_NAME).read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


@contextlib.contextmanager
def hold(path: str | Path, *, what: str = "directory", wait: float = 0.0, create: bool = True,
         remove_if_unused: bool = False) -> Iterator[Path]:
    """Hold ``path``'s lock (creating the directory) for the body; ``wait`` seconds before giving up.

    A second holder gets `DirectoryBusy`: one line naming the directory and the holder's PID (exit 2). Within
    one process a hold is re-entrant (`ajuste compare` holds its study while `run_study` holds it again): a
    second ``flock`` from the same process would come from another open file and be refused as a stranger's.
    ``remove_if_unused``: a directory this call created and the body left empty (it stopped before writing:
    bad data, a wrong setting) is removed again, lock file included, instead of being left behind.
    ``create=False``: a directory that does not exist is not made; the body runs unlocked (it has nothing of
    that directory to protect, and says so itself)."""
    from filelock import FileLock, Timeout

    path = Path(path)
    if path.exists() and not path.is_dir():
        raise AjusteError(f"--out {path} exists and is not a directory; pick another --out")
    if not create and not path.is_dir():
        yield path
        return
    key = (os.getpid(), str(path.resolve()))
    if key in _HELD:
        _HELD[key] += 1
        try:
            yield path
        finally:
            _HELD[key] -= 1
        return
    made = [p for p in (path, *path.parents) if not p.exists()]  # what mkdir creates, innermost first
    path.mkdir(parents=True, exist_ok=True)
    new_lock = not (path / LOCK_NAME).exists()
    lock = FileLock(path / LOCK_NAME, timeout=wait, thread_local=False, on_acquired=_write_pid)
    try:
        lock.acquire()
    except Timeout:
        pid = holder(path)
        who = f"process {pid}" if pid is not None else "another process"
        raise DirectoryBusy(f"{path} is in use: {who} is writing this {what} now; wait for it to finish (or stop "
                            f"it), or pick another --out") from None
    except OSError as exc:  # a full disk, a read-only folder (after Timeout: a TimeoutError is an OSError too)
        # the lock file is the first write: name it, as every other write does
        if exc.filename is None:
            raise OSError(exc.errno, exc.strerror, str(path / LOCK_NAME)) from exc
        raise
    _HELD[key] = 1
    before = {p.name for p in entries(path)}
    try:
        yield path
    finally:
        del _HELD[key]
        # Nothing written (a refusal: the folder holds something else, another config, bad data): leave the
        # folder as it was found, without a lock file, and without the folders this call made.
        untouched = new_lock and {p.name for p in entries(path)} == before
        if untouched:  # unlinked while held: a waiter that opened the old file notices and retries (filelock)
            (path / LOCK_NAME).unlink(missing_ok=True)
        lock.release()
        if untouched and made and remove_if_unused:
            with contextlib.suppress(OSError):  # stops at the first folder something else was put into
                for folder in made:
                    folder.rmdir()


def entries(path: Path) -> list[Path]:
    """What ``path`` holds, less its lock file (a directory holding only a lock is empty)."""
    return [p for p in Path(path).iterdir() if p.name != LOCK_NAME]


def clear(path: Path) -> None:
    """Remove everything in ``path`` but the lock file, which its holder still holds (``--overwrite``)."""
    for p in entries(path):
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p)
        else:
            p.unlink()
