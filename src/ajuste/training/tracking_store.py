"""What ajuste does with the trackers' libraries and MLflow's store, below the run's callback (training/tracking.py):
importing them when asked (a missing one is one line naming what to install), the store and its experiments,
the run a directory logged to (``mlflow.json``: a resume continues it), a study's own run, and what a study or a
search adds to a run after its training."""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import math
import os
import re
import time
from pathlib import Path
from typing import Any, Iterator

from ajuste.errors import AjusteError
from ajuste.io import atomic_write_json

INSTALL = "pip install 'ajuste[tracking]'"
RUN_FILE = "mlflow.json"  # in a run or study directory: the MLflow run it logs to
# tracker → (module imported, package that provides it)
_MODULES = {"mlflow": ("mlflow", "mlflow-skinny"), "tensorboard": ("torch.utils.tensorboard", "tensorboard")}


def require(log_to: list[str]) -> None:
    """Import the trackers ``train.log_to`` names, now, before anything is trained."""
    for tracker in log_to:
        import_tracker(tracker)
    if "mlflow" in log_to:
        open_client()  # a store MLflow refuses, too


def import_tracker(tracker: str) -> Any:
    module, package = _MODULES[tracker]
    try:
        loaded = importlib.import_module(module)
    except ImportError as exc:
        raise AjusteError(f"train.log_to includes {tracker}, but {package} is not installed ({exc}); install it "
                          f"with {INSTALL}, or leave {tracker} out of train.log_to") from None
    if tracker == "mlflow":  # its store's set-up chatter would break the progress bar
        for name in ("mlflow", "alembic"):
            logging.getLogger(name).setLevel(logging.WARNING)
    return loaded


def open_client() -> tuple[Any, str]:
    """An MlflowClient on MLflow's store (``MLFLOW_TRACKING_URI`` or its default), and that store's URI."""
    mlflow = import_tracker("mlflow")
    from mlflow.tracking import MlflowClient

    uri = redact(mlflow.get_tracking_uri())
    try:
        return MlflowClient(), uri
    except Exception as exc:  # noqa: BLE001 - e.g. a store kind MLflow refuses (a plain folder in MLflow 3)
        raise store_error(uri, exc) from None


def store_error(uri: str, exc: Exception) -> AjusteError:
    return AjusteError(f"MLflow at {uri}: {type(exc).__name__}: {' '.join(str(exc).split())[:400]}; check "
                       f"MLFLOW_TRACKING_URI, or leave mlflow out of train.log_to")


def experiment_id(client: Any, name: str | None) -> str:
    """The MLflow experiment ``name`` (created when missing); without a name, the one MLflow's own environment
    variables name, else its default experiment."""
    if name is None:
        if os.environ.get("MLFLOW_EXPERIMENT_ID"):
            return os.environ["MLFLOW_EXPERIMENT_ID"]
        name = os.environ.get("MLFLOW_EXPERIMENT_NAME")
        if not name:
            return "0"  # MLflow's "Default" experiment
    exp = client.get_experiment_by_name(name)
    if exp is None:
        try:
            return client.create_experiment(name)
        except Exception:  # noqa: BLE001 - another worker of the study created it meanwhile
            exp = client.get_experiment_by_name(name)
            if exp is None:
                raise
    if exp.lifecycle_stage != "active":
        raise AjusteError(f"the MLflow experiment {name!r} is deleted; restore it (mlflow experiments restore) or "
                          f"remove it for good (mlflow gc)")
    return exp.experiment_id


def saved_run(client: Any, folder: Path | None, uri: str) -> str | None:
    """The MLflow run ``folder`` logged to before, when it is in this store and not deleted."""
    try:
        saved = json.loads((Path(folder) / RUN_FILE).read_text()) if folder is not None else None
    except (OSError, ValueError):
        return None
    if not isinstance(saved, dict) or saved.get("tracking_uri") != uri:
        return None
    try:
        run = client.get_run(saved["run_id"])
    except Exception:  # noqa: BLE001 - gone from the store: a new run
        return None
    return run.info.run_id if run.info.lifecycle_stage == "active" else None


def saved_run_id(folder: Path) -> str | None:
    """The MLflow run id kept in ``folder``'s mlflow.json (a study's parent run, for its cells), or None."""
    try:
        return str(json.loads((Path(folder) / RUN_FILE).read_text())["run_id"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def log_params(client: Any, run_id: str, params: dict[str, Any]) -> None:
    from mlflow.entities import Param

    items = [Param(k, str(v)) for k, v in params.items()]
    for i in range(0, len(items), 100):  # MLflow takes 100 params per batch
        client.log_batch(run_id, params=items[i:i + 100])


def is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def redact(uri: str) -> str:
    """A tracking URI without its password (it is written in the run directory)."""
    return re.sub(r"//([^/@:]+):[^/@]*@", r"//\1:***@", str(uri))


@contextlib.contextmanager
def parent_run(log_to: list[str], folder: Path, *, params: dict[str, Any], tags: dict[str, str],
               files: tuple[str, ...] = ()) -> Iterator[Any]:
    """A study's own MLflow run, in the experiment named after ``folder``, that its cells' runs are nested under
    (MLflow has no artifacts of an experiment: the report goes here). Its id is kept in ``folder``/mlflow.json,
    so a resumed study goes on in it; its status follows the block: FINISHED (with ``files`` of ``folder`` as
    artifacts), KILLED or FAILED. Yields the run id, or None when mlflow is not in ``log_to``."""
    if "mlflow" not in log_to:
        yield None
        return
    (client, uri), folder = open_client(), Path(folder)
    try:
        run_id = saved_run(client, folder, uri)
        if run_id is None:
            run_id = client.create_run(experiment_id(client, folder.resolve().name), run_name=folder.resolve().name,
                                       tags=tags).info.run_id
            log_params(client, run_id, params)
            atomic_write_json(folder / RUN_FILE, {"run_id": run_id, "tracking_uri": uri})
        else:
            client.update_run(run_id, status="RUNNING")
    except AjusteError:
        raise
    except Exception as exc:  # noqa: BLE001 - as for a run: one line before any cell trains
        raise store_error(uri, exc) from None
    try:
        yield run_id
    except BaseException as exc:
        with contextlib.suppress(Exception):  # the study's own error is the one to see
            client.set_terminated(run_id, status="KILLED" if isinstance(exc, KeyboardInterrupt) else "FAILED")
        raise
    log_to_run(run_id, files=[folder / name for name in files], status="FINISHED")


def log_to_run(run_id: str | None, *, metrics: dict[str, Any] | None = None, tags: dict[str, str] | None = None,
               files: list[Path] = (), status: str | None = None) -> None:
    """Add to an MLflow run after its training (a trial's objective and state, a study's report), then set its
    ``status`` if given. A failure is a warning: what was trained and written stands."""
    if run_id is None:
        return
    try:
        client, now = open_client()[0], int(time.time() * 1000)
        from mlflow.entities import Metric, RunTag

        client.log_batch(run_id, tags=[RunTag(k, str(v)[:5000]) for k, v in (tags or {}).items()],
                         metrics=[Metric(k, float(v), now, 0) for k, v in (metrics or {}).items() if is_number(v)])
        for path in files:
            if Path(path).is_file():
                client.log_artifact(run_id, str(path))
        if status is not None:
            client.set_terminated(run_id, status=status)
    except Exception as exc:  # noqa: BLE001
        logging.getLogger("ajuste").warning(f"mlflow: {type(exc).__name__}: {' '.join(str(exc).split())[:200]}; "
                                            f"run {run_id} lacks what came after its training")

