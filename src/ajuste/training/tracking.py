"""Runs that show up in TensorBoard and MLflow (``train.log_to``), as a callback on the training loop.

`Tracking` holds one run's trackers. ``fit`` calls it on its events (training/callbacks.py): before_fit opens the
TensorBoard writer and the MLflow run, after_epoch logs the epoch's record with step = the run's global epoch
(the numbering of metrics.jsonl); ``train_run`` then hands it the summary (the test metrics; metrics.jsonl,
summary.json and config.yaml as artifacts) or the way the run ended: MLflow status FINISHED, KILLED (Ctrl-C,
SIGTERM) or FAILED.

- TensorBoard: event files in ``<run>/tensorboard`` (``tensorboard --logdir <run>``). A resumed run purges the
  events after its checkpoint's epoch, so an epoch trained again is not drawn twice.
- MLflow: ``MLFLOW_TRACKING_URI``, else MLflow's own default store. The run's id is kept in ``<run>/mlflow.json``:
  re-running an interrupted command continues the same MLflow run (in the same store), and logs only the epochs
  that run lacks.
- Under data parallelism only rank 0 gets here (the other workers return before: training/run.py).

A study (`ajuste compare`) and a search (`ajuste tune`) give each of their runs a `TrackingContext`: the experiment
named after their directory, the study's parent run, the tags of a cell or a trial. The libraries are imported
when a run asks for them (``tracking_store.require``), never at import (``ajuste --help`` stays fast); a missing
one is one line naming what to install. A tracker that fails in the middle of a run is dropped with a warning:
the training goes on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ajuste.errors import AjusteError
from ajuste.io import atomic_write_json
from ajuste.training import tracking_store as store
from ajuste.training.callbacks import Callback, Fit

TENSORBOARD_DIR = "tensorboard"
# What MLflow shows of an epoch, from its EpochRecord field; TensorBoard groups the same under these tags.
EPOCH_METRICS = {"train_loss": "loss/train", "val_loss": "loss/val", "val_accuracy": "accuracy/val", "lr": "lr",
                 "epoch_seconds": "epoch_seconds"}
_FINAL = ("val_loss", "val_accuracy", "epochs", "best_epoch", "train_seconds", "wall_seconds", "trainable_params",
          "peak_memory_mb")
_ARTIFACTS = ("metrics.jsonl", "summary.json", "config.yaml")


@dataclass
class TrackingContext:
    """Where a run is logged, as the study or search that starts it says (a plain run needs none)."""

    experiment: str | None = None  # MLflow experiment; None: MLFLOW_EXPERIMENT_NAME/_ID, else MLflow's default
    run_name: str | None = None  # None: the run directory's name
    parent_run_id: str | None = None  # a study's run: its cells are nested under it in MLflow's UI
    tags: dict[str, str] = field(default_factory=dict)
    tensorboard_dir: Path | None = None  # None: <run>/tensorboard; a run without a directory has none
    mlflow_run_id: str | None = None  # set once the MLflow run exists (a search logs the objective there)


class Tracking(Callback):
    """One run's trackers: a callback on ``fit``, then `finish` (complete) or `end` (interrupted, failed). With
    ``train.log_to`` empty every method does nothing."""

    def __init__(self, cfg: Any, run_dir: Path | None, context: TrackingContext | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir) if run_dir is not None else None
        self.context = context or TrackingContext()
        self.log_to = list(cfg.train.log_to)
        self.writer: Any = None  # TensorBoard's SummaryWriter
        self.client: Any = None  # MlflowClient, with self.context.mlflow_run_id its run
        self.logged: set[int] = set()  # epochs the MLflow run has
        self.console: Any = None

    # -- the loop's events ----------------------------------------------------------------------------------

    def before_fit(self, f: Fit) -> None:
        self.console = f.console
        history = list(f.result.history)  # the epochs a resumed run did before (metrics.jsonl)
        if "tensorboard" in self.log_to:
            self._open_tensorboard(f.state.global_epoch, history)
        if "mlflow" in self.log_to:
            self._open_mlflow(history)

    def after_epoch(self, f: Fit) -> None:
        self._epochs([f.rec])

    # -- after the fit ----------------------------------------------------------------------------------

    def finish(self, summary: dict[str, Any]) -> None:
        """A complete run: its test and summary metrics, its files, status FINISHED."""
        metrics = {f"test_{k}": v for k, v in (summary.get("test") or {}).items()
                   if store.is_number(v) and k != "n"}
        metrics.update({f"best_{k}" if k.startswith("val_") else k: summary[k] for k in _FINAL
                        if store.is_number(summary.get(k))})
        if self.writer is not None:
            tests = {f"test/{k[5:]}": v for k, v in metrics.items() if k.startswith("test_")}
            self._guard("tensorboard", lambda: self._scalars(tests, int(summary.get("epochs", 0))))
        if self.client is not None:
            self._guard("mlflow", lambda: self._log_final(metrics))
        self.end("FINISHED")

    def end(self, status: str) -> None:
        """Close the trackers; the MLflow run's status: FINISHED, KILLED or FAILED. Idempotent."""
        self._drop("tensorboard")
        self._drop("mlflow", status)

    def _drop(self, tracker: str, status: str = "FAILED") -> None:
        # the run's outcome stands whatever its tracker says when told of it
        if tracker == "tensorboard" and self.writer is not None:
            writer, self.writer = self.writer, None
            with contextlib.suppress(Exception):
                writer.close()
        elif tracker == "mlflow" and self.client is not None:
            client, self.client = self.client, None
            with contextlib.suppress(Exception):
                client.set_terminated(self.context.mlflow_run_id, status=status)

    def __enter__(self) -> "Tracking":
        return self

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        if exc_type is not None:
            self.end("KILLED" if issubclass(exc_type, KeyboardInterrupt) else "FAILED")

    # -- TensorBoard ------------------------------------------------------------------------------------

    def _open_tensorboard(self, start_epoch: int, history: list) -> None:
        folder = self.context.tensorboard_dir or (self.run_dir / TENSORBOARD_DIR if self.run_dir else None)
        if folder is None:
            self._warn("tensorboard: this run has no directory to write event files to; not logged")
            return
        summary_writer = store.import_tracker("tensorboard").SummaryWriter
        earlier = list(Path(folder).glob("events.out.tfevents.*"))
        if earlier:
            _wait_past(earlier)
        # A resumed run: events of epochs after its checkpoint are hidden (those epochs train again)
        self.writer = summary_writer(str(folder), purge_step=start_epoch if earlier and start_epoch else None)
        self._say(f"tensorboard: events in {folder} (tensorboard --logdir {folder})")
        if not earlier:  # logging turned on when resuming: the epochs trained before, from metrics.jsonl
            self._epochs(history, mlflow=False)

    # -- MLflow -----------------------------------------------------------------------------------------

    def _open_mlflow(self, history: list) -> None:
        client, uri = store.open_client()
        try:
            run_id = store.saved_run(client, self.run_dir, uri)
            if run_id is None:
                run_id = client.create_run(store.experiment_id(client, self.context.experiment),
                                           run_name=self._name(), tags=self._tags()).info.run_id
                if self.run_dir is not None:
                    atomic_write_json(self.run_dir / store.RUN_FILE, {"run_id": run_id, "tracking_uri": uri})
            else:
                client.update_run(run_id, status="RUNNING")
                self.logged = {m.step for m in client.get_metric_history(run_id, "val_loss")}
            have = client.get_run(run_id).data.params
            store.log_params(client, run_id, {k: v for k, v in flat_params(self.cfg).items() if k not in have})
        except AjusteError:
            raise
        except Exception as exc:  # noqa: BLE001 - an unreachable server, a bad URI: one line, before training
            raise store.store_error(uri, exc) from None
        self.client, self.context.mlflow_run_id = client, run_id
        self._say(f"mlflow: run {run_id} in {uri}")
        self._epochs(history, tensorboard=False)  # those of the epochs done before that it lacks

    def _name(self) -> str | None:
        return self.context.run_name or (self.run_dir.name if self.run_dir is not None else None)

    def _tags(self) -> dict[str, str]:
        cfg = self.cfg
        tags = {"strategy": cfg.strategy.name, "model": cfg.model.name, "fraction": f"{cfg.data.fraction:g}",
                "seed": str(cfg.train.seed), "data": str(cfg.data.source)}
        if self.run_dir is not None:
            tags["ajuste.run_dir"] = str(self.run_dir.resolve())
        if self.context.parent_run_id:
            tags["mlflow.parentRunId"] = self.context.parent_run_id
        return {**tags, **self.context.tags}

    def _log_final(self, metrics: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now, run_id = int(time.time() * 1000), self.context.mlflow_run_id
        self.client.log_batch(run_id, metrics=[Metric(k, float(v), now, 0) for k, v in metrics.items()])
        for name in _ARTIFACTS if self.run_dir is not None else ():
            if (self.run_dir / name).is_file():
                self.client.log_artifact(run_id, str(self.run_dir / name))

    # -- both -------------------------------------------------------------------------------------------

    def _epochs(self, records: list, *, tensorboard: bool = True, mlflow: bool = True) -> None:
        """Each record's metrics, step = its global epoch; MLflow skips the epochs its run already has."""
        for rec in records:
            values = {"train_loss": rec.train_loss, "val_loss": rec.val_loss, "val_accuracy": rec.val_accuracy,
                      "lr": rec.lr, "epoch_seconds": rec.seconds}
            if self.writer is not None and tensorboard:
                self._guard("tensorboard", lambda: self._scalars(
                    {EPOCH_METRICS[k]: v for k, v in values.items()}, rec.epoch))
            if self.client is not None and mlflow and rec.epoch not in self.logged:
                self._guard("mlflow", lambda: self._log_epoch(rec.epoch, values))

    def _scalars(self, values: dict[str, float], step: int) -> None:
        for tag, value in values.items():
            if store.is_number(value):
                self.writer.add_scalar(tag, value, step)
        self.writer.flush()  # a killed run keeps its epochs (the writer flushes every 2 minutes by itself)

    def _log_epoch(self, step: int, values: dict[str, float]) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        # one batch: an epoch is in MLflow whole or not at all (a resume checks val_loss alone)
        self.client.log_batch(self.context.mlflow_run_id,
                              metrics=[Metric(k, float(v), now, step) for k, v in values.items()
                                       if store.is_number(v)])
        self.logged.add(step)

    def _guard(self, tracker: str, call: Any) -> None:
        """A tracker failing mid-run (a server gone, a full disk) is dropped with a warning; training goes on."""
        try:
            call()
        except Exception as exc:  # noqa: BLE001
            self._warn(f"{tracker}: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}; no more logging "
                       f"to it in this run")
            self._drop(tracker)

    def _warn(self, message: str) -> None:
        if self.console is not None:
            self._say(f"warning: {message}")
        else:
            logging.getLogger("ajuste").warning(message)

    def _say(self, message: str) -> None:
        if self.console is not None:
            self.console.print(message, markup=False, highlight=False, soft_wrap=True)


def flat_params(cfg: Any) -> dict[str, str]:
    """The resolved config as dotted keys (``optim.lr``), but where it is logged."""
    out: dict[str, str] = {}

    def walk(node: dict, prefix: str) -> None:
        for key, value in node.items():
            if isinstance(value, dict):
                walk(value, f"{prefix}{key}.")
            else:
                out[prefix + key] = json.dumps(value) if isinstance(value, list) else str(value)

    walk(cfg.to_dict(), "")
    out.pop("train.log_to", None)
    return out


def _wait_past(event_files: list[Path]) -> None:
    """Wait (under a second) until a new event file sorts after these. TensorBoard reads a folder's files in name
    order, ``events.out.tfevents.<whole seconds>.<host>.<pid>.<counter>``, and applies a resume's purge in that
    order; a file opened within the same second by the same process is ordered by the counter as text ("10" before
    "9"), which put a resume's events before the run they purge. A file stamped later than a second from now (a
    clock set back) is not waited for."""
    def stamp(path: Path) -> int:
        part = path.name.split(".")[3] if path.name.count(".") >= 3 else ""
        return int(part) if part.isdigit() else 0

    newest = max(stamp(p) for p in event_files)
    while newest - 1 <= int(time.time()) <= newest:
        time.sleep(0.05)
