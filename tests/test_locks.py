"""One writer per run, study and search directory (issue 33, item 1).

A second process given the same ``--out`` is refused in one line naming the holder's PID; a lock left by a
killed process blocks nothing. The holders here are real processes: a lock is only worth something between
processes."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ajuste import locks
from test_cli import FAST, TINY_IMAGE, one_error_line, run_cli, write_image_folder

HOLD = ("import sys, time\n"
        "from ajuste import locks\n"
        "with locks.hold(sys.argv[1]):\n"
        "    print('held', flush=True)\n"
        "    time.sleep(120)\n")


@pytest.fixture(scope="module")
def images(tmp_path_factory) -> Path:
    return write_image_folder(tmp_path_factory.mktemp("imgs") / "shapes", {"cat": 8, "dog": 8})


@pytest.fixture()
def holder():
    """Start a process that holds a directory's lock; yields a function dir -> Popen (killed at the end)."""
    procs: list[subprocess.Popen] = []

    def start(path: Path) -> subprocess.Popen:
        p = subprocess.Popen([sys.executable, "-c", HOLD, str(path)], stdout=subprocess.PIPE, text=True)
        procs.append(p)
        assert p.stdout.readline().strip() == "held"
        return p

    yield start
    for p in procs:
        p.kill()
        p.wait()


def _no_files_but_the_lock(path: Path) -> None:
    assert [p.name for p in path.iterdir()] == [locks.LOCK_NAME]


def test_a_second_writer_is_refused_naming_the_holder_and_a_killed_holder_blocks_nothing(images, tmp_path,
                                                                                           holder):
    out = tmp_path / "run"
    p = holder(out)
    args = ["train", images, *TINY_IMAGE, *FAST, "-s", "linear-probe", "-q", "--out", out]
    rc, _, err = run_cli(args)
    line = one_error_line(err)
    assert rc == 2
    assert f"process {p.pid}" in line and str(out) in line, line
    _no_files_but_the_lock(out)  # refused before anything was read or written

    p.send_signal(signal.SIGKILL)  # the kernel drops a dead process's flock: nothing to clean up by hand
    p.wait()
    rc, stdout, err = run_cli(args)
    assert rc == 0, stdout + err
    assert (out / "summary.json").is_file()
    assert locks.holder(out) == os.getpid()  # the lock file names the last holder


def test_two_real_train_processes_into_one_out_one_is_refused(images, tmp_path):
    """The reproduction of the issue: two `ajuste train` at once, other seeds, same --out."""
    out = tmp_path / "run"
    base = [sys.executable, "-m", "ajuste", "train", str(images), *TINY_IMAGE, *FAST, "-s", "linear-probe", "-q",
            "--out", str(out)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen([*base, "--seed", str(s)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env) for s in (0, 7)]
    results = [(p.wait(timeout=300), p.stdout.read(), p.stderr.read()) for p in procs]
    codes = sorted(rc for rc, _, _ in results)
    assert codes == [0, 2], results
    loser = next(err for rc, _, err in results if rc == 2)
    assert "is in use" in one_error_line(loser)
    winner_seed = json.loads((out / "summary.json").read_text())["seed"]
    import yaml

    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["seed"] == winner_seed
    epochs = [json.loads(line)["epoch"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert len(epochs) == len(set(epochs)), epochs  # one writer: no epoch twice


def test_a_study_directory_is_locked(tmp_path, holder):
    out = tmp_path / "study"
    p = holder(out)
    rc, _, err = run_cli(["compare", "digits", "--model", "timm/test_efficientnet", "--strategies",
                          "linear-probe", "--fractions", "0.1", "--no-similarity", "-q", "--out", out])
    assert rc == 2 and f"process {p.pid}" in one_error_line(err)
    _no_files_but_the_lock(out)


def test_a_search_directory_is_locked(tmp_path, holder):
    out = tmp_path / "search"
    p = holder(out)
    rc, _, err = run_cli(["tune", "digits", "--model", "timm/test_efficientnet", "-s", "linear-probe",
                          "--trials", "1", "--out", out])
    assert rc == 2 and f"process {p.pid}" in one_error_line(err)
    _no_files_but_the_lock(out)


def test_report_waits_for_the_study_then_refuses_with_the_holder(tmp_path, holder, monkeypatch):
    out = tmp_path / "study"
    (out).mkdir()
    p = holder(out)
    # `ajuste report` waits up to a minute for a running compare; here it must give up sooner.
    real = locks.hold
    monkeypatch.setattr(locks, "hold", lambda path, **kw: real(path, **{**kw, "wait": 0.5}))
    t0 = time.perf_counter()
    rc, _, err = run_cli(["report", out])
    assert rc == 2 and f"process {p.pid}" in one_error_line(err)
    assert time.perf_counter() - t0 >= 0.5


def test_holds_are_reentrant_in_one_process_and_a_failed_start_leaves_no_directory(tmp_path):
    out = tmp_path / "d"
    with locks.hold(out):
        with locks.hold(out):  # compare holds its study while run_study holds it again
            pass
        assert (out / locks.LOCK_NAME).exists()  # the inner exit did not release the outer hold
    with pytest.raises(RuntimeError):
        with locks.hold(tmp_path / "e", remove_if_unused=True):
            raise RuntimeError("bad data")
    assert not (tmp_path / "e").exists()
    with locks.hold(tmp_path / "f", remove_if_unused=True) as f:
        (f / "config.yaml").write_text("x")
    assert (tmp_path / "f" / "config.yaml").exists()


def test_overwrite_keeps_the_lock_it_holds(images, tmp_path):
    out = tmp_path / "run"
    args = ["train", images, *TINY_IMAGE, *FAST, "-s", "linear-probe", "-q", "--out", out]
    assert run_cli(args)[0] == 0
    rc, stdout, err = run_cli([*args, "--overwrite"])
    assert rc == 0, stdout + err
    assert (out / locks.LOCK_NAME).exists() and (out / "summary.json").exists()
