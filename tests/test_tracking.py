"""Tracking (`train.log_to`): runs, studies and searches logged to the real MLflow and TensorBoard, read back with
their own readers (`MlflowClient` on a temporary SQLite store, `EventAccumulator` on the event files).

Tiny offline model (timm test_efficientnet, random weights, 32 px) on a 300-example subset of digits.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from ajuste.config import RunConfig
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import read_jsonl
from ajuste.training.run import train_run

pytest.importorskip("mlflow")
pytest.importorskip("tensorboard")

EPOCH_KEYS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "accuracy/val", "lr": "lr"}


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An MLflow SQLite store with its tables made (its schema migrations take seconds: once per module)."""
    from mlflow.tracking import MlflowClient

    folder = tmp_path_factory.mktemp("mlflow")
    cwd = os.getcwd()
    os.chdir(folder)  # the default experiment's artifacts go to ./mlruns as the store is made
    try:
        MlflowClient(f"sqlite:///{folder / 'mlflow.db'}").search_experiments()
    finally:
        os.chdir(cwd)
    return folder / "mlflow.db"


@pytest.fixture(autouse=True)
def mlflow_store(tmp_path, monkeypatch, empty_store):
    """A fresh MLflow store per test, as a user points MLflow at one: the environment variable. MLflow puts the
    artifacts of a SQLite store's new experiments in ./mlruns: the test runs in its temporary directory."""
    monkeypatch.chdir(tmp_path)
    shutil.copy(empty_store, tmp_path / "mlflow.db")
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_DISABLE_TELEMETRY", "true")
    for var in ("MLFLOW_EXPERIMENT_NAME", "MLFLOW_EXPERIMENT_ID"):
        monkeypatch.delenv(var, raising=False)
    return uri


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


def _client():
    from mlflow.tracking import MlflowClient

    return MlflowClient()


def _cfg(log_to=("mlflow", "tensorboard"), **over) -> RunConfig:
    base = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "strategy.name": "two-stage",
            "strategy.head_epochs": 2, "train.epochs": 2, "data.image_size": 32, "data.batch_size": 64,
            "train.patience": 5, "train.min_steps": 0, "train.threads": 1, "train.log_to": list(log_to)}
    base.update(over)
    return RunConfig().override(base)


def _scalars(folder: Path) -> dict[str, list]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(folder))
    acc.Reload()
    return {tag: acc.Scalars(tag) for tag in acc.Tags()["scalars"]}


def _leaves(node: dict) -> int:
    return sum(_leaves(v) if isinstance(v, dict) else 1 for v in node.values())


def test_log_to_is_a_list_of_known_trackers():
    cfg = RunConfig()
    assert cfg.train.log_to == []
    assert cfg.override(["train.log_to=[mlflow, tensorboard]"]).train.log_to == ["mlflow", "tensorboard"]
    assert cfg.override(["train.log_to=mlflow,tensorboard"]).train.log_to == ["mlflow", "tensorboard"]
    assert cfg.override(["train.log_to="]).train.log_to == []
    with pytest.raises(ConfigError, match=r"train.log_to: 'wandb' is not a tracker; .*tensorboard and/or mlflow"):
        cfg.override(["train.log_to=[wandb]"])
    with pytest.raises(ConfigError, match="lists a tracker twice"):
        cfg.override(["train.log_to=mlflow,mlflow"])
    with pytest.raises(ConfigError, match="train.log_to=.*expected a list"):
        cfg.override({"train.log_to": {"mlflow": True}})


def test_a_run_logs_its_config_epochs_test_metrics_and_files(tmp_path, digits_small):
    out = tmp_path / "run"
    res = train_run(cfg=_cfg(), out=out, data=digits_small, progress=False)
    lines = read_jsonl(out / "metrics.jsonl")
    assert len(lines) == 4  # two head epochs, two end-to-end

    client = _client()
    run = client.get_run(json.loads((out / "mlflow.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.info.experiment_id == "0" and run.info.run_name == "run"
    # params: the resolved config, flattened to dotted keys (auto values filled in), but where it is logged
    params, ran = run.data.params, res.config
    assert params["optim.lr"] == str(ran.optim.lr) and params["strategy.name"] == "two-stage"
    assert params["data.image_size"] == "32" and "train.log_to" not in params
    assert len(params) == _leaves(ran.to_dict()) - 1
    assert {k: run.data.tags[k] for k in ("strategy", "model", "fraction", "seed")} == {
        "strategy": "two-stage", "model": "timm/test_efficientnet", "fraction": "1", "seed": "0"}
    for key in EPOCH_KEYS:
        history = client.get_metric_history(run.info.run_id, key)
        assert [m.step for m in sorted(history, key=lambda m: m.step)] == [r["epoch"] for r in lines]
        assert [m.value for m in sorted(history, key=lambda m: m.step)] == pytest.approx([r[key] for r in lines])
    assert len(client.get_metric_history(run.info.run_id, "epoch_seconds")) == 4
    assert run.data.metrics["test_accuracy"] == pytest.approx(res.summary["test_accuracy"])
    assert run.data.metrics["test_macro_f1"] == pytest.approx(res.summary["test_macro_f1"])
    assert run.data.metrics["best_val_accuracy"] == pytest.approx(res.summary["val_accuracy"])
    assert {a.path for a in client.list_artifacts(run.info.run_id)} == {"metrics.jsonl", "summary.json", "config.yaml"}

    scalars = _scalars(out / "tensorboard")
    for key, tag in EPOCH_KEYS.items():
        assert [e.step for e in scalars[tag]] == [r["epoch"] for r in lines]
        assert [e.value for e in scalars[tag]] == pytest.approx([r[key] for r in lines], rel=1e-6)
    assert len(scalars["epoch_seconds"]) == 4
    assert [e.value for e in scalars["test/accuracy"]] == pytest.approx([res.summary["test_accuracy"]])


def test_an_interrupted_then_failed_run_resumes_in_the_same_mlflow_run(tmp_path, digits_small):
    """Ctrl-C: KILLED; an error: FAILED; the same command again continues the same run, each epoch logged once
    (TensorBoard hides what a resume trains again)."""
    out, cfg = tmp_path / "run", _cfg(**{"train.epochs": 3})

    def ctrl_c(rec, result):
        if rec.epoch == 1:
            signal.raise_signal(signal.SIGINT)  # the loop's graceful path: finish the epoch, checkpoint, stop

    train_run(cfg=cfg, out=out, data=digits_small, progress=False, on_epoch_end=ctrl_c)
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    client = _client()
    assert client.get_run(run_id).info.status == "KILLED"

    class Boom(Exception):
        pass

    def boom(rec, result):
        if rec.epoch == 3:
            raise Boom

    with pytest.raises(Boom):
        train_run(cfg=cfg, out=out, data=digits_small, progress=False, on_epoch_end=boom)
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run_id
    assert client.get_run(run_id).info.status == "FAILED"

    res = train_run(cfg=cfg, out=out, data=digits_small, progress=False)
    assert json.loads((out / "mlflow.json").read_text())["run_id"] == run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "test_accuracy" in run.data.metrics
    lines = read_jsonl(out / "metrics.jsonl")
    assert len(lines) == res.summary["epochs"] == 5
    steps = sorted(m.step for m in client.get_metric_history(run_id, "val_loss"))
    assert steps == list(range(5))
    assert [e.step for e in _scalars(out / "tensorboard")["loss/val"]] == list(range(5))
    assert len(client.search_runs(["0"])) == 1


def test_a_resumes_event_file_sorts_after_one_opened_in_the_same_second(tmp_path):
    """TensorBoard applies a resume's purge in file-name order; the counter at the end of the name sorts as text."""
    import socket
    import time

    from torch.utils.tensorboard import SummaryWriter

    from ajuste.training.tracking import _wait_past

    earlier = tmp_path / f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}.{os.getpid()}.9"
    earlier.write_bytes(b"")
    _wait_past([earlier])
    with SummaryWriter(str(tmp_path)) as writer:
        writer.add_scalar("x", 1.0, 0)
    names = sorted(p.name for p in tmp_path.glob("events.out.tfevents.*"))
    assert len(names) == 2 and names[0] == earlier.name


def test_logging_turned_on_when_resuming_logs_the_earlier_epochs_too(tmp_path, digits_small):
    out = tmp_path / "run"

    def ctrl_c(rec, result):
        signal.raise_signal(signal.SIGINT)

    train_run(cfg=_cfg(log_to=()), out=out, data=digits_small, progress=False, on_epoch_end=ctrl_c)
    assert not (out / "mlflow.json").exists() and not (out / "tensorboard").exists()
    train_run(cfg=_cfg(), out=out, data=digits_small, progress=False)  # a resume: train.log_to may change
    run_id = json.loads((out / "mlflow.json").read_text())["run_id"]
    assert sorted(m.step for m in _client().get_metric_history(run_id, "val_loss")) == [0, 1, 2, 3]
    assert [e.step for e in _scalars(out / "tensorboard")["loss/val"]] == [0, 1, 2, 3]


def test_compare_logs_each_cell_in_the_studys_experiment_from_its_worker_process(tmp_path, capsys):
    """Two cells side by side, each in its own worker process, each logging itself; the study's own run holds
    them (nested) and the report."""
    from ajuste.cli.main import main

    study = tmp_path / "my-study"
    args = ["compare", "digits", "--model", "timm/test_efficientnet", "--strategies", "linear-probe,scratch",
            "--fractions", "0.1", "--no-similarity", "--workers", "2", "--out", str(study), "--quiet"]
    for s in ("model.pretrained=false", "data.image_size=32", "train.epochs=1", "strategy.head_epochs=1",
              "data.batch_size=64", "train.min_steps=0", "train.log_to=mlflow"):
        args += ["--set", s]
    assert main(args) == 0, capsys.readouterr().err
    client = _client()
    exp = client.get_experiment_by_name("my-study")
    runs = {r.info.run_name: r for r in client.search_runs([exp.experiment_id])}
    assert set(runs) == {"my-study", "linear-probe-f0.1-s0", "scratch-f0.1-s0"}
    parent = runs.pop("my-study")
    assert parent.info.status == "FINISHED" and parent.data.params["strategies"] == "linear-probe,scratch"
    assert {"report.html", "results.jsonl", "results.md"} <= {a.path for a in client.list_artifacts(parent.info.run_id)}
    assert parent.data.tags["ajuste.recommendation"]
    results = {r["cell"]: r for r in read_jsonl(study / "results.jsonl")}
    for name, run in runs.items():
        assert run.info.status == "FINISHED" and run.data.tags["mlflow.parentRunId"] == parent.info.run_id
        assert run.data.tags["strategy"] == name.split("-f")[0] and run.data.tags["fraction"] == "0.1"
        assert run.data.metrics["test_accuracy"] == pytest.approx(results[name]["test_accuracy"])
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == results[name]["epochs"]
    assert not (study / "best_model" / "mlflow.json").exists()  # the handed-over model carries no tracker state


def test_tune_logs_each_trial_with_its_params_and_objective(tmp_path, digits_small):
    import optuna

    from ajuste.search.runner import tune

    cfg = _cfg(**{"strategy.name": "full", "train.epochs": 1, "data.fraction": 0.3})
    space = tmp_path / "space.yaml"
    space.write_text("extends: none\nparams:\n  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}\n")
    res = tune(cfg=cfg, out=tmp_path / "my-search", trials=2, sampler="random", pruner="none", space=space,
               data=digits_small, report=False)
    trials = optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{res.out / 'study.db'}").trials
    client = _client()
    runs = client.search_runs([client.get_experiment_by_name("my-search").experiment_id])
    assert sorted(r.info.run_name for r in runs) == ["trial-0", "trial-1"]
    for run in runs:
        trial = trials[int(run.data.tags["optuna.trial"])]
        assert run.info.status == "FINISHED" and run.data.tags["optuna.state"] == "COMPLETE"
        assert float(run.data.params["optim.lr"]) == pytest.approx(trial.params["optim.lr"])
        assert run.data.metrics["objective"] == pytest.approx(trial.value)
        assert len(client.get_metric_history(run.info.run_id, "val_loss")) == 1
    assert len(_scalars(res.out / "tensorboard" / "trial-0001")["loss/val"]) == 1
    # where trials are logged is no setting of the study: it resumes without tracking
    again = tune(cfg=cfg.override({"train.log_to": []}), out=tmp_path / "my-search", trials=2, sampler="random",
                 pruner="none", space=space, data=digits_small, report=False)
    assert again.ran_here == 0 and again.stopped_by == "budget reached"


def test_a_study_resumes_with_logging_turned_on_or_off():
    from ajuste.study.spec import StudySpec

    plain = StudySpec(source="digits", model="m", strategies=["linear-probe"], sets=["train.epochs=1"])
    logged = StudySpec(source="digits", model="m", strategies=["linear-probe"],
                       sets=["train.epochs=1", "train.log_to=mlflow"])
    assert plain.identity() == logged.identity()


@pytest.mark.parametrize("tracker,module", [("mlflow", "mlflow"), ("tensorboard", "torch.utils.tensorboard")])
def test_a_tracker_not_installed_is_one_line_saying_what_to_install(tracker, module, tmp_path, monkeypatch, capsys):
    from ajuste.cli.main import main

    monkeypatch.setitem(sys.modules, module, None)  # what `import` meets when the package is missing
    with pytest.raises(AjusteError, match=rf"train.log_to includes {tracker}, but .* is not installed.*"
                                          rf"pip install 'ajuste\[tracking\]'"):
        train_run(cfg=_cfg(log_to=[tracker]), out=tmp_path / "run", progress=False)
    assert main(["train", "digits", "--model", "timm/test_efficientnet", "--set", f"train.log_to={tracker}",
                 "--out", str(tmp_path / "cli")]) == 2
    lines = [ln for ln in capsys.readouterr().err.splitlines() if ln.strip()]
    assert len(lines) == 1 and "ajuste[tracking]" in lines[0] and "Traceback" not in lines[0], lines
    assert not (tmp_path / "cli").exists()  # refused before anything was read or written


def test_only_rank_0_logs_under_data_parallelism(tmp_path):
    out = tmp_path / "run"
    args = ["digits", "--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set",
            "data.image_size=32", "--set", "train.threads=1", "--fraction", "0.3", "--strategy", "full",
            "--epochs", "2", "--set", "train.min_steps=0", "--set", "train.log_to=mlflow,tensorboard", "--quiet"]
    env = dict(os.environ, OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1")
    env.pop("WORLD_SIZE", None)
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "ajuste", "train", *args, "--out", str(out)],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    runs = _client().search_runs(["0"])
    assert len(runs) == 1 and runs[0].info.status == "FINISHED"
    assert len(_client().get_metric_history(runs[0].info.run_id, "val_loss")) == 2
    assert len(list((out / "tensorboard").glob("events.out.tfevents.*"))) == 1


def test_a_classical_run_logs_each_regularisation_strength_as_an_epoch(tmp_path, digits_small):
    """The classical arm fits without the training loop (Strategy.direct_fit): its candidates still reach the
    trackers, one step each, and its test metrics end the run."""
    out = tmp_path / "run"
    res = train_run(cfg=_cfg(**{"strategy.name": "classical"}), out=out, data=digits_small, progress=False)
    lines = read_jsonl(out / "metrics.jsonl")
    client = _client()
    run = client.get_run(json.loads((out / "mlflow.json").read_text())["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["strategy"] == "classical"
    history = sorted(client.get_metric_history(run.info.run_id, "val_accuracy"), key=lambda m: m.step)
    assert [m.value for m in history] == pytest.approx([r["val_accuracy"] for r in lines]) and len(lines) >= 5
    assert run.data.metrics["test_accuracy"] == pytest.approx(res.summary["test_accuracy"])
    assert [e.step for e in _scalars(out / "tensorboard")["accuracy/val"]] == [r["epoch"] for r in lines]
