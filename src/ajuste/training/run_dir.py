"""The files of a run directory: what is written there before and after training, what its status says, and
whether an existing directory may be resumed.

Layout of a run directory::

    config.yaml          resolved config (every auto value filled in)
    labels.json          class names, index order
    preprocessing.json   image size / mean / std / crop, or text max_length
    backbone.json        how to rebuild the architecture offline (+ hf/ with config and tokenizer)
    splits.json          train/val/test indices into the data source
    fingerprint.json     a hash of each example and each split's membership by content (ajuste.data.fingerprint)
    metrics.jsonl        one line per finished epoch
    model.safetensors    best weights: what trained, plus a reference to the base weights (train.stored_weights)
    calibration.json     temperature scaling's T, fitted on val (train.calibrate), with NLL/ECE before and after
    summary.json         test metrics, time, parameters, memory; written last: its presence = complete
    checkpoint/          resume state while the run is unfinished (removed when complete)
    tensorboard/         TensorBoard event files (train.log_to: tensorboard)
    mlflow.json          the MLflow run it logs to (train.log_to: mlflow): a resume continues that run

Training (``ajuste.training.run``) and loading (``ajuste.training.run_load``) both read these files, so they live
below both.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

import numpy as np

from ajuste import locks
from ajuste.config import RunConfig, load_config, save_config
from ajuste.data import fingerprint
from ajuste.errors import AjusteError, DataError
from ajuste.io import atomic_write_json

STATUS_FILE = "status.json"


def read_status(out: Path) -> str:
    """What ``status.json`` says ("running", "interrupted", "failed", "complete"); "" when absent or damaged."""
    try:
        return str(json.loads((out / STATUS_FILE).read_text()).get("status", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def write_status(out: Path | None, status: str, **extra: Any) -> None:
    if out is not None:
        atomic_write_json(out / STATUS_FILE, {"status": status, "time": time.time(), **extra})


def status_error(run_dir: Path) -> str:
    try:
        return str(json.loads((run_dir / STATUS_FILE).read_text()).get("error", "")) or "no reason recorded"
    except (OSError, ValueError):
        return "no reason recorded"


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / "summary.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None


def epochs_done(run_dir: Path) -> int:
    try:
        saved = json.loads((run_dir / "checkpoint" / "state.json").read_text())
        return int(saved.get("state", saved)["global_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def weights_digest(path: Path) -> str:
    """sha256 of a weights file: summary.json records it, so a swapped or damaged file is refused on load."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def weights_metadata(classes: list[str]) -> dict[str, str]:
    """The safetensors header of a run's model.safetensors: the classes travel with the weights."""
    return {"format": "pt", "ajuste": "model", "labels": json.dumps(list(classes), ensure_ascii=False)}


def check_run_dir(out: Path, cfg: RunConfig, overwrite: bool) -> bool:
    """True when ``out`` holds an unfinished run of the same config (resume)."""
    if not out.exists():
        return False
    if not out.is_dir():
        raise AjusteError(f"--out {out} exists and is not a directory")
    if not locks.entries(out):
        return False
    if overwrite:
        locks.clear(out)
        return False
    if (out / "summary.json").is_file():
        raise AjusteError(f"{out} already holds a finished run; use another --out or --overwrite")
    old_cfg = out / "config.yaml"
    if not old_cfg.is_file():
        raise AjusteError(f"{out} is not empty and is not an ajuste run directory; use another --out")
    old_run = load_config(old_cfg)
    old, new = _resumable(old_run), _resumable(cfg)
    if old != new:
        if _nothing_trained(out):
            # Stopped before its first epoch was saved (an error in its settings, a Ctrl-C while loading):
            # nothing would be lost, and refusing would leave the corrected command nowhere to go.
            locks.clear(out)
            return False
        diff = _diff(old, new)
        raise AjusteError(f"{out} holds an unfinished run with a different config ({diff}); "
                          f"use the same settings to resume, or --overwrite")
    if old_run.train.max_seconds != cfg.train.max_seconds:
        save_config(cfg, old_cfg)  # a new time limit, as Lightning's max_time, may be given to a resumed run
    return True


def _resumable(cfg: RunConfig) -> dict[str, Any]:
    """What must not change for a run to resume: everything but where it is logged (train.log_to), which a
    resumed run may turn on or off, and its time limit (train.max_seconds), which changes when the run stops, not
    what it trains (a study under --budget gives a resumed cell the time left then)."""
    raw = cfg.to_dict()
    raw["train"].pop("log_to", None)
    raw["train"].pop("max_seconds", None)
    return raw


def seconds_trained(run_dir: Path) -> float:
    """The epoch seconds an unfinished run's checkpoint holds (what its time limit counts of earlier sessions);
    0 when it has none."""
    try:
        saved = json.loads((Path(run_dir) / "checkpoint" / "state.json").read_text())
        return float(saved.get("state", saved)["seconds"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return 0.0


def check_same_data(folder: Path, data: Any, splits: dict, source: Any, *, what: str = "the unfinished run",
                    fix: str = "start again with --overwrite") -> None:
    """Resume only on the examples ``what`` (in ``folder``) started with, split the same way: by content, not
    by row numbers (a file edited in place keeps its length and its row numbers)."""
    saved = fingerprint.read(folder)
    if saved is None:  # started before fingerprints were kept
        return
    change = fingerprint.describe_change(saved, data)
    if change is None:
        if fingerprint.fingerprint(data, splits)["splits"] == saved["splits"]:
            return
        change = "the same examples in another order, which splits them differently by row"
    raise DataError(f"{source} changed since {what} in {folder} started ({change}); restore the data to resume, "
                    f"or {fix}")


def _nothing_trained(out: Path) -> bool:
    """A run directory holding only the files written before training: no checkpoint, no weights."""
    return not (out / "checkpoint").exists() and not any(out.glob("*.safetensors"))


def _diff(a: dict, b: dict, prefix: str = "") -> str:
    out = []
    for k in a:
        if isinstance(a[k], dict):
            d = _diff(a[k], b.get(k, {}), f"{prefix}{k}.")
            if d:
                out.append(d)
        elif a[k] != b.get(k):
            out.append(f"{prefix}{k}: {a[k]!r} → {b.get(k)!r}")
    return ", ".join(out)


def write_run_files(run_dir: Path, cfg: RunConfig, data: Any, splits: dict, pre: Any, backbone: Any) -> None:
    check_writable(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "labels.json", list(data.classes))
    atomic_write_json(run_dir / "preprocessing.json", pre.to_dict())
    atomic_write_json(run_dir / "backbone.json", backbone.describe())
    atomic_write_json(run_dir / "splits.json", {k: np.asarray(v).tolist() for k, v in splits.items()})
    atomic_write_json(run_dir / fingerprint.FINGERPRINT_FILE, fingerprint.fingerprint(data, splits))
    if hasattr(backbone, "save_pretrained_parts"):  # a Hugging Face encoder's config and tokenizer
        backbone.save_pretrained_parts(run_dir / "hf")


def check_writable(run_dir: Path) -> None:
    """Create ``run_dir`` and prove a file can be written and synced there, before any epoch is spent."""
    probe = run_dir / ".write-test"
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        with open(probe, "wb") as fh:  # fsync: some full or quota-limited file systems only fail here
            fh.write(b"x" * 1024)
            fh.flush()
            os.fsync(fh.fileno())
        probe.unlink()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        if exc.errno in (errno.ENOSPC, errno.EDQUOT):
            raise AjusteError(f"the disk is full: cannot write to {run_dir} ({reason}); free some space or pick "
                              "another --out") from None
        raise AjusteError(f"cannot write to {run_dir} ({reason}); pick a writable --out") from None
    free = shutil.disk_usage(run_dir).free
    if free < 200 * 2**20:
        raise AjusteError(f"only {free / 2**20:.0f} MB free under {run_dir}; a run needs a few hundred MB — free some "
                          "space or pick another --out")
