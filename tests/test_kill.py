"""SIGKILL at a real moment, then the same command again: nothing lost, nothing duplicated, same result.

The long randomised version (≥ 20 kills over train, compare and tune) is bench/chaos.py; these are the
short ones CI runs. Tiny offline model (timm test_efficientnet, random weights, 32 px) on digits.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

TINY = ["digits", "--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set",
        "data.image_size=32", "--set", "train.threads=1", "--quiet"]


def _env() -> dict[str, str]:
    return dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ajuste", *args], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True)


def _finish(args: list[str]) -> float:
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "ajuste", *args], capture_output=True, text=True, env=_env(),
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Traceback" not in proc.stderr
    return time.perf_counter() - t0


def _kill_when(proc: subprocess.Popen, ready, timeout: float = 300) -> None:
    deadline = time.monotonic() + timeout
    while not ready():
        assert proc.poll() is None, "finished before the kill: " + proc.stderr.read().decode()[-2000:]
        assert time.monotonic() < deadline, "never reached the kill point"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()


def _lines(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_sigkill_mid_training_then_rerun_equals_an_uninterrupted_run(tmp_path):
    args = [*TINY, "--strategy", "two-stage", "--epochs", "3", "--set", "strategy.head_epochs=3",
            "--fraction", "0.3"]
    _finish(["train", *args, "--out", str(tmp_path / "ref")])

    out = tmp_path / "killed"
    proc = _start(["train", *args, "--out", str(out)])
    # killed in the end-to-end phase, after at least one of its epochs: resume must not re-freeze,
    # must restore optimizer + schedule + RNG, and must not re-append finished epochs
    _kill_when(proc, lambda: any(r["phase"] == "all" for r in _lines(out / "metrics.jsonl")))
    assert not (out / "summary.json").exists()
    assert json.loads((out / "status.json").read_text())["status"] == "running"  # says it is not complete
    _finish(["train", *args, "--out", str(out)])

    ref, got = _lines(tmp_path / "ref" / "metrics.jsonl"), _lines(out / "metrics.jsonl")
    assert [r["epoch"] for r in got] == list(range(len(ref)))
    for a, b in zip(ref, got):
        assert a["phase"] == b["phase"]
        assert abs(a["train_loss"] - b["train_loss"]) < 1e-6 and abs(a["val_loss"] - b["val_loss"]) < 1e-6
    s_ref = json.loads((tmp_path / "ref" / "summary.json").read_text())
    s_got = json.loads((out / "summary.json").read_text())
    assert s_got["test_accuracy"] == s_ref["test_accuracy"]
    assert not (out / "checkpoint").exists()


def test_sigkill_mid_trial_then_rerun_completes_exactly_the_budget_without_waiting(tmp_path):
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = tmp_path / "tune"
    args = ["tune", *TINY, "--strategy", "full", "--epochs", "3", "--fraction", "0.2", "--trials", "3",
            "--sampler", "random", "--pruner", "none", "--out", str(out)]
    storage = f"sqlite:///{out / 'study.db'}"

    def one_done_one_running() -> bool:
        # read-only, plain sqlite3: opening the file with optuna here would create its schema and race
        # with the worker doing the same
        if not (out / "study.db").exists():
            return False
        try:
            with contextlib.closing(sqlite3.connect(f"file:{out / 'study.db'}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT state, (SELECT COUNT(*) FROM trial_params p WHERE p.trial_id = t.trial_id)"
                                  " FROM trials t").fetchall()
        except sqlite3.Error:  # no schema yet, or locked by the writer
            return False
        # mid-trial: its parameters drawn (a kill right after study.ask() is tests/test_tune.py's orphan case)
        return [s for s, _ in rows].count("COMPLETE") >= 1 and any(s == "RUNNING" and n for s, n in rows)

    proc = _start(args)
    _kill_when(proc, one_done_one_running)
    seconds = _finish(args)

    study = optuna.load_study(study_name=optuna.get_all_study_names(storage)[0], storage=storage)
    complete = [t for t in study.trials if t.state.name == "COMPLETE"]
    assert len(complete) == 3 and len({t.number for t in complete}) == 3
    killed = [t for t in study.trials if t.state.name == "FAIL"]
    assert len(killed) == 1 and killed[0].user_attrs.get("worker_died")
    # the killed trial's parameters (those drawn before the kill; the retry draws the rest) were re-run
    drawn = killed[0].params.items()
    assert drawn and any(drawn <= t.params.items() for t in complete)
    assert not [t for t in study.trials if t.state.name in ("RUNNING", "WAITING")]
    assert seconds < 55, "the re-run waited for the dead trial's heartbeat instead of re-queuing it"
