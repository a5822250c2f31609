"""SIGTERM (`docker stop`, a scheduler's limit) records the run as interrupted, and the same command resumes
(issue 33, item 6). Real processes: a signal handler is only tested by a signal."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from test_cli import TINY_IMAGE, one_error_line

ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}


def _start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "ajuste", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=ENV)


def _wait_for(predicate, proc: subprocess.Popen, timeout: float = 180) -> None:
    t0 = time.monotonic()
    while not predicate():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() - t0 < timeout, "timed out waiting"
        time.sleep(0.05)


def _status(run: Path) -> str:
    try:
        return json.loads((run / "status.json").read_text())["status"]
    except (OSError, ValueError):
        return ""


def _epochs(run: Path) -> list[int]:
    p = run / "metrics.jsonl"
    return [json.loads(x)["epoch"] for x in p.read_text().splitlines()] if p.exists() else []


def test_sigterm_mid_training_records_interrupted_and_the_rerun_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["train", "digits", *TINY_IMAGE, "-s", "full", "--epochs", "6", "--fraction", "0.3", "-q",
            "--set", "train.min_steps=0", "--set", "train.patience=100", "--out", str(out)]
    p = _start(args)
    _wait_for(lambda: len(_epochs(out)) >= 1, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "SIGTERM" in one_error_line(err)
    assert _status(out) == "interrupted"
    done = len(_epochs(out))
    assert done < 6

    p = _start(args)
    _, err = p.communicate(timeout=300)
    assert p.returncode == 0, err
    assert _status(out) == "complete"
    epochs = _epochs(out)
    assert epochs == sorted(set(epochs)) and len(epochs) == 6, epochs  # each epoch once, none lost


def test_sigterm_to_a_study_reaches_its_workers_and_the_rerun_finishes(tmp_path):
    out = tmp_path / "study"
    args = ["compare", "digits", "--model", "timm/test_efficientnet", "--strategies", "full,scratch",
            "--fractions", "0.3", "--no-similarity", "-j", "2", "-q", "--out", str(out),
            "--set", "model.pretrained=false", "--set", "data.image_size=32", "--set", "train.epochs=8",
            "--set", "train.min_steps=0", "--set", "train.patience=100"]
    p = _start(args)
    runs = out / "runs"
    _wait_for(lambda: any(_epochs(r) for r in runs.glob("*")) if runs.exists() else False, p)
    p.send_signal(signal.SIGTERM)
    _, err = p.communicate(timeout=60)
    assert p.returncode == 143, err
    assert "SIGTERM" in one_error_line(err)
    statuses = {r.name: _status(r) for r in runs.iterdir()}
    assert "running" not in statuses.values(), statuses  # the workers stopped and said so
    assert "interrupted" in statuses.values(), statuses

    p = _start(args)
    _, err = p.communicate(timeout=600)
    assert p.returncode == 0, err
    cells = [json.loads(x)["cell"] for x in (out / "results.jsonl").read_text().splitlines()]
    assert sorted(cells) == sorted(set(cells)) and len(cells) == 2, cells
