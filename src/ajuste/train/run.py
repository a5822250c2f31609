"""One training run end to end, in a self-contained run directory.

Layout of a run directory::

    config.yaml          resolved config (every auto value filled in)
    labels.json          class names, index order
    preprocessing.json   image size / mean / std / crop, or text max_length
    backbone.json        how to rebuild the architecture offline (+ hf/ with config and tokenizer)
    splits.json          train/val/test indices into the data source
    fingerprint.json     a hash of each example and each split's membership by content (ajuste.data.fingerprint)
    metrics.jsonl        one line per finished epoch
    model.safetensors    best weights: what trained, plus a reference to the base weights (train.stored_weights)
    summary.json         test metrics, time, parameters, memory; written last: its presence = complete
    checkpoint/          resume state while the run is unfinished (removed when complete)
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

from ajuste import locks
from ajuste.config import RunConfig, save_config
from ajuste.data import fingerprint
from ajuste.errors import AjusteError, DataError
from ajuste.io import atomic_save_safetensors, atomic_write_json

STATUS_FILE = "status.json"


@dataclass
class RunResult:
    run_dir: Path | None
    config: RunConfig
    summary: dict[str, Any]
    backbone: Any = None
    pipeline: Any = None


def prepare_data(cfg: RunConfig, *, data: Any = None, splits: dict[str, np.ndarray] | None = None,
                 notes: list[str] | None = None):
    """Load the source and fix the train/val/test split; the training fraction is taken from train.
    ``notes`` receives what the caller should warn about the split (a share raised to one per class)."""
    from ajuste.data.sources import load_data
    from ajuste.data.splits import fraction_note, make_splits, take_fraction

    if data is None:
        data = load_data(cfg.data.source, text_col=cfg.data.text_col, label_col=cfg.data.label_col,
                         strict=cfg.data.strict)
    if splits is None:
        splits = make_splits(data, seed=cfg.data.split_seed, val_size=cfg.data.val_size,
                             test_size=cfg.data.test_size)
    splits = dict(splits)
    if cfg.data.fraction != 1.0:
        pool = splits["train"]
        splits["train"] = take_fraction(pool, data.labels, cfg.data.fraction, seed=cfg.data.split_seed)
        note = fraction_note(cfg.data.fraction, len(pool), len(splits["train"]), len(np.unique(data.labels[pool])))
        if note and notes is not None:
            notes.append(note)
    return data, splits


class PeakMemory:
    """Peak resident memory of this process during a block (sampled; ru_maxrss is process-lifetime)."""

    def __init__(self, interval: float = 0.2) -> None:
        self.interval = interval
        self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def rss() -> int:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError):
            return 0

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.rss())
            self._stop.wait(self.interval)

    def __enter__(self) -> "PeakMemory":
        self.peak = self.rss()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join()
        self.peak = max(self.peak, self.rss())


def _check_run_dir(out: Path, cfg: RunConfig, overwrite: bool) -> bool:
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
    from ajuste.config import load_config

    old = load_config(old_cfg)
    if old.to_dict() != cfg.to_dict():
        if _nothing_trained(out):
            # Stopped before its first epoch was saved (an error in its settings, a Ctrl-C while loading):
            # nothing would be lost, and refusing would leave the corrected command nowhere to go.
            locks.clear(out)
            return False
        diff = _diff(old.to_dict(), cfg.to_dict())
        raise AjusteError(f"{out} holds an unfinished run with a different config ({diff}); "
                          f"use the same settings to resume, or --overwrite")
    return True


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


def read_status(out: Path) -> str:
    """What ``status.json`` says ("running", "interrupted", "failed", "complete"); "" when absent or damaged."""
    try:
        return str(json.loads((out / STATUS_FILE).read_text()).get("status", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def write_status(out: Path | None, status: str, **extra: Any) -> None:
    if out is not None:
        atomic_write_json(out / STATUS_FILE, {"status": status, "time": time.time(), **extra})


def train_run(*, cfg: RunConfig, out: Path | None = None, data: Any = None, splits: dict | None = None,
              progress: bool = True, console: Any = None, overwrite: bool = False,
              on_epoch_end: Callable | None = None, evaluate_test: bool = True,
              warn: Callable[[str], None] | None = None) -> RunResult:
    """Train one model. ``data``/``splits`` may be passed in (a study shares them across runs).

    ``warn`` receives data warnings (skipped files, dropped rows); without it they go to ``console``.
    The process that writes ``out`` holds its lock from before the directory is read (resume or overwrite) to
    the last file: a second process given the same ``out`` is refused in one line (`ajuste.locks`).
    """
    from ajuste.train import distributed

    kwargs = dict(cfg=cfg, out=out, data=data, splits=splits, progress=progress, console=console,
                  overwrite=overwrite, on_epoch_end=on_epoch_end, evaluate_test=evaluate_test, warn=warn)
    w = distributed.setup_from_env(cfg.train.device)  # under torchrun: join the workers (no-op for one process)
    if out is None or not w.main:  # workers other than rank 0 write nothing
        return _train_run(**kwargs)
    with locks.hold(out, what="run", remove_if_unused=True):
        try:
            return _train_run(**kwargs)
        except KeyboardInterrupt:  # Ctrl-C, or SIGTERM (`Terminated`), before, during or after the epochs
            if read_status(Path(out)) == "running":
                write_status(Path(out), "interrupted")
            raise


def _train_run(*, cfg: RunConfig, out: Path | None, data: Any, splits: dict | None, progress: bool, console: Any,
               overwrite: bool, on_epoch_end: Callable | None, evaluate_test: bool,
               warn: Callable[[str], None] | None) -> RunResult:
    from ajuste.backbones.factory import create_backbone
    from ajuste.data.pipeline import Pipeline, make_preprocessing
    from ajuste.strategies.base import get_strategy, resolve_config
    from ajuste.train import distributed
    from ajuste.train.loop import fit

    t_start = time.perf_counter()
    w = distributed.world()
    if not w.main:  # workers other than rank 0 train silently and write nothing
        progress, console, warn = False, None, (lambda _msg: None)
    strategy = get_strategy(cfg.strategy.name)
    split_notes: list[str] = []
    data, splits = prepare_data(cfg, data=data, splits=splits, notes=split_notes)
    cfg = resolve_config(resolve_model(cfg, data), data.modality)
    if console is not None:  # what was read, and how (a table's columns may have been detected, not named)
        console.print(f"data: {data.source}; train/val/test {len(splits['train'])}/{len(splits['val'])}/"
                      f"{len(splits['test'])}", markup=False, highlight=False)
    for note in [*data.warnings, *split_notes]:  # not `w`: that name holds the data-parallel world used below
        if warn is not None:
            warn(note)
        elif console is not None:
            from rich.markup import escape

            console.print(f"[yellow]warning:[/] {escape(note)}", highlight=False)
    resuming = _check_run_dir(Path(out), cfg, overwrite) if out is not None and w.main else False
    if resuming:
        check_same_data(Path(out), data, splits, cfg.data.source)
    if resuming and console is not None:
        console.print(f"resuming the unfinished run in {out} ({_epochs_done(Path(out))} epochs done)",
                      markup=False, highlight=False)

    check_model_modality(cfg.model.name, None, data, cfg.data.source)
    _seed_everything(cfg.train.seed)
    backbone = create_backbone(cfg.model.name, num_classes=len(data.classes),
                               pretrained=cfg.model.pretrained and not strategy.reinitialize,
                               dropout=cfg.model.dropout or 0.0, pooling=cfg.model.pooling,
                               compact=strategy.compact)
    check_model_modality(cfg.model.name, backbone.modality, data, cfg.data.source)
    pre = make_preprocessing(data, backbone, image_size=cfg.data.image_size, max_length=cfg.data.max_length)
    pipeline = Pipeline(data, splits, pre, tokenizer=getattr(backbone, "tokenizer", None),
                        augment=cfg.data.augment, hflip=cfg.data.hflip, batch_size=cfg.data.batch_size)
    strategy.prepare(backbone, cfg)
    phases = strategy.phases(cfg, len(backbone.layer_groups()))  # checks e.g. unfreeze against the backbone

    run_dir = Path(out) if out is not None else None
    if w.main:
        if run_dir is not None and not resuming:
            _write_run_files(run_dir, cfg, data, splits, pre, backbone)
        write_status(run_dir, "running")
    # Other workers read the run directory (a checkpoint to resume) only after rank 0 has prepared it.
    distributed.barrier()
    if not w.main:
        return _worker_run(cfg, run_dir, backbone, pipeline, strategy, fit, on_epoch_end, phases)

    from ajuste.train.run_eval import evaluate_split, trainable_share

    trainable = trainable_share(backbone, phases)
    with PeakMemory() as mem:
        try:
            result = fit(backbone=backbone, pipeline=pipeline, strategy=strategy, cfg=cfg, run_dir=run_dir,
                         progress=progress, console=console, on_epoch_end=on_epoch_end, phases=phases)
        except KeyboardInterrupt:
            raise  # train_run records the interruption (wherever in the run it lands)
        except BaseException as exc:
            oom = memory_error_message(exc, batch_size=cfg.data.batch_size)
            write_status(run_dir, "failed", error=(oom or str(exc))[:500])
            if oom is not None:
                raise AjusteError(oom) from exc
            raise
    if result.interrupted:
        write_status(run_dir, "interrupted")
        summary = {"status": "interrupted", "epochs": len(result.history)}
        return RunResult(run_dir, cfg, summary, backbone, pipeline)

    summary: dict[str, Any] = {
        "status": "complete",
        "model": cfg.model.name,
        "strategy": strategy.name,
        "modality": data.modality,
        "source": str(cfg.data.source),
        "fraction": cfg.data.fraction,
        "seed": cfg.train.seed,
        "n_train": int(len(splits["train"])),
        "n_val": int(len(splits["val"])),
        "n_test": int(len(splits["test"])),
        "classes": list(data.classes),
        "epochs": len(result.history),
        "best_epoch": result.best_epoch + 1,
        "stopped_by": result.stopped_by or "completed",
        "val_loss": result.best_val_loss,
        "val_accuracy": result.best_val_accuracy,
        # kept weights that average the last epochs of a phase (strategy.stage2_average), with their validation
        "averaged": result.averaged,
        "train_seconds": round(result.seconds, 2),
        # a run repeats bit for bit only at the same thread count (one count unless a study shared idle cores)
        "threads": sorted({h.threads for h in result.history}),
        "trainable_params": trainable,
        "total_params": backbone.total_parameters(),
        "peak_memory_mb": round(mem.peak / 2**20, 1),
    }
    if w.active:
        summary["distributed"] = distributed.describe(w)
    summary.update(strategy.report(backbone, run_dir))
    if evaluate_test:
        test = evaluate_split(backbone, pipeline, "test", data.classes, cfg)
        summary["test"] = test
        summary["test_accuracy"] = test["accuracy"]
        summary["test_macro_f1"] = test["macro_f1"]
    summary["wall_seconds"] = round(time.perf_counter() - t_start, 2)
    if run_dir is not None:
        from ajuste.train.run_eval import weights_digest, weights_metadata

        from ajuste.train import stored_weights

        # the tensors it trained, plus a reference to the base weights for the rest (stored_weights)
        ref = stored_weights.save(run_dir / "model.safetensors", backbone, weights_metadata(data.classes),
                                  pretrained=cfg.model.pretrained and not strategy.reinitialize and not strategy.compact)
        if ref is not None:
            summary["weights_base"] = {k: ref[k] for k in ("model", "tensors", "bytes")}
        summary["weights_sha256"] = weights_digest(run_dir / "model.safetensors")  # load_run refuses another file
        atomic_write_json(run_dir / "summary.json", summary)
        write_status(run_dir, "complete")
        shutil.rmtree(run_dir / "checkpoint", ignore_errors=True)
    return RunResult(run_dir, cfg, summary, backbone, pipeline)


def _worker_run(cfg: RunConfig, run_dir: Path | None, backbone: Any, pipeline: Any, strategy: Any, fit: Callable,
                on_epoch_end: Callable | None, phases: list) -> RunResult:
    """A data-parallel worker other than rank 0: the same fit (every collective matched), no files."""
    from ajuste.train import distributed

    result = fit(backbone=backbone, pipeline=pipeline, strategy=strategy, cfg=cfg, run_dir=run_dir,
                 progress=False, console=None, on_epoch_end=on_epoch_end, phases=phases)
    w = distributed.world()
    summary = {"status": "interrupted" if result.interrupted else "complete", "worker": w.rank,
               "epochs": len(result.history), "val_loss": result.best_val_loss,
               "val_accuracy": result.best_val_accuracy}
    return RunResult(run_dir, cfg, summary, backbone, pipeline)


def _epochs_done(run_dir: Path) -> int:
    try:
        saved = json.loads((run_dir / "checkpoint" / "state.json").read_text())
        return int(saved.get("state", saved)["global_epoch"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0


def resolve_model(cfg: RunConfig, data: Any) -> RunConfig:
    """``model.name: auto`` (the default) → the offline backbone for this data (``zoo.auto_model``)."""
    if cfg.model.name != "auto":
        return cfg
    from ajuste.backbones.zoo import auto_model

    return cfg.override({"model.name": auto_model(data.modality, len(data))}, where="model.name=auto")


def resolve_model_early(cfg: RunConfig, data: Any = None) -> tuple[RunConfig, Any]:
    """For callers that name things after the backbone before training (a run directory, a study): the config
    with ``model.name`` resolved, and the data, loaded only when ``auto`` needed it (else as given)."""
    if cfg.model.name != "auto":
        return cfg, data
    if data is None:
        data, _ = prepare_data(cfg)
    return resolve_model(cfg, data), data


def check_model_modality(model: str, modality: str | None, data: Any, source: Any) -> None:
    """Refuse a model of the other modality: ``modality`` is the built backbone's, or None to look the name up
    among the offline models (before anything is built)."""
    if modality is None:
        from ajuste.backbones.zoo import ZOO

        entry = ZOO.get(model)
        modality = entry.modality if entry is not None else None
    if modality is not None and modality != data.modality:
        raise AjusteError(f"model {model!r} is {_a(modality)} model but {source} holds {data.modality} data; "
                          f"pick {_a(data.modality)} model (`ajuste models`)")


def _a(modality: str) -> str:
    return f"an {modality}" if modality[:1] in "aeiou" else f"a {modality}"


def _seed_everything(seed: int) -> None:
    import random

    import torch

    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def _write_run_files(run_dir: Path, cfg: RunConfig, data: Any, splits: dict, pre: Any, backbone: Any) -> None:
    check_writable(run_dir)
    save_config(cfg, run_dir / "config.yaml")
    atomic_write_json(run_dir / "labels.json", list(data.classes))
    atomic_write_json(run_dir / "preprocessing.json", pre.to_dict())
    atomic_write_json(run_dir / "backbone.json", backbone.describe())
    atomic_write_json(run_dir / "splits.json", {k: np.asarray(v).tolist() for k, v in splits.items()})
    atomic_write_json(run_dir / fingerprint.FINGERPRINT_FILE, fingerprint.fingerprint(data, splits))
    if backbone.modality == "text":
        backbone.save_pretrained_parts(run_dir / "hf")


# What an allocation failure says: torch's CPU allocator, glibc via C++ (bad_alloc), CUDA/MPS, Windows.
_OOM_MARKERS = ("can't allocate memory", "Cannot allocate memory", "not enough memory", "out of memory",
                "std::bad_alloc", "OutOfMemoryError")


def memory_error_message(exc: BaseException, *, batch_size: int | None) -> str | None:
    """One line with the batch size to try when ``exc`` (or what caused it) is an allocation failure; else None.

    The run-level place where "the batch did not fit" becomes advice: the training loop raises whatever torch
    raised (a RuntimeError from the CPU allocator, torch.OutOfMemoryError on a GPU, MemoryError from numpy)."""
    e: BaseException | None = exc
    for _ in range(10):
        if e is None:
            return None
        text = str(e)
        if isinstance(e, MemoryError) or type(e).__name__ == "OutOfMemoryError" or (
                isinstance(e, RuntimeError) and any(m in text for m in _OOM_MARKERS)):
            import re

            # torch's CPU message: "[enforce fail at alloc_cpu.cpp:117] . DefaultCPUAllocator: can't allocate
            # memory: you tried to allocate 25769803776 bytes. Error code 12 (Cannot allocate memory)"
            m = re.search(r"allocate (\d+) bytes", text)
            if m:
                first = f"an allocation of {int(m.group(1)) / 2**30:.1f} GiB failed"
            else:
                first = " ".join(text.split()).split("] . ", 1)[-1][:100] or type(e).__name__
            if batch_size and batch_size > 1:
                return (f"out of memory at batch size {batch_size} ({first}); try a smaller batch: "
                        f"--set data.batch_size={batch_size // 2}")
            return (f"out of memory ({first}); lower data.batch_size (e.g. --set data.batch_size=8), "
                    "data.image_size or data.max_length")
        e = e.__cause__ or (None if e.__suppress_context__ else e.__context__)
    return None


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


def read_summary(run_dir: Path) -> dict[str, Any] | None:
    p = Path(run_dir) / "summary.json"
    if not p.is_file():
        return None
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError:
        return None
