"""`ajuste tune -j N`: N trials at once on this machine, one worker process each, on one GPU each when there are
GPUs (``-j 0``: one per GPU).

The workers are `ajuste tune` processes given the same command with the study's storage named explicitly
(``--storage``: the default SQLite file in ``--out`` when none was given), so they share one study exactly as
workers started by hand do (docs/tune.md): the trial budget is the study's total, claimed under the study lock,
and each worker's sampler draws from its own seed. Each worker sees one GPU (``CUDA_VISIBLE_DEVICES``), as the
study's cell workers do (`ajuste.study.workers.worker_gpus`), or on a CPU a share of the cores. Their trial lines
are printed as they come, each prefixed with the GPU (or worker) that ran it. Ctrl-C reaches every worker (the
same process group): each puts its running trial back in the queue, and re-running the command continues.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from typing import Any

from rich.markup import escape

from ajuste.study import workers  # the module: tests substitute its gpu_count

WORKER_ENV = "AJUSTE_TUNE_WORKER"  # set in a worker: it prints its trials and leaves the summary to the parent


def worker_label() -> str | None:
    return os.environ.get(WORKER_ENV)


def run_workers(argv: list[str], jobs: int, *, console: Any) -> int:
    """Start ``jobs`` workers on ``argv`` (the `ajuste tune` arguments, with --storage, --study-name and --out);
    print their lines, labelled; return the first non-zero exit status (0 when all finished)."""
    gpus = workers.worker_gpus(jobs, workers.gpu_count(), os.environ.get("CUDA_VISIBLE_DEVICES"))
    threads = max(1, workers.usable_cores() // jobs)
    procs, readers = [], []
    lock = threading.Lock()
    for i, gpu in enumerate(gpus):
        label = f"gpu {gpu}" if gpu is not None else f"worker {i + 1}"
        env = {**os.environ, WORKER_ENV: label}
        if gpu is not None:
            env["CUDA_VISIBLE_DEVICES"] = gpu
        else:
            env["OMP_NUM_THREADS"] = str(threads)  # the cores shared out, as compare's CPU workers do
        proc = subprocess.Popen([sys.executable, "-m", "ajuste", "tune", *argv, "--jobs", "1"], env=env,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
        procs.append(proc)
        readers.append(threading.Thread(target=_relay, args=(proc, label, console, lock), daemon=True))
        readers[-1].start()
    console.print(f"{jobs} workers share the study: " + ", ".join(
        f"gpu {g}" if g is not None else f"worker {i + 1}" for i, g in enumerate(gpus))
        + ("" if gpus[0] is not None else f" ({threads} thread{'s' * (threads != 1)} each)"), highlight=False)
    try:
        codes = [p.wait() for p in procs]
    except KeyboardInterrupt:  # the workers got the same Ctrl-C: let them re-queue their trials and stop
        for p in procs:
            try:
                p.wait(timeout=60)
            except subprocess.TimeoutExpired:
                p.kill()
        raise
    finally:
        for r in readers:
            r.join(timeout=5)
    return next((c for c in codes if c != 0), 0)


def _relay(proc: subprocess.Popen, label: str, console: Any, lock: threading.Lock) -> None:
    assert proc.stdout is not None
    for line in proc.stdout:
        line = line.rstrip("\n")
        if line.strip():
            with lock:
                console.print(f"[dim]\\[{escape(label)}][/] {escape(line)}", highlight=False)
