"""Data-parallel `ajuste train` under torchrun: 2 CPU worker processes on the gloo backend.

Each optimizer step splits the same global batch between the workers and sums their gradients, so with
BatchNorm statistics frozen two workers must reproduce one process's run epoch by epoch (up to float
summation order); with BatchNorm learning on each worker's half-batch, the final metrics agree within a
tolerance. Tiny offline model (timm test_efficientnet, random weights, 32 px), built-in digits.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

TINY = ["digits", "--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set",
        "data.image_size=32", "--set", "model.dropout=0", "--set", "data.augment=none", "--set", "train.threads=1",
        "--fraction", "0.3", "--quiet"]


def _env() -> dict[str, str]:
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    return env


def _train(out: Path, args: list[str], workers: int) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "ajuste", "train", *args, "--out", str(out)]
    if workers > 1:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={workers}",
               "-m", "ajuste", "train", *args, "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    return proc


def _metrics(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_two_workers_reproduce_one_process_with_frozen_batchnorm(tmp_path):
    # A short head phase: the float summation order drifts a little over every epoch of the run.
    args = TINY + ["--strategy", "two-stage", "--epochs", "2", "--set", "strategy.head_epochs=3"]
    _train(tmp_path / "one", args, workers=1)
    proc = _train(tmp_path / "two", args, workers=2)

    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert [r["phase"] for r in one] == [r["phase"] for r in two]
    assert {"head", "all"} <= {r["phase"] for r in two}  # cached-feature phase and end-to-end phase
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5), (a, b)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5), (a, b)
        assert b["val_accuracy"] == pytest.approx(a["val_accuracy"], abs=1e-6)
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s2["distributed"] == {"workers": 2, "backend": "gloo"} and "distributed" not in s1
    assert s2["test_accuracy"] == pytest.approx(s1["test_accuracy"], abs=1e-6)
    # rank 0 alone prints and writes: one result line, one metrics line per epoch
    assert proc.stdout.count("test accuracy") == 1
    assert len(two) == len(one)


def test_two_workers_with_learning_batchnorm_match_within_tolerance(tmp_path):
    args = TINY + ["--strategy", "full", "--epochs", "4", "--set", "model.bn=train", "--lr", "3e-3"]
    _train(tmp_path / "one", args, workers=1)
    _train(tmp_path / "two", args, workers=2)

    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two)
    # each worker's BatchNorm normalises its own half-batch (16 examples): close, not identical
    assert two[0]["train_loss"] != pytest.approx(one[0]["train_loss"], abs=1e-6)
    assert abs(two[-1]["val_accuracy"] - one[-1]["val_accuracy"]) <= 0.06
    s1 = json.loads((tmp_path / "one" / "summary.json").read_text())
    s2 = json.loads((tmp_path / "two" / "summary.json").read_text())
    assert s1["test_accuracy"] > 0.8  # it learned: the comparison below is not between two chance models
    assert abs(s2["test_accuracy"] - s1["test_accuracy"]) <= 0.06


def test_two_workers_with_accumulation_and_uneven_shares_reproduce_one_process(tmp_path):
    # 15-example batches: the workers' shares are 8 and 7, so DDP's plain average of the two shares' gradients
    # would weigh an example of the smaller share more; two batches per step cover DDP's no_sync window.
    args = TINY + ["--strategy", "two-stage", "--epochs", "2", "--set", "strategy.head_epochs=2", "--set",
                   "data.batch_size=15", "--set", "train.grad_accum=2", "--set", "train.min_steps=0"]
    _train(tmp_path / "one", args, workers=1)
    _train(tmp_path / "two", args, workers=2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two) == 4
    for a, b in zip(one, two):
        assert b["train_loss"] == pytest.approx(a["train_loss"], abs=1e-5), (a, b)
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5), (a, b)


def test_sync_batchnorm_on_cpu_workers_is_one_clear_line(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ajuste",
           "train", *TINY, "--strategy", "full", "--epochs", "1", "--set", "train.sync_bn=true",
           "--out", str(tmp_path / "r")]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(), timeout=300)
    assert proc.returncode != 0
    workers = proc.stderr.split("torch/distributed/elastic")[0]  # before torchrun's own report of the failure
    assert "Traceback" not in workers
    assert "error: train.sync_bn=true needs the workers on GPUs" in workers


def test_two_workers_killed_then_resumed_match_an_uninterrupted_run(tmp_path):
    import signal
    import time

    args = TINY + ["--strategy", "two-stage", "--epochs", "3", "--set", "strategy.head_epochs=2"]
    _train(tmp_path / "whole", args, workers=2)
    cut = tmp_path / "cut"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", "-m", "ajuste",
           "train", *args, "--out", str(cut)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=_env())
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if (cut / "metrics.jsonl").is_file() and len((cut / "metrics.jsonl").read_text().splitlines()) >= 2:
            break
        time.sleep(0.05)
    import psutil  # accelerate's dependency

    # the launcher and both workers, mid-run (torchrun starts each worker in a session of its own)
    tree = [psutil.Process(proc.pid), *psutil.Process(proc.pid).children(recursive=True)]
    for p in tree:
        p.send_signal(signal.SIGKILL)
    psutil.wait_procs(tree, timeout=30)
    proc.wait()
    assert not (cut / "summary.json").exists(), "the run finished before it could be killed"
    _train(cut, args, workers=2)  # the same command resumes
    whole, resumed = _metrics(tmp_path / "whole"), _metrics(cut)
    assert [r["epoch"] for r in resumed] == [r["epoch"] for r in whole]
    for a, b in zip(whole, resumed):
        assert b["val_loss"] == pytest.approx(a["val_loss"], abs=1e-5), (a, b)
    s1 = json.loads((tmp_path / "whole" / "summary.json").read_text())
    s2 = json.loads((cut / "summary.json").read_text())
    assert s2["test_accuracy"] == pytest.approx(s1["test_accuracy"], abs=1e-6)


def test_a_lone_world_size_without_a_launcher_is_one_clear_line(tmp_path):
    env = dict(_env(), WORLD_SIZE="2", RANK="0")
    env.pop("MASTER_ADDR", None)
    proc = subprocess.run([sys.executable, "-m", "ajuste", "train", *TINY, "--strategy", "linear-probe",
                           "--out", str(tmp_path / "r")], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 2
    assert "Traceback" not in proc.stderr
    assert "MASTER_ADDR" in proc.stderr and "torchrun" in proc.stderr


def test_sharded_batches_cover_every_example_once():
    from ajuste.data.batches import ShardedBatches
    from ajuste.training.distributed import World

    batches = [[0, 1, 2, 3], [4, 5, 6], [7]]
    shares = [list(ShardedBatches(batches, World(r, 2), drop_short=False)) for r in range(2)]
    assert shares[0] == [[0, 2], [4, 6], [7]] and shares[1] == [[1, 3], [5]]
    seen = sorted(i for s in shares for b in s for i in b)
    assert seen == list(range(8))  # evaluation: every example exactly once
    train = [list(ShardedBatches(batches, World(r, 2), drop_short=True)) for r in range(2)]
    # training: the 1-example batch is dropped on both workers, so both take the same number of steps
    assert len(train[0]) == len(train[1]) == 2


def test_text_model_trains_data_parallel(tmp_path, tiny_bert_dir):
    from test_cli import write_text_csv

    data = write_text_csv(tmp_path / "reviews.csv")
    args = [str(data), "--model", str(tiny_bert_dir), "--strategy", "full", "--epochs", "2", "--set",
            "train.threads=1", "--set", "train.min_steps=0", "--set", "data.batch_size=8", "--quiet"]
    _train(tmp_path / "one", args, workers=1)
    _train(tmp_path / "two", args, workers=2)
    one, two = _metrics(tmp_path / "one"), _metrics(tmp_path / "two")
    assert len(one) == len(two) == 2
    # the encoder's own dropout draws different masks per worker: close, not identical
    assert two[-1]["val_loss"] == pytest.approx(one[-1]["val_loss"], rel=0.2)
    assert json.loads((tmp_path / "two" / "summary.json").read_text())["distributed"]["workers"] == 2
