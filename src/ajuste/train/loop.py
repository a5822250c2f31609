"""The training loop: phases from a strategy, early stopping, checkpoints, resume, progress.

Every finished epoch appends one line to ``metrics.jsonl`` and writes a checkpoint (model, best model,
optimizer, loop state). Re-running on the same run directory continues after the last finished epoch,
in the right phase, with the optimizer state restored. RNG streams are derived from (seed, epoch), so a
resumed run draws the same shuffles and augmentations as an uninterrupted one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import ConcatDataset, DataLoader

from ajuste.backbones.base import Backbone
from ajuste.config import RunConfig
from ajuste.data.pipeline import Pipeline, batches_loader, to_device_batch
from ajuste.train.execution import amp_dtype, autocast, grad_scaler, model_device, resolve_device, to_device
from ajuste.errors import ConfigError, TrainingDiverged
from ajuste.io import append_jsonl, atomic_save_safetensors, atomic_torch_save, atomic_write_json, read_jsonl
from ajuste.strategies.base import Phase, Strategy
from ajuste.train.distributed import World, any_worker, sync_gradients, sync_module, world
from ajuste.train.frozen_bn import folded_frozen_batchnorm
from ajuste.train.param_groups import build_param_groups, make_optimizer
from ajuste.train.schedules import lr_multiplier
from ajuste.train.small_depthwise import small_map_depthwise


class CancelFit(Exception):
    """Raised by a callback (early stopping, pruning) to end training cleanly after an epoch."""


@dataclass
class EpochRecord:
    epoch: int
    phase: str
    train_loss: float
    val_loss: float
    val_accuracy: float
    lr: float
    seconds: float
    cached: bool
    # torch intra-op threads of the epoch: float sums split across another number of threads round
    # differently, so a run repeats bit for bit only at the same count
    threads: int = 0


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_epoch: int = -1
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by: str = ""
    # Set when the kept weights are a weight average: its epochs (1-based, inclusive) and validation.
    averaged: dict[str, Any] | None = None
    # During a weight-averaged phase: (val loss, val accuracy) of its best epoch so far when that beats the
    # kept best; the average is validated once, at the phase's end, so meanwhile a search's pruner judges
    # the phase by this (None outside such a phase)
    provisional: tuple[float, float] | None = None


@dataclass
class _State:
    phase_index: int = 0
    phase_epoch: int = 0  # next epoch to run within the phase
    global_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_epoch: int = -1
    best_phase: int = -1  # the phase whose weights are the best so far
    bad_epochs: int = 0
    seconds: float = 0.0
    averaged: int = 0  # epochs summed into the running weight average of the current phase (Phase.average)


class _Interrupt:
    """First Ctrl-C: finish the current epoch, checkpoint, stop. Second Ctrl-C: stop now."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def __enter__(self) -> "_Interrupt":
        try:
            self._previous = signal.signal(signal.SIGINT, self._handle)
        except ValueError:  # not the main thread: leave signals alone
            self._previous = None
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)


def amp_for(cfg: RunConfig, backbone: Backbone, *, training: bool) -> torch.dtype | None:
    """The autocast dtype of one of ``backbone``'s passes on the device it sits on (`execution.amp_dtype`)."""
    return amp_dtype(cfg.train, convnet=backbone.is_convnet, text=backbone.modality == "text", training=training,
                     device=model_device(backbone))


def use_channels_last(cfg: RunConfig, backbone: Backbone) -> bool:
    mode = cfg.train.channels_last
    return mode == "on" or (mode == "auto" and backbone.is_convnet)


@torch.no_grad()
def compute_features(backbone: Backbone, loader: DataLoader, *, amp: torch.dtype | None,
                     channels_last: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pooled features of a frozen backbone over a loader, on the model's device: (N, F) float32 and (N,)
    labels, on the CPU."""
    was_training = backbone.training
    backbone.eval()
    device = model_device(backbone)
    feats, labels = [], []
    try:
        for inputs, y in loader:
            with autocast(amp, device):
                f = backbone.features(to_device_batch(inputs, channels_last=channels_last, device=device))
            feats.append(f.float().cpu())
            labels.append(y)
    finally:
        backbone.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def predict_logits(backbone: Backbone, loader: DataLoader, *, amp: torch.dtype | None, channels_last: bool = False,
                   forward: Callable[[Any], torch.Tensor] | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels of every batch, on the CPU; ``forward`` turns a batch into logits (default: the whole
    model, on its device)."""
    was_training = backbone.training
    backbone.eval()
    device = model_device(backbone)
    out, labels = [], []
    try:
        for inputs, y in loader:
            with autocast(amp, device):
                logits = forward(inputs) if forward is not None else \
                    backbone(to_device_batch(inputs, channels_last=channels_last, device=device))
            out.append(logits.float().cpu())
            labels.append(y)
    finally:
        backbone.train(was_training)
    if not out:  # a data-parallel worker whose share of a tiny split is empty
        return torch.zeros(0, 1), torch.zeros(0, dtype=torch.long)
    return torch.cat(out), torch.cat(labels)


def _state_dict(backbone: Backbone) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in backbone.state_dict().items()}


class Checkpointer:
    """Run-directory files of the loop. Without a run directory, nothing is written; with ``write=False``
    (data-parallel workers other than rank 0) a checkpoint is read to resume but never written.

    Each save writes new files named by a sequence number (``last-7.safetensors``, ``optimizer-7.pt``, and
    ``best-7.safetensors`` when the best changed), then ``state.json`` naming them, then removes the files
    of earlier saves. Files are never overwritten in place: a kill at any moment leaves ``state.json``
    pointing at a complete set of files from one and the same moment (overwriting ``last.safetensors``
    before ``state.json`` once resumed the weights of epoch N with the loop state of epoch N-1).
    """

    def __init__(self, run_dir: Path | None, *, write: bool = True) -> None:
        self.dir = Path(run_dir) / "checkpoint" if run_dir else None
        self.metrics = Path(run_dir) / "metrics.jsonl" if run_dir else None
        self.write = write
        self._seq = 0
        self._files: dict[str, str] = {}
        self._best: dict[str, torch.Tensor] | None = None  # to be written with the next save
        # The running sum of a weight-averaged phase (Phase.average): written with every save while set.
        self.average: dict[str, torch.Tensor] | None = None
        self._saved_at, self._save_cost, self._unsaved = -math.inf, 0.0, False

    # An epoch's save is skipped while the time since the last save is under this many times what a save
    # costs: a linear probe's head epoch on cached features takes 20 ms and writing the model and
    # optimizer 100-150 ms, so saving each one made checkpoints most of a short run (4.2 of 7.6 s of a
    # 27-epoch linear probe). A kill then redoes a few seconds of epochs at most; phase ends, Ctrl-C and
    # every epoch longer than the skip window are still saved.
    SKIP_WINDOW = 20

    def exists(self) -> bool:
        return bool(self.dir and (self.dir / "state.json").is_file())

    def save(self, backbone: Backbone, optimizer: Any, state: _State, *, force: bool = True) -> None:
        """Write a checkpoint; with ``force=False`` (after an epoch) only if enough time passed since the
        last one (``SKIP_WINDOW``) — ``flush`` writes a skipped one."""
        if not self.dir or not self.write:
            return
        now = time.perf_counter()
        if not force and now - self._saved_at < self.SKIP_WINDOW * self._save_cost:
            self._unsaved = True
            return
        self._seq += 1
        files = dict(self._files, last=f"last-{self._seq}.safetensors", optimizer=f"optimizer-{self._seq}.pt")
        files.pop("average", None)
        if self.average is not None:
            files["average"] = f"average-{self._seq}.safetensors"
            atomic_save_safetensors(self.dir / files["average"], self.average)
        atomic_save_safetensors(self.dir / files["last"], backbone.state_dict())
        atomic_torch_save(self.dir / files["optimizer"], optimizer.state_dict())
        if self._best is not None:
            files["best"] = f"best-{self._seq}.safetensors"
            atomic_save_safetensors(self.dir / files["best"], self._best)
            self._best = None
        # state.json last: until it is replaced, the previous one still names a complete set of files
        atomic_write_json(self.dir / "state.json", {"state": asdict(state), "seq": self._seq, "files": files})
        self._files = files
        self._remove_unreferenced()
        self._saved_at = time.perf_counter()
        self._save_cost, self._unsaved = self._saved_at - now, False

    def flush(self, backbone: Backbone, optimizer: Any, state: _State) -> None:
        """Write the checkpoint an epoch skipped (before stopping on Ctrl-C)."""
        if self._unsaved:
            self.save(backbone, optimizer, state)

    def save_best(self, best: dict[str, torch.Tensor]) -> None:
        """Remember the new best weights; they are written by the next ``save``, with the state they belong to."""
        self._best = best

    def save_last_good(self, weights: dict[str, torch.Tensor]) -> None:
        """After a divergence: the weights to keep, as ``best.safetensors`` (no resume follows a failed run)."""
        if self.dir and self.write:
            atomic_save_safetensors(self.dir / "best.safetensors", weights)

    def _remove_unreferenced(self) -> None:
        keep = set(self._files.values()) | {"state.json"}
        for f in self.dir.iterdir():
            if f.name not in keep and f.suffix in (".safetensors", ".pt"):
                f.unlink(missing_ok=True)

    def load(self) -> tuple[_State, dict[str, torch.Tensor], dict[str, torch.Tensor] | None, dict | None]:
        """State, last weights, best weights, optimizer state; sets ``average`` when a phase was averaging."""
        import json

        from safetensors.torch import load_file

        assert self.dir is not None
        saved = json.loads((self.dir / "state.json").read_text())
        if "state" not in saved:  # written by ajuste 0.1 before files were numbered
            saved = {"state": saved, "seq": 0, "files": {"last": "last.safetensors", "optimizer": "optimizer.pt"}}
            if (self.dir / "best.safetensors").is_file():
                saved["files"]["best"] = "best.safetensors"
        state = _State(**saved["state"])
        self._seq, self._files = int(saved["seq"]), dict(saved["files"])
        last = load_file(self.dir / self._files["last"])
        best = load_file(self.dir / self._files["best"]) if "best" in self._files else None
        self.average = load_file(self.dir / self._files["average"]) if "average" in self._files else None
        opt = torch.load(self.dir / self._files["optimizer"], map_location="cpu", weights_only=True)
        return state, last, best, opt

    def history(self, upto: int) -> list[EpochRecord]:
        if not self.metrics:
            return []
        rows = [r for r in read_jsonl(self.metrics) if r.get("epoch", 10**9) < upto]
        return [EpochRecord(**{k: r[k] for k in EpochRecord.__dataclass_fields__ if k in r}) for r in rows]

    def truncate_metrics(self, upto: int) -> None:
        """Drop metric lines of epochs after the checkpoint (a kill between the two writes)."""
        if not self.write or not self.metrics or not self.metrics.exists():
            return
        from ajuste.io import atomic_write_text
        import json

        rows = [r for r in read_jsonl(self.metrics) if r.get("epoch", 10**9) < upto]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))


def fit(*, backbone: Backbone, pipeline: Pipeline, strategy: Strategy, cfg: RunConfig, run_dir: Path | None = None,
        progress: bool = True, console: Any = None,
        on_epoch_end: Callable[[EpochRecord, FitResult], None] | None = None) -> FitResult:
    """Train ``backbone`` with ``strategy``'s phases; returns the history with the best weights loaded.

    ``on_epoch_end`` may raise ``CancelFit`` (e.g. an Optuna pruner) to stop after that epoch.
    """
    w = world()
    if w.active:
        from ajuste.train.distributed import threads_per_worker

        torch.set_num_threads(cfg.train.threads or threads_per_worker(w))
        if cfg.train.grad_accum > 1:
            raise ConfigError(f"train.grad_accum={cfg.train.grad_accum} with {w.size} data-parallel workers is not "
                              f"supported yet; the workers already split one batch: raise data.batch_size instead")
    else:
        torch.set_num_threads(cfg.train.threads or max(1, torch.get_num_threads()))
    device = resolve_device(cfg.train.device)
    backbone.to(device)
    # a dense product in place of oneDNN's depthwise backward: a CPU measure (DESIGN.md), not a GPU one
    small_maps = cfg.train.small_depthwise and backbone.is_convnet and device.type == "cpu"
    fold = cfg.train.fold_bn and backbone.is_convnet and pipeline.pre.modality == "image"
    with flushed_denormals(), small_map_depthwise(backbone, enabled=small_maps), \
            folded_frozen_batchnorm(backbone.net, _image_probe(pipeline, device) if fold else None, enabled=fold):
        return _fit(backbone=backbone, pipeline=pipeline, strategy=strategy, cfg=cfg, run_dir=run_dir,
                    progress=progress, console=console, on_epoch_end=on_epoch_end, w=w)


@contextlib.contextmanager
def flushed_denormals() -> Iterator[None]:
    """Flush denormal floats to zero for the block, then restore the CPU's previous mode.

    Denormals (tiny activations/gradients, common right after re-initialisation) run through a slow
    path on x86; flushing them changes nothing that matters for training. The mode is a process-wide
    CPU flag: left on, it would break IEEE arithmetic for the caller's own code after ``fit`` returns.
    """
    tiny = torch.tensor([1e-40], dtype=torch.float32)  # a float32 denormal
    was_on = bool((tiny * 1.0).item() == 0.0)
    torch.set_flush_denormal(True)
    try:
        yield
    finally:
        torch.set_flush_denormal(was_on)


def _fit(*, backbone: Backbone, pipeline: Pipeline, strategy: Strategy, cfg: RunConfig, run_dir: Path | None,
         progress: bool, console: Any, on_epoch_end: Callable[[EpochRecord, FitResult], None] | None,
         w: Any) -> FitResult:
    pipeline.configure(text_batches=cfg.train.text_batches, image_memory=cfg.train.image_memory)
    steps_per_epoch = max(1, math.ceil(len(pipeline.splits["train"]) / pipeline.batch_size))
    phases = stretch_phases(strategy.phases(cfg, len(backbone.layer_groups())), steps_per_epoch,
                            cfg.train.min_steps)
    ckpt = Checkpointer(run_dir, write=w.main)
    device = model_device(backbone)
    channels_last = use_channels_last(cfg, backbone)
    if channels_last:
        backbone.to(memory_format=torch.channels_last)

    state = _State()
    best_weights = _state_dict(backbone)
    resume_opt = None
    if ckpt.exists():
        state, last, best, resume_opt = ckpt.load()
        if state.phase_epoch == 0:
            resume_opt = None  # saved at a phase boundary: the next phase builds a fresh optimizer
        backbone.load_state_dict(last)
        best_weights = best if best is not None else _state_dict(backbone)
        ckpt.truncate_metrics(state.global_epoch)
    else:  # a start from scratch: lines of a run killed after its first epoch's line, before its first checkpoint
        ckpt.truncate_metrics(0)
    result = FitResult(history=ckpt.history(state.global_epoch), best_val_loss=state.best_val_loss,
                       best_val_accuracy=state.best_val_accuracy, best_epoch=state.best_epoch)
    planned = sum(p.epochs for p in phases)

    with _Interrupt() as interrupt, _progress(progress, console) as bar:
        total_task = bar.add_task("total", total=planned, completed=state.global_epoch) if bar else None
        for pi in range(state.phase_index, len(phases)):
            phase = phases[pi]
            if pi != state.phase_index:
                state.phase_index, state.phase_epoch, state.bad_epochs = pi, 0, 0
            backbone.set_trainable(phase.train_groups, freeze_bn_stats=cfg.model.bn == "frozen",
                                   select=phase.select)
            groups = build_param_groups(backbone.layer_groups(), trainable=phase.train_groups, lr=phase.lr,
                                        head_lr=phase.head_lr, weight_decay=cfg.optim.weight_decay,
                                        layer_decay=cfg.optim.layer_decay,
                                        requires_grad_only=phase.select is not None)
            optimizer = _fast_optimizer(make_optimizer(cfg.optim.name, groups, momentum=cfg.optim.momentum), cfg)
            if resume_opt is not None:
                optimizer.load_state_dict(resume_opt)
                resume_opt = None
            train_feed, val_feed = _phase_feeds(backbone, pipeline, cfg, phase, channels_last=channels_last, w=w,
                                                console=console)
            scaler = grad_scaler(train_feed.amp, device)  # fp16 on a GPU; kept across the phase's epochs
            epoch_steps = steps_per_epoch * phase.repeat
            total_steps = epoch_steps * phase.epochs
            for e in range(state.phase_epoch, phase.epochs):
                t0 = time.perf_counter()
                epoch_seed = cfg.train.seed * 100_003 + state.global_epoch
                torch.manual_seed(epoch_seed)
                loader = train_feed.make(epoch_seed, phase.repeat)
                task = bar.add_task(f"epoch {state.global_epoch + 1}/{planned} [{phase.name}]",
                                    total=len(loader)) if bar else None
                train_loss, lr_now = _train_epoch(
                    backbone, loader, optimizer, cfg, forward=train_feed.forward, amp=train_feed.amp, scaler=scaler,
                    step0=e * epoch_steps, total_steps=total_steps, bar=bar, task=task,
                    on_diverge=lambda lr: _diverged(backbone, best_weights, ckpt, lr, state, cfg.optim.lr), w=w)
                if w.active:
                    sync_module(backbone)  # BatchNorm statistics of each worker's share, averaged
                val_loss, val_acc = _validate(backbone, val_feed.make(0, 1), cfg, channels_last=channels_last, w=w,
                                              forward=val_feed.forward, amp=val_feed.amp)
                if bar:
                    bar.remove_task(task)
                if not math.isfinite(val_loss):
                    _diverged(backbone, best_weights, ckpt, lr_now, state, cfg.optim.lr)
                seconds = time.perf_counter() - t0
                rec = EpochRecord(state.global_epoch, phase.name, train_loss, val_loss, val_acc, lr_now, seconds,
                                  train_feed.cached, torch.get_num_threads())
                result.history.append(rec)
                # A weight-averaged phase offers only its average (at its end) as a candidate best.
                improved = not phase.average and _improved(cfg.train.monitor, val_loss, val_acc, state)
                if improved:
                    state.best_val_loss, state.best_val_accuracy = val_loss, val_acc
                    state.best_epoch, state.best_phase, state.bad_epochs = state.global_epoch, pi, 0
                    best_weights = _state_dict(backbone)
                    ckpt.save_best(best_weights)
                else:
                    state.bad_epochs += 1
                if phase.average and e >= phase.epochs - phase.average:
                    ckpt.average = _add_weights(ckpt.average, backbone)
                    state.averaged += 1
                if phase.average:
                    ref = result.provisional
                    if (_beats(cfg.train.monitor, val_loss, val_acc, *ref) if ref
                            else _improved(cfg.train.monitor, val_loss, val_acc, state)):
                        result.provisional = (val_loss, val_acc)
                # the best epoch so far, for on_epoch_end callbacks (a search reports it to its pruner)
                result.best_val_loss, result.best_val_accuracy = state.best_val_loss, state.best_val_accuracy
                result.best_epoch = state.best_epoch
                state.global_epoch += 1
                state.phase_epoch = e + 1
                state.seconds += seconds
                if ckpt.metrics and ckpt.write:
                    append_jsonl(ckpt.metrics, asdict(rec))
                ckpt.save(backbone, optimizer, state, force=False)
                _report(console, rec, improved)
                if bar:
                    bar.update(total_task, advance=1)
                stop = ""
                if on_epoch_end is not None:
                    try:
                        on_epoch_end(rec, result)
                    except CancelFit as exc:
                        stop = str(exc) or "cancelled"
                if any_worker(interrupt.requested):
                    result.interrupted, result.stopped_by = True, "interrupted (Ctrl-C)"
                    ckpt.flush(backbone, optimizer, state)
                    break
                if stop:
                    result.stopped_by = stop
                    break
                # No early stop in the first third of a phase, nor before min_steps optimizer steps:
                # a re-initialised network's validation loss often rises before it falls.
                warm_steps = min(total_steps, max(0.3 * total_steps, cfg.train.min_steps))
                warm = (e + 1) * epoch_steps >= warm_steps
                if phase.patience is not None and warm and state.bad_epochs >= phase.patience:
                    if bar:
                        bar.update(total_task, advance=phase.epochs - e - 1)
                    break
            if result.interrupted or result.stopped_by:
                break
            if phase.average and state.averaged:
                best_weights = _take_average(backbone, pipeline, cfg, ckpt, state, result, best_weights,
                                             val_feed=val_feed, channels_last=channels_last, w=w, console=console)
            # Next phase starts from the best weights found so far, not the last ones.
            backbone.load_state_dict(best_weights)
            state.phase_epoch = phase.epochs
            state.bad_epochs = 0
            if pi + 1 < len(phases):
                state.phase_index, state.phase_epoch = pi + 1, 0
            ckpt.save(backbone, optimizer, state)

    backbone.load_state_dict(best_weights)
    backbone.set_trainable(None)
    result.best_val_loss, result.best_val_accuracy = state.best_val_loss, state.best_val_accuracy
    result.best_epoch, result.seconds = state.best_epoch, state.seconds
    return result


def _add_weights(total: dict[str, torch.Tensor] | None, backbone: Backbone) -> dict[str, torch.Tensor]:
    """The running sum of the floating-point weights and buffers, plus this epoch's."""
    current = {k: v.detach() for k, v in backbone.state_dict().items() if v.is_floating_point()}
    if total is None:
        return {k: v.float().clone() for k, v in current.items()}
    for k, v in current.items():
        total[k] += v.float()
    return total


def _take_average(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, ckpt: Checkpointer, state: _State,
                  result: FitResult, best_weights: dict[str, torch.Tensor], *, val_feed: _Feed, channels_last: bool,
                  w: World, console: Any) -> dict[str, torch.Tensor]:
    """End of a weight-averaged phase: load the mean of its last epochs' weights (stochastic weight
    averaging, Izmailov et al. 2018), recompute BatchNorm statistics if they trained, validate, and keep
    it if it beats the best of the earlier phases. Returns the best weights."""
    assert ckpt.average is not None
    n, total = state.averaged, ckpt.average
    current = backbone.state_dict()
    backbone.load_state_dict({k: (total[k] / n).to(v.dtype) if k in total else v for k, v in current.items()})
    if cfg.model.bn == "train":
        _refresh_batchnorm(backbone, pipeline, channels_last=channels_last, w=w)
    val_loss, val_acc = _validate(backbone, val_feed.make(0, 1), cfg, channels_last=channels_last, w=w,
                                  forward=val_feed.forward, amp=val_feed.amp)
    kept = math.isfinite(val_loss) and _improved(cfg.train.monitor, val_loss, val_acc, state)
    first, last = state.global_epoch - n + 1, state.global_epoch
    result.averaged = {"epochs": [first, last], "val_loss": val_loss, "val_accuracy": val_acc, "kept": kept}
    if kept:
        state.best_val_loss, state.best_val_accuracy, state.best_epoch = val_loss, val_acc, last - 1
        state.best_phase = state.phase_index
        best_weights = _state_dict(backbone)
        ckpt.save_best(best_weights)
    result.best_val_loss, result.best_val_accuracy = state.best_val_loss, state.best_val_accuracy
    result.best_epoch, result.provisional = state.best_epoch, None
    ckpt.average, state.averaged = None, 0
    if console is not None:
        console.print(f"weights of epochs {first}-{last} averaged: val_loss {val_loss:.4f}  val_acc {val_acc:.4f}"
                      + ("  *" if kept else "  (an earlier phase's best stays)"), markup=False, highlight=False)
    return best_weights


@torch.no_grad()
def _refresh_batchnorm(backbone: Backbone, pipeline: Pipeline, *, channels_last: bool, w: World) -> None:
    """BatchNorm running statistics of averaged weights: a cumulative mean over one pass of the training
    split (no augmentation); the averaged statistics of the epochs do not belong to the averaged weights."""
    was_training = backbone.training
    backbone.train()  # frozen norms stay in eval mode (Backbone.train)
    norms = [m for m in backbone.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training]
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    try:
        device = model_device(backbone)
        for inputs, _ in pipeline.loader("train", world=w):
            backbone(to_device_batch(inputs, channels_last=channels_last, device=device))
    finally:
        for m, momentum in zip(norms, momenta):
            m.momentum = momentum
        backbone.train(was_training)
    if w.active:
        sync_module(backbone)


def _fast_optimizer(optimizer: Any, cfg: RunConfig) -> Any:
    """AdamW with its fused kernel (train.fused_adamw): the same update in one pass over all parameters.
    Measured on a 1-thread AVX2 EPYC for 22.7 M parameters (MiniLM-L6): 0.027 s per step instead of 0.25 s
    for the per-tensor loop torch uses on CPU by default — a fifth of a short-sequence training step.
    Hugging Face's Trainer uses it by default. Same hyperparameters, same state-dict format (resume works
    across the switch)."""
    if not cfg.train.fused_adamw or type(optimizer) is not torch.optim.AdamW:
        return optimizer
    keep = ("betas", "eps", "amsgrad", "maximize")
    # The groups carry every default the first optimizer filled in (fused=None among them): say it per group.
    groups = [{**g, "fused": True, "foreach": None} for g in optimizer.param_groups]
    try:
        return torch.optim.AdamW(groups, **{k: optimizer.defaults[k] for k in keep if k in optimizer.defaults},
                                 fused=True)
    except (RuntimeError, ValueError, TypeError):  # a torch or device without the fused kernel
        return optimizer


def _improved(monitor: str, val_loss: float, val_acc: float, state: _State) -> bool:
    """Whether this epoch is the new best: lower val loss, or (monitor val_accuracy) higher accuracy,
    ties broken by the loss. The first epoch always is.

    Across phases an accuracy tie is not broken by the loss: a later phase (end-to-end after head-only)
    replaces an earlier phase's best only when it is more accurate. Its lower loss on a validation split
    it already gets right says that it is surer, not that it is better (measured by held-out folds of
    hymenoptera's training images, docs/results.md), and it trained more weights on the same few examples."""
    if state.best_epoch < 0:
        return True
    if monitor == "val_accuracy" and 0 <= state.best_phase < state.phase_index:
        return val_acc > state.best_val_accuracy + 1e-9
    return _beats(monitor, val_loss, val_acc, state.best_val_loss, state.best_val_accuracy)


def _beats(monitor: str, val_loss: float, val_acc: float, best_loss: float, best_acc: float) -> bool:
    if monitor == "val_accuracy":
        if val_acc > best_acc + 1e-9:
            return True
        return abs(val_acc - best_acc) <= 1e-9 and val_loss < best_loss - 1e-4
    return val_loss < best_loss - 1e-4


def stretch_phases(phases: list[Phase], steps_per_epoch: int, min_steps: int) -> list[Phase]:
    """On small data an epoch is a handful of steps: 20 epochs of 2 steps stop before BatchNorm
    statistics or the head have settled. Each epoch of such a phase passes over the training data
    ``repeat`` times so the phase gets about ``min_steps`` optimizer steps, while validation (often
    larger than the training set then) still runs once per epoch."""
    out = []
    for p in phases:
        planned = max(1, p.epochs * steps_per_epoch)
        repeat = max(1, round(min_steps / planned))
        out.append(dataclasses.replace(p, repeat=repeat))
    return out


@dataclass
class _Feed:
    """The batches of one split in one phase, and how the model turns a batch into logits."""

    make: Callable[[int, int], Any]  # (seed, repeat) -> loader
    forward: Callable[[Any], torch.Tensor]
    amp: torch.dtype | None  # autocast dtype of the pass (None: fp32)
    cached: bool


def _phase_feeds(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, phase: Phase, *, channels_last: bool,
                 w: World = World(), console: Any = None) -> tuple[_Feed, _Feed]:
    """Train and validation feeds of a phase: live batches through the whole network, or activations of
    the frozen prefix from the cache (ajuste.train.cache) through the trainable rest."""
    device = model_device(backbone)

    def live(inputs: Any) -> torch.Tensor:
        return backbone(to_device_batch(inputs, channels_last=channels_last, device=device))

    bs = pipeline.batch_size
    train = _Feed(lambda seed, repeat=1: pipeline.loader("train", shuffle=True, augment=True, seed=seed,
                                                          repeat=repeat, world=w),
                  live, amp_for(cfg, backbone, training=True), False)
    val_loader = pipeline.loader("val", batch_size=max(64, bs), world=w)
    val = _Feed(lambda seed, repeat=1: val_loader, live, amp_for(cfg, backbone, training=False), False)
    cut = _cut(backbone, cfg, phase)
    if cut is None:
        return train, val
    from ajuste.train import cache

    head = cut.name == "features"
    # A cut below the head pays only if the split is used more than once (or is already cached);
    # head-only phases always train on features (no augmentation then).
    train_entry = val_entry = None
    if head or not pipeline.augmenting:
        train_entry = _activations(backbone, pipeline, cfg, cut, "train", channels_last=channels_last,
                                   worth=head or phase.epochs * phase.repeat > 1, console=console)
    else:
        cache.notice_once(f"data.augment={cfg.data.augment}: augmented inputs change the frozen layers' output "
                          f"every epoch, so training runs them live (validation still uses the activation cache; "
                          f"data.augment=none caches training too)", console)
    val_entry = _activations(backbone, pipeline, cfg, cut, "val", channels_last=channels_last,
                             worth=head or phase.epochs > 1, console=console)

    def from_cache(acts: Any) -> torch.Tensor:
        acts = to_device(acts, device)  # the cache lives on the CPU (or on disk)
        if head:
            return backbone.classify(acts)
        if channels_last and isinstance(acts, torch.Tensor) and acts.ndim == 4:
            acts = acts.contiguous(memory_format=torch.channels_last)
        return backbone.classify(backbone.forward_suffix(acts, cut.group))

    if train_entry is not None:
        train_labels = torch.as_tensor(pipeline.labels("train"), dtype=torch.long)
        train = _Feed(lambda seed, repeat=1: _cached_loader(train_entry, train_labels, bs, seed=seed, repeat=repeat,
                                                            shuffle=True, w=w),
                      from_cache, None if head else amp_for(cfg, backbone, training=True), True)
    if val_entry is not None:
        val_labels = torch.as_tensor(pipeline.labels("val"), dtype=torch.long)
        loader = _cached_loader(val_entry, val_labels, 256 if head else max(64, bs), seed=0, repeat=1, shuffle=False,
                                w=w)
        val = _Feed(lambda seed, repeat=1: loader, from_cache, None if head else amp_for(cfg, backbone, training=False),
                    True)
    return train, val


def _cut(backbone: Backbone, cfg: RunConfig, phase: Phase) -> Any:
    """Where this phase's forward pass can start from cached activations, or None."""
    if cfg.train.cache == "off":
        return None
    if phase.head_only:
        return backbone.split(-1) if cfg.train.cache_features else None
    if phase.select is not None or phase.train_groups is None:
        return None  # PEFT adapters and end-to-end phases train inside every group
    n = len(backbone.layer_groups())
    first = min(i % n for i in phase.train_groups)
    if first == 0:
        return None
    cut = backbone.split(first)
    if cut is None or any(isinstance(t, torch.nn.Parameter) and t.requires_grad for _, t in backbone.prefix_state(cut)):
        return None
    return cut


def _activations(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, cut: Any, split: str, *,
                 channels_last: bool, worth: bool, console: Any) -> Any:
    """The cache entry of ``split`` at ``cut``, computed now if ``worth`` it; None to run live."""
    from ajuste.train import cache

    n = len(pipeline.splits[split])
    if n == 0:
        return None
    settings = cache.Settings.from_config(cfg.train)
    amp = amp_for(cfg, backbone, training=False)
    device = model_device(backbone)
    parts = cache.cache_key(backbone=backbone, split=cut, pipeline=pipeline, split_name=split, amp=amp, device=device,
                            channels_last=channels_last, dtype=settings.dtype)
    parts["compute"]["fold_bn"] = bool(cfg.train.fold_bn and backbone.modality == "image")
    if not worth:
        return cache.lookup(cache.digest_json(parts), settings, console=console)
    lengths = None
    if cut.ragged:
        lengths = np.asarray([len(x["input_ids"]) for x in pipeline.dataset(split, augment=False).encodings])

    @torch.no_grad()
    def compute():
        loader = pipeline.loader(split, batch_size=max(64, pipeline.batch_size))
        was_training = backbone.training
        backbone.eval()
        runner = _frozen_runner(backbone, pipeline, cfg, channels_last=channels_last)
        try:
            for inputs, _ in loader:
                with autocast(amp, device):
                    acts = runner.forward_prefix(to_device_batch(inputs, channels_last=channels_last, device=device),
                                                 cut.group)
                lens = inputs["attention_mask"].sum(1).numpy() if cut.ragged else None
                yield acts.float().cpu(), lens  # computed on the device, kept on the CPU (or disk)
        finally:
            backbone.train(was_training)

    return cache.activations(key_parts=parts, settings=settings, compute=compute, n=n, lengths=lengths,
                             console=console)


def _frozen_runner(backbone: Backbone, pipeline: Pipeline, cfg: RunConfig, *, channels_last: bool) -> Backbone:
    """The model that computes frozen activations: with train.fold_bn, a copy with BatchNorm folded into
    the convolutions (checked on a random probe batch against the model itself; see inference_copy)."""
    if not cfg.train.fold_bn or backbone.modality != "image":
        return backbone
    return backbone.inference_copy(to_device_batch(_image_probe(pipeline, model_device(backbone)),
                                                   channels_last=channels_last))


def _image_probe(pipeline: Pipeline, device: torch.device | None = None) -> torch.Tensor:
    """Two random images at the pipeline's input size: the batch that BatchNorm folding is checked on."""
    size = pipeline.pre.image_size
    return to_device(torch.randn(2, 3, size, size, generator=torch.Generator().manual_seed(0)), device)


class _Rows(torch.utils.data.Dataset):
    def __init__(self, n: int) -> None:
        self.n = n

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int) -> int:
        return i


def _cached_loader(entry: Any, labels: torch.Tensor, batch_size: int, *, seed: int, repeat: int, shuffle: bool,
                   w: World) -> DataLoader:
    """Batches of cached rows: the same samplers as live batches of the same size (images: the shuffles of
    a plain DataLoader; text: length-bucketed, padded per batch)."""
    from ajuste.data.pipeline import LengthBucketSampler, shard_batches

    def collate(idx: list[int]) -> tuple[Any, torch.Tensor]:
        return entry.batch(idx), labels[torch.as_tensor(idx, dtype=torch.long)]

    ds: Any = _Rows(entry.n) if repeat == 1 else ConcatDataset([_Rows(entry.n)] * repeat)
    gen = torch.Generator().manual_seed(seed)
    if entry.kind == "ragged":
        lengths = np.tile(entry.lengths, repeat)
        if shuffle:
            sampler: Any = LengthBucketSampler(lengths.tolist(), batch_size, shuffle=True, generator=gen)
        else:  # evaluation: sorted by length, the least padding (outputs are only summed)
            order = np.argsort(lengths, kind="stable").tolist()
            sampler = [order[i:i + batch_size] for i in range(0, len(order), batch_size)]
        return DataLoader(ds, batch_sampler=shard_batches(sampler, w, shuffle), collate_fn=collate, num_workers=0)
    if w.active:
        return batches_loader(ds, batch_size, shuffle=shuffle, generator=gen, world=w, collate_fn=collate)
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, collate_fn=collate)


def _train_epoch(backbone: Backbone, loader: DataLoader, optimizer: Any, cfg: RunConfig, *,
                 forward: Callable[[Any], torch.Tensor], amp: torch.dtype | None, step0: int, total_steps: int,
                 bar: Any, task: Any, on_diverge: Callable[[float], None], w: World = World(),
                 scaler: Any = None) -> tuple[float, float]:
    """One pass over ``loader``. ``scaler``: fp16's `torch.amp.GradScaler`, or None.

    With ``train.grad_accum`` N, an optimizer step follows every N batches (and the last, shorter window); the
    window's summed loss is backpropagated and its gradient divided by the window's examples before the
    step, so the step takes the mean over those examples, as one batch N times larger would."""
    backbone.train()
    device = model_device(backbone)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    accum = max(1, cfg.train.grad_accum)
    # len(loader) is not asked: a sharded or bucketed sampler may draw its shuffle to answer it. With
    # accumulation, the batch after the current one is fetched ahead, to know where the last window ends.
    total, count, lr_now = 0.0, 0, 0.0
    in_window = 0
    for i, ((inputs, y), last) in _batches(loader, lookahead=accum > 1):
        if i % accum == 0:  # an optimizer step begins: the schedule is a pure function of progress
            mult = lr_multiplier(cfg.optim.schedule, (step0 + i) / max(1, total_steps), warmup=cfg.optim.warmup)
            for g in optimizer.param_groups:
                g["lr"] = g["base_lr"] * mult
            lr_now = max(g["lr"] for g in optimizer.param_groups)
        y = to_device(y, device)
        with autocast(amp, device):
            logits = forward(inputs)
        if w.active:
            # Summed over this worker's share; sync_gradients divides by the global batch size, so
            # every worker steps with the gradient one process would compute on the whole batch.
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing, reduction="sum")
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            n, loss_sum = sync_gradients(params, len(y), loss.item())
            if not math.isfinite(loss_sum):
                on_diverge(lr_now)
        else:
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.optim.label_smoothing)
            if not torch.isfinite(loss):
                on_diverge(lr_now)
            if accum == 1:
                optimizer.zero_grad(set_to_none=True)
            backward = loss if accum == 1 else loss * len(y)  # accumulated: summed, divided at the step
            (scaler.scale(backward) if scaler is not None else backward).backward()
            n, loss_sum = len(y), loss.item() * len(y)
        in_window += n
        if accum == 1 or (i + 1) % accum == 0 or last:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip (and divide) the true gradients, not the scaled ones
            if accum > 1 and not w.active:
                for p in params:
                    if p.grad is not None:
                        p.grad.div_(in_window)
            if cfg.optim.grad_clip > 0:
                torch.nn.utils.clip_grad_norm_(params, cfg.optim.grad_clip)
            if scaler is not None:
                scaler.step(optimizer)  # skipped when the scaled gradients overflowed; the scale then drops
                scaler.update()
            else:
                optimizer.step()
            if accum > 1:
                optimizer.zero_grad(set_to_none=True)
            in_window = 0
        total += loss_sum
        count += n
        if bar:
            bar.update(task, advance=1, description=bar.tasks[_task_index(bar, task)].description.split(" loss")[0]
                       + f" loss {total / count:.4f}")
    return total / max(1, count), lr_now


def _batches(loader: Any, *, lookahead: bool) -> Iterator[tuple[int, tuple[Any, bool]]]:
    """(index, (batch, is_last)) for each batch. Without ``lookahead`` is_last is always False and batches are
    fetched as before (a fetch ahead would move augmentations' draws from torch's global RNG against the
    training step's dropout); with it, one batch is fetched ahead to know the last."""
    if not lookahead:
        for i, batch in enumerate(loader):
            yield i, (batch, False)
        return
    it = iter(loader)
    try:
        prev = next(it)
    except StopIteration:
        return
    i = 0
    for item in it:
        yield i, (prev, False)
        prev, i = item, i + 1
    yield i, (prev, True)


def _task_index(bar: Any, task: Any) -> int:
    for i, t in enumerate(bar.tasks):
        if t.id == task:
            return i
    return 0


@torch.no_grad()
def _validate(backbone: Backbone, loader: DataLoader, cfg: RunConfig, *, channels_last: bool,
              w: World = World(), forward: Callable[[Any], torch.Tensor] | None = None,
              amp: torch.dtype | None | str = "auto") -> tuple[float, float]:
    if amp == "auto":
        amp = amp_for(cfg, backbone, training=False)
    logits, y = predict_logits(backbone, loader, amp=amp, channels_last=channels_last, forward=forward)
    if w.active:  # each worker saw its share of the validation split
        from ajuste.train.distributed import all_reduce_sum

        local = [F.cross_entropy(logits, y, reduction="sum").item(), (logits.argmax(1) == y).sum().item(),
                 len(y)] if len(y) else [0.0, 0.0, 0.0]
        loss_sum, correct, n = all_reduce_sum(local)
        return loss_sum / max(1, n), correct / max(1, n)
    loss = F.cross_entropy(logits, y).item()
    acc = (logits.argmax(1) == y).float().mean().item()
    return loss, acc


def _diverged(backbone: Backbone, best: dict[str, torch.Tensor], ckpt: Checkpointer, lr: float, state: _State,
              base_lr: float) -> None:
    backbone.load_state_dict(best)
    ckpt.save_last_good(best)
    # Suggest from the configured base LR (what the user sets), not the momentary LR of the
    # fastest group, which includes the head multiplier and the schedule.
    raise TrainingDiverged(
        f"loss became NaN/inf at epoch {state.global_epoch + 1} (LR {lr:.2g}); kept the last good weights — "
        f"try a lower LR, e.g. --set optim.lr={max(base_lr / 10, 1e-7):.0e}")


def _report(console: Any, rec: EpochRecord, improved: bool) -> None:
    if console is None:
        return
    mark = " *" if improved else ""
    console.print(f"epoch {rec.epoch + 1:>3} [{rec.phase}] train_loss {rec.train_loss:.4f}  val_loss {rec.val_loss:.4f}"
                  f"  val_acc {rec.val_accuracy:.4f}  lr {rec.lr:.2e}  {rec.seconds:.1f}s{mark}", markup=False,
                  highlight=False, soft_wrap=True)


@contextlib.contextmanager
def _progress(enabled: bool, console: Any):
    if not enabled:
        yield None
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True) as bar:
        yield bar


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else float("nan")
