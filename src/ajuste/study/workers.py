"""Where a study's cells train: in this process one after the other, or in worker processes side by side.

On a CPU, one EfficientNet-Lite0 cell at 48 px trains only 1.26× faster on 2 threads than on 1 (2-core
AVX2 machine, scratch on digits: 13.1 vs 16.5 s per epoch): the per-layer work is too small to split. Two
cells with one thread each barely slow each other (16–17 s per epoch each), so `ajuste compare digits` took
7 min 28 s side by side against 11 min 5 s one cell at a time. Both executors have the same calls
(``submit``, ``wait``, ``interrupt``, ``close``), so the study loop (budget, records, resume) is written once.

Workers are spawned (not forked: torch's OpenMP pool does not survive a fork), load the data once, train
one cell at a time with ``threads`` intra-op threads, and die with the study process (``PR_SET_PDEATHSIG``
on Linux, a watchdog elsewhere): a killed study never leaves a worker writing into a run directory that the
re-run resumes. A cell keeps its thread count from start to end: float sums split over another number of
threads round differently, and the difference grows over epochs (digits, full fine-tuning, 3 epochs:
validation accuracy 0.919 at one thread, 0.907 at two; the same count repeats bit for bit), so a count that
changed when a neighbouring cell happened to finish made a study's numbers depend on timing. With
``share_idle`` the cores of idle workers go to the cells still running (a worker whose share changes gets
SIGUSR1 and sets its torch threads between two ops): the last cells finish sooner, at that price. Workers
live in their own process group, so a terminal's Ctrl-C reaches the study process only, which sets a stop
flag for each busy worker: its cell finishes the epoch, checkpoints and reports itself interrupted (a cell
not yet begun does not start); a second Ctrl-C kills the workers (their last checkpoints stay). SIGTERM
(`docker stop`, a scheduler) does not wait for the epoch: the study sends it on to its busy workers, which
stop at once and record their runs as interrupted.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ajuste.data.pipeline import available_memory
from ajuste.errors import AjusteError, raise_terminated

# a default guess of one cell's resident memory, to cap the automatic number of workers
CELL_MEMORY_GUESS = 3 * 2**30


@dataclass
class Job:
    key: str
    cfg: Any
    run_dir: Path


def usable_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def gpu_count() -> int:
    """CUDA GPUs this process may use (0 without CUDA)."""
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def auto_workers(pending: int, *, gpus: int | None = None) -> int:
    """On a GPU machine one cell per GPU (each worker sees one: `worker_gpus`); on a CPU one cell per core,
    capped by the cells left and by memory."""
    if gpus is None:
        gpus = gpu_count()
    if gpus:
        return max(1, min(gpus, pending))
    if pending < 2:
        return 1
    n = min(usable_cores(), pending)
    mem = available_memory()
    if mem is not None:
        n = min(n, max(1, mem // CELL_MEMORY_GUESS))
    return max(1, n)


class InlineCells:
    """One cell at a time in this process (cells share frozen activations in memory, too)."""

    def __init__(self, run: Callable[[Job], dict], *, threads: int | None = None) -> None:
        self._run = run
        self._job: Job | None = None
        self.size = 1
        self._threads = threads  # per cell (a cell's train.threads still wins in fit); None: keep this process's

    def free(self) -> int:
        return 0 if self._job is not None else 1

    def running(self) -> list[str]:
        return [self._job.key] if self._job is not None else []

    def submit(self, job: Job) -> None:
        self._job = job

    def wait(self) -> list[tuple[Job, dict]]:
        job, self._job = self._job, None
        if job is None:
            return []
        if self._threads is None:
            return [(job, self._run(job))]
        import torch

        before = torch.get_num_threads()
        torch.set_num_threads(self._threads)
        try:
            return [(job, self._run(job))]
        finally:
            torch.set_num_threads(before)

    def interrupt(self) -> None:
        pass  # the cell runs in this process: the SIGINT already reached its training loop

    def terminate(self) -> None:
        pass  # the cell runs in this process: SIGTERM's exception already went through its run

    def close(self) -> None:
        pass


def worker_gpus(size: int, gpus: int, visible: str | None) -> list[str | None]:
    """The ``CUDA_VISIBLE_DEVICES`` of each of ``size`` workers: one GPU each, round robin, taken from the GPUs
    this process sees (``visible``: its own ``CUDA_VISIBLE_DEVICES``, or None for all ``gpus``). A worker then
    sees its GPU as cuda:0, so its cells' ``train.device: auto`` lands there and their configs (and run
    directories) do not name a GPU: a resume on another GPU is the same run. No GPU: None for each."""
    if not gpus:
        return [None] * size
    ids = [v.strip() for v in visible.split(",") if v.strip()] if visible else [str(i) for i in range(gpus)]
    ids = ids[:gpus] or [str(i) for i in range(gpus)]
    return [ids[i % len(ids)] for i in range(size)]


class WorkerCells:
    """``size`` spawned worker processes; ``wait`` returns the cells that finished (at least one). On a GPU
    machine each worker is given one GPU (`worker_gpus`)."""

    def __init__(self, size: int, *, init: dict[str, Any], threads: int, share_idle: bool = False) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")
        self.size = size
        self.share_idle = share_idle
        self.cores = max(threads * size, usable_cores())
        self._procs: list[Any] = []
        self._conns: list[Any] = []
        self._busy: dict[int, Job] = {}
        # threads each worker may use now; with share_idle the cores are shared out among the busy ones, so
        # the study's last cells do not run on one core each while the others idle
        self._threads = ctx.Array("i", [threads] * size, lock=False)
        self._ready = ctx.Array("b", size, lock=False)  # set once a worker handles SIGUSR1 (its default: exit)
        # set by the study on Ctrl-C, read by the worker after each epoch: a flag cannot be lost the way a
        # signal can (one that arrives while the worker still starts up, before its cell begins)
        self._stop = ctx.Array("b", size, lock=False)
        self.gpus = worker_gpus(size, gpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
        for i in range(size):
            parent, child = ctx.Pipe()
            p = ctx.Process(target=worker_main, daemon=True,
                            args=(child, {**init, "gpu": self.gpus[i]}, (self._threads, self._ready, self._stop), i,
                                  os.getpid()))
            p.start()
            child.close()
            self._procs.append(p)
            self._conns.append(parent)

    def free(self) -> int:
        return self.size - len(self._busy)

    def running(self) -> list[str]:
        """The cells in progress, each with its GPU when there are GPUs (what the progress bar shows)."""
        return [j.key if self.gpus[i] is None else f"{j.key} (GPU {self.gpus[i]})" for i, j in self._busy.items()]

    def submit(self, job: Job) -> None:
        i = next(i for i in range(self.size) if i not in self._busy)
        self._busy[i] = job
        self._share_cores(starting=i)
        self._conns[i].send(job)

    def _share_cores(self, starting: int | None = None) -> None:
        """Give each busy worker cores/busy threads; a running one whose share changed is told by SIGUSR1."""
        if not self.share_idle:
            return
        share = max(1, self.cores // max(1, len(self._busy)))
        for i in self._busy:
            if self._threads[i] != share:
                self._threads[i] = share
                if i != starting and self._ready[i]:  # one not ready yet reads its share when its cell starts
                    try:
                        os.kill(self._procs[i].pid, signal.SIGUSR1)
                    except ProcessLookupError:
                        pass

    def wait(self) -> list[tuple[Job, dict]]:
        from multiprocessing.connection import wait

        by_conn = {id(self._conns[i]): i for i in self._busy}
        ready = wait([self._conns[i] for i in self._busy])
        out = []
        for conn in ready:
            i = by_conn[id(conn)]
            job = self._busy.pop(i)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                code = self._procs[i].exitcode
                raise AjusteError(f"the worker training cell {job.key} died (exit code {code}); its last "
                                  f"checkpoint is kept: re-run the same command to resume") from None
            self._share_cores()
            if kind == "interrupted":
                raise KeyboardInterrupt
            if kind == "error":
                raise _rebuild(job, *payload)
            out.append((job, payload))
        return out

    def interrupt(self) -> None:
        """Each running cell stops after its current epoch, checkpointed; a cell not yet begun does not start."""
        for i in self._busy:
            self._stop[i] = 1

    def terminate(self, grace: float = 10.0) -> None:
        """SIGTERM reached the study: each busy worker gets SIGTERM too and stops at once, its run directory
        saying "interrupted" (PR_SET_PDEATHSIG would kill it mid-write of nothing, but leave "running").
        Waits up to ``grace`` seconds for their answers; a cell that completed meanwhile is recorded on resume."""
        from multiprocessing.connection import wait

        for i in self._busy:
            try:
                os.kill(self._procs[i].pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + grace
        while self._busy and time.monotonic() < deadline:
            by_conn = {id(self._conns[i]): i for i in self._busy}
            for conn in wait([self._conns[i] for i in self._busy], timeout=max(0.0, deadline - time.monotonic())):
                self._busy.pop(by_conn[id(conn)])
                try:
                    conn.recv()
                except (EOFError, OSError):
                    pass

    def close(self) -> None:
        for i, conn in enumerate(self._conns):
            if i not in self._busy:
                try:
                    conn.send(None)
                except (BrokenPipeError, OSError):
                    pass
        deadline = time.monotonic() + 10
        for i, p in enumerate(self._procs):
            if i in self._busy:  # closing with a cell still running (an error elsewhere): its checkpoint stays
                p.kill()
            p.join(max(0.0, deadline - time.monotonic()))
            if p.is_alive():
                p.kill()
                p.join()
        for conn in self._conns:
            conn.close()


# ------------------------------------------------------------------------------------------ in the worker

def _die_with_parent(parent_pid: int) -> None:
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        if libc.prctl(1, signal.SIGKILL, 0, 0, 0) == 0:  # PR_SET_PDEATHSIG
            if os.getppid() != parent_pid:  # the parent died before the call
                os._exit(1)
            return
    except (OSError, AttributeError):
        pass

    def watch() -> None:
        while os.getppid() == parent_pid:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()


def worker_main(conn: Any, init: dict[str, Any], shares: tuple[Any, Any, Any], index: int,
                parent_pid: int) -> None:
    if init.get("gpu") is not None:  # before CUDA starts in this process: it reads this once
        os.environ["CUDA_VISIBLE_DEVICES"] = init["gpu"]
    _die_with_parent(parent_pid)
    os.setpgrp()  # a terminal's Ctrl-C goes to the study process, which tells each busy worker to stop
    threads, ready, stop = shares

    def on_sigint(*_: Any) -> None:  # a SIGINT sent to the worker itself: the same as the study's stop
        stop[index] = 1

    signal.signal(signal.SIGINT, on_sigint)
    signal.signal(signal.SIGTERM, raise_terminated)  # stop now: the run records "interrupted" on its way out
    import torch

    fixed = {"threads": False}

    def take_share(*_: Any) -> None:  # between two torch calls: never inside an op
        if not fixed["threads"]:
            torch.set_num_threads(max(1, threads[index]))

    take_share()
    signal.signal(signal.SIGUSR1, take_share)
    ready[index] = 1
    try:
        _serve(conn, init, index, stop, fixed, take_share)
    except KeyboardInterrupt:  # SIGTERM while loading the data or waiting for a cell: nothing to record
        return


def _serve(conn: Any, init: dict[str, Any], index: int, stop: Any, fixed: dict[str, bool],
           take_share: Callable[[], None]) -> None:
    run_cell = init["make_runner"](init)
    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        fixed["threads"] = bool(getattr(job.cfg.train, "threads", None))  # the user chose: leave it
        take_share()
        try:
            conn.send(("ok", run_cell(job, lambda: bool(stop[index]))))
        except KeyboardInterrupt:
            conn.send(("interrupted", None))
        except BaseException as exc:  # noqa: BLE001 — every failure goes back to the study process
            conn.send(("error", (type(exc).__module__, type(exc).__qualname__, str(exc),
                                 isinstance(exc, AjusteError))))


def _rebuild(job: Job, module: str, name: str, message: str, ajuste_error: bool) -> BaseException:
    """The worker's exception as the study process raises it: ajuste's own errors keep their class (the
    CLI prints them as one line); anything else is a bug, reported with the cell it happened in."""
    if ajuste_error:
        import importlib

        try:
            cls = getattr(importlib.import_module(module), name)
            return cls(message)
        except Exception:  # noqa: BLE001 — a class that cannot be rebuilt from its message
            return AjusteError(message)
    return RuntimeError(f"{name}: {message} (in the worker training cell {job.key})")
