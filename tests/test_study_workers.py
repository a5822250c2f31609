"""Cells side by side in worker processes: same results as one at a time, Ctrl-C checkpoints every running
cell, and a killed study takes its workers with it (none left writing into a run directory)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ajuste.io import read_jsonl
from ajuste.study.runner import run_study
from ajuste.study.spec import StudySpec
from ajuste.study.workers import auto_workers

TINY = ["model.pretrained=false", "data.image_size=32", "train.epochs=1", "strategy.head_epochs=1",
        "data.batch_size=64", "train.min_steps=0", "train.threads=1"]
CLI = ["digits", "--model", "timm/test_efficientnet", "--strategies", "two-stage,scratch",
       "--fractions", "0.5", "--no-similarity", "--workers", "2", "--quiet",
       "--set", "model.pretrained=false", "--set", "data.image_size=32", "--set", "train.threads=1",
       "--set", "train.epochs=5", "--set", "train.patience=10",
       "--set", "strategy.head_epochs=2"]


def _spec(**kw) -> StudySpec:
    base = dict(source="digits", model="timm/test_efficientnet", strategies=["linear-probe", "scratch"],
                fractions=[0.1, 0.3], seeds=1, sets=list(TINY))
    base.update(kw)
    return StudySpec(**base)


def test_cells_side_by_side_give_the_results_of_one_at_a_time(tmp_path):
    one = run_study(spec=_spec(), study_dir=tmp_path / "one", progress=False, similarity=False, workers=1)
    two = run_study(spec=_spec(), study_dir=tmp_path / "two", progress=False, similarity=False, workers=2)
    a = {r["cell"]: r for r in one.records}
    b = {r["cell"]: r for r in two.records}
    assert sorted(a) == sorted(b) == sorted(c.key for c in _spec().cells())
    for k in a:  # one thread per cell on both sides: the same arithmetic, in another process
        assert a[k]["test_accuracy"] == b[k]["test_accuracy"], k
        assert [h["train_loss"] for h in a[k]["history"]] == pytest.approx([h["train_loss"] for h in b[k]["history"]])
    assert sorted(r["cell"] for r in read_jsonl(tmp_path / "two" / "results.jsonl")) == sorted(b)


def test_a_worker_error_reaches_the_study_as_one_error(tmp_path):
    from ajuste.errors import AjusteError

    spec = _spec(source=str(_texts(tmp_path)))
    with pytest.raises(AjusteError, match="image model|text"):
        run_study(spec=spec, study_dir=tmp_path / "s", progress=False, similarity=False, workers=2)


def _texts(tmp_path: Path) -> Path:
    p = tmp_path / "texts.csv"
    rows = ["text,label"] + [f"example number {i} about {'cats' if i % 2 else 'dogs'},{i % 2}" for i in range(80)]
    p.write_text("\n".join(rows) + "\n")
    return p


def test_auto_workers_one_per_core_on_a_cpu_one_per_gpu_on_a_gpu_machine():
    assert auto_workers(10, gpus=1) == 1
    assert auto_workers(10, gpus=4) == 4  # one cell per GPU
    assert auto_workers(3, gpus=4) == 3
    assert auto_workers(1, gpus=0) == 1
    assert 1 <= auto_workers(10, gpus=0) <= max(1, len(os.sched_getaffinity(0)))


# ----------------------------------------------------------------------------------------- real processes

def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _children(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, ValueError, IndexError):
                pass
    return out


def _alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def _all_gone(pids: list[int], timeout: float = 5.0) -> bool:
    deadline = time.monotonic() + timeout
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    return not any(_alive(p) for p in pids)


def _foreground_sigint() -> None:
    """The study process gets Ctrl-C as a terminal's foreground job does, even when the test run itself was
    started in the background by a non-interactive shell (which ignores SIGINT there, and a child inherits
    that: Python then never raises KeyboardInterrupt)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _start(out: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ajuste", "compare", *CLI, "--out", str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=_env(), start_new_session=True,
                            preexec_fn=_foreground_sigint)


def _wait_for_epochs(proc: subprocess.Popen, out: Path, n_runs: int, *, more_than: int = 0,
                     timeout: float = 240) -> None:
    """Until ``n_runs`` cells have each finished an epoch (both workers are training) and more than
    ``more_than`` epochs are recorded in all."""
    deadline = time.monotonic() + timeout
    while True:
        runs = [read_jsonl(p) for p in (out / "runs").glob("*/metrics.jsonl")]
        if sum(1 for r in runs if r) >= n_runs and sum(len(r) for r in runs) > more_than:
            return
        assert proc.poll() is None, "finished early: " + proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "the cells never started"
        time.sleep(0.1)


def _finish(out: Path) -> None:
    proc = subprocess.run([sys.executable, "-m", "ajuste", "compare", *CLI, "--out", str(out)],
                          capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc")
def test_ctrl_c_checkpoints_the_running_cells_a_kill_takes_the_workers_and_the_rerun_completes(tmp_path):
    out = tmp_path / "study"
    # 0. Ctrl-C while the workers still start up (the cells are sent, not begun): nothing runs to the end.
    proc = _start(out)
    deadline = time.monotonic() + 60
    while len(_children(proc.pid)) < 3 and time.monotonic() < deadline:  # 2 workers + the resource tracker
        time.sleep(0.05)
    time.sleep(1.0)
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err.decode()[-2000:]
    assert not list(out.glob("runs/*/summary.json")), "a cell ran to the end after Ctrl-C"

    # 1. Ctrl-C (SIGINT to the study process): every running cell finishes its epoch and checkpoints.
    # (Step 0's cells may have recorded an epoch before its Ctrl-C landed: wait for this process's own.)
    earlier = sum(len(read_jsonl(p)) for p in (out / "runs").glob("*/metrics.jsonl"))
    proc = _start(out)
    _wait_for_epochs(proc, out, 2, more_than=earlier)
    running = [p.parent for p in (out / "runs").glob("*/metrics.jsonl") if not (p.parent / "summary.json").exists()]
    workers = _children(proc.pid)
    assert len(workers) >= 2, "expected the cells in worker processes"
    os.kill(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    err = err.decode()
    assert proc.returncode == 130, err[-2000:]
    assert "Traceback" not in err and "interrupted" in err
    assert _all_gone(workers)
    epochs_before = {}
    for run in running:
        if not (run / "summary.json").exists():
            assert json.loads((run / "status.json").read_text())["status"] == "interrupted", run.name
            assert (run / "checkpoint" / "state.json").exists(), run.name
            epochs_before[run.name] = len(read_jsonl(run / "metrics.jsonl"))

    # 2. SIGKILL of the study process alone (its workers are in their own process group): they die with it.
    proc = _start(out)
    _wait_for_epochs(proc, out, 2, more_than=sum(epochs_before.values()))
    workers = _children(proc.pid)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert _all_gone(workers), "a worker outlived the study process"

    # 3. The same command again: every cell once, resumed from its checkpoint (no finished epoch redone).
    _finish(out)
    cells = [r["cell"] for r in read_jsonl(out / "results.jsonl")]
    assert sorted(cells) == sorted(set(cells)) and len(cells) == 2
    for name, n in epochs_before.items():
        hist = read_jsonl(out / "runs" / name / "metrics.jsonl")
        assert [h["epoch"] for h in hist] == list(range(len(hist))) and len(hist) >= n


def _sampling_runner(init):
    """In a worker: a 'long' job samples its torch thread count for a while; a 'short' one ends at once."""
    import torch

    def run(job, stop):
        started = job.run_dir.parent / "long-started"
        if job.key == "long":
            started.touch()
        else:  # end only once the long job samples: on a loaded machine its worker may start late
            t0 = time.monotonic()
            while not started.exists() and time.monotonic() - t0 < 30:
                time.sleep(0.02)
        seen, t0 = set(), time.monotonic()
        while time.monotonic() - t0 < (4.0 if job.key == "long" else 0.3):
            seen.add(torch.get_num_threads())
            time.sleep(0.02)
        return {"status": "complete", "threads": sorted(seen)}

    return run


def _long_and_short(tmp_path: Path, *, share_idle: bool) -> dict[str, dict]:
    from ajuste.config import RunConfig
    from ajuste.study.workers import Job, WorkerCells

    cells = WorkerCells(2, init={"make_runner": _sampling_runner}, threads=1, share_idle=share_idle)
    try:
        time.sleep(3)  # both workers ready (SIGUSR1 handled)
        cells.submit(Job("long", RunConfig(), tmp_path / "long"))
        cells.submit(Job("short", RunConfig(), tmp_path / "short"))
        got = {}
        while cells.running():
            got.update({job.key: res for job, res in cells.wait()})
    finally:
        cells.close()
    return got


def test_the_cores_of_an_idle_worker_go_to_the_cells_still_running_when_asked(tmp_path):
    got = _long_and_short(tmp_path, share_idle=True)
    assert got["short"]["threads"] == [1]
    assert got["long"]["threads"][0] == 1 and got["long"]["threads"][-1] >= 2  # 1 while both ran, then all


def test_by_default_a_cell_keeps_its_thread_count_when_its_neighbour_finishes(tmp_path):
    got = _long_and_short(tmp_path, share_idle=False)
    assert got["short"]["threads"] == [1] and got["long"]["threads"] == [1]


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two cores to run two cells at once")
def test_a_cell_trains_on_the_same_thread_count_however_the_study_runs_and_resumes(tmp_path):
    """Float sums split over another number of threads round differently: a cell's numbers repeat only at
    the same count, so the count must depend on the study's width, not on timing or on the cells left."""
    sets = [s for s in TINY if not s.startswith("train.threads")]
    spec = _spec(strategies=["linear-probe", "scratch"], fractions=[0.1, 0.3], sets=sets)  # 4 cells
    out = tmp_path / "s"
    first = run_study(spec=spec, study_dir=out, progress=False, similarity=False, workers=2)
    want = [len(os.sched_getaffinity(0)) // 2]
    assert {r["cell"]: r["threads"] for r in first.records} == {c.key: want for c in spec.cells()}
    # Drop the longest-running cell's record and run: as if the study had been stopped before it was recorded.
    last = max(first.records, key=lambda r: r["train_seconds"])
    rows = [r for r in read_jsonl(out / "results.jsonl") if r["cell"] != last["cell"]]
    (out / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    import shutil

    shutil.rmtree(out / "runs" / last["cell"])
    again = run_study(spec=spec, study_dir=out, progress=False, similarity=False, workers=2)
    redone = {r["cell"]: r for r in again.records}[last["cell"]]
    assert redone["threads"] == want  # alone in this process, yet on the study's count
    assert redone["test_accuracy"] == last["test_accuracy"]
    assert [h["train_loss"] for h in redone["history"]] == [h["train_loss"] for h in last["history"]]


def test_each_worker_sees_one_gpu_of_those_this_process_sees():
    from ajuste.study.workers import worker_gpus

    assert worker_gpus(2, 0, None) == [None, None]  # a CPU machine: nothing set
    assert worker_gpus(4, 4, None) == ["0", "1", "2", "3"]
    assert worker_gpus(3, 2, "5,7") == ["5", "7", "5"]  # the user's CUDA_VISIBLE_DEVICES is respected
    assert worker_gpus(2, 2, "GPU-aa11, GPU-bb22") == ["GPU-aa11", "GPU-bb22"]  # UUIDs too
