"""The training loop: phases from a strategy, early stopping, checkpoints, resume, progress.

Every finished epoch appends one line to ``metrics.jsonl`` and writes a checkpoint (model, best model,
optimizer, loop state). Re-running on the same run directory continues after the last finished epoch,
in the right phase, with the optimizer state restored. RNG streams are derived from (seed, epoch), so a
resumed run draws the same shuffles and augmentations as an uninterrupted one.
"""


from __future__ import annotations

import contextlib
import dataclasses
import math
import signal
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np
import torch

from ajuste.backbones.base import Backbone
from ajuste.backbones.frozen_bn import folded_frozen_batchnorm
from ajuste.config import RunConfig
from ajuste.data.pipeline import Pipeline
from ajuste.errors import TrainingDiverged
from ajuste.strategies.base import Phase, Strategy
from ajuste.training.callbacks import Callback, CancelFit, Fit, standard_callbacks
from ajuste.training.checkpoint import (
    Checkpointer,
    EpochRecord,
    FitResult,
    _State,
    _state_dict,
)
from ajuste.training.distributed import (
    any_worker,
    data_parallel,
    sync_batchnorm,
    sync_module,
    threads_per_worker,
    world,
)
from ajuste.training.execution import grad_scaler, model_device, resolve_device
from ajuste.training.feeds import _image_probe, _phase_feeds
from ajuste.training.inference import (
    amp_for,
    compute_features,
    predict_logits,
    use_channels_last,
)
from ajuste.training.param_groups import build_param_groups, make_optimizer
from ajuste.training.small_depthwise import small_map_depthwise
from ajuste.training.steps import _add_weights, _take_average, _train_epoch, _validate, class_weights

# The loop's public names; the records, inference and steps live in their own modules (training/checkpoint.py,
# inference.py, feeds.py, steps.py) and are re-exported here for the callers that import them from the loop.
__all__ = ["Callback", "CancelFit", "Checkpointer", "EpochRecord", "FitResult", "amp_for", "compute_features", "fit",
           "predict_logits", "stretch_phases", "use_channels_last"]


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


def fit(*, backbone: Backbone, pipeline: Pipeline, strategy: Strategy, cfg: RunConfig, run_dir: Path | None = None,
        progress: bool = True, console: Any = None,
        on_epoch_end: Callable[[EpochRecord, FitResult], None] | None = None,
        phases: list[Phase] | None = None, callbacks: list[Callback] | None = None) -> FitResult:
    """Train ``backbone`` with ``strategy``'s phases; returns the history with the best weights loaded.

    ``on_epoch_end`` may raise ``CancelFit`` (e.g. an Optuna pruner) to stop after that epoch. ``phases``: the
    strategy's phases when the caller has them already (computed once per run), else asked of the strategy.
    ``callbacks``: more `Callback`s (tracking, say), run after the standard ones on each event.
    """
    w = world()
    if w.active:
        torch.set_num_threads(cfg.train.threads or threads_per_worker(w))
    else:
        torch.set_num_threads(cfg.train.threads or max(1, torch.get_num_threads()))
    device = resolve_device(cfg.train.device)
    backbone.to(device)
    # a dense product in place of oneDNN's depthwise backward: a CPU measure (DESIGN.md), not a GPU one
    small_maps = cfg.train.small_depthwise and backbone.is_convnet and device.type == "cpu"
    fold = cfg.train.fold_bn and backbone.is_convnet and pipeline.pre.modality == "image"
    with flushed_denormals(), small_map_depthwise(backbone, enabled=small_maps), \
            folded_frozen_batchnorm(backbone.net, _image_probe(pipeline, device) if fold else None, enabled=fold), \
            sync_batchnorm(backbone, enabled=cfg.train.sync_bn):
        return _fit(backbone=backbone, pipeline=pipeline, strategy=strategy, cfg=cfg, run_dir=run_dir,
                    progress=progress, console=console, on_epoch_end=on_epoch_end, w=w, phases=phases,
                    extra_callbacks=callbacks or [])


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
         w: Any, phases: list[Phase] | None, extra_callbacks: list[Callback]) -> FitResult:
    pipeline.configure(text_batches=cfg.train.text_batches, image_memory=cfg.train.image_memory)
    steps_per_epoch = max(1, math.ceil(len(pipeline.splits["train"]) / pipeline.batch_size))
    if phases is None:
        phases = strategy.phases(cfg, len(backbone.layer_groups()))
    phases = stretch_phases(phases, steps_per_epoch, cfg.train.min_steps)
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
                       best_val_accuracy=state.best_val_accuracy, best_val_score=state.best_val_score,
                       best_epoch=state.best_epoch)
    planned = sum(p.epochs for p in phases)

    callbacks = standard_callbacks(on_epoch_end=on_epoch_end, add_weights=_add_weights, take_average=_take_average,
                                   any_worker=any_worker, max_seconds=cfg.train.max_seconds) + list(extra_callbacks)
    with _Interrupt() as interrupt, _progress(progress, console) as bar:
        f = Fit(backbone=backbone, pipeline=pipeline, cfg=cfg, phases=phases, ckpt=ckpt, state=state, result=result,
                best_weights=best_weights, console=console, w=w, interrupt=interrupt, bar=bar,
                channels_last=channels_last)
        f.extra["resume_optimizer"] = resume_opt
        if cfg.train.class_balance == "weights":
            f.extra["class_weights"] = class_weights(pipeline.labels("train"), len(pipeline.data.classes), device)
        f.total_task = bar.add_task("total", total=planned, completed=state.global_epoch) if bar else None
        _event(callbacks, "before_fit", f)
        result.stopped_by = f.cancel or result.stopped_by  # e.g. a resumed run whose time limit is spent
        for pi in range(state.phase_index, len(phases) if not f.cancel else 0):
            _run_phase(f, pi, callbacks, steps_per_epoch=steps_per_epoch, device=device)
            if result.interrupted or result.stopped_by:
                break
            _event(callbacks, "after_phase", f)
            # Next phase starts from the best weights found so far, not the last ones.
            backbone.load_state_dict(f.best_weights)
            state.phase_epoch = f.phase.epochs
            state.bad_epochs = 0
            if pi + 1 < len(phases):
                state.phase_index, state.phase_epoch = pi + 1, 0
            ckpt.save(backbone, f.optimizer, state)  # a phase boundary: always saved, the next phase's start
        _event(callbacks, "after_fit", f)
        best_weights = f.best_weights

    backbone.load_state_dict(best_weights)
    backbone.set_trainable(None)
    result.best_val_loss, result.best_val_accuracy = state.best_val_loss, state.best_val_accuracy
    result.best_val_score = state.best_val_score
    result.best_epoch, result.seconds = state.best_epoch, state.seconds
    return result


def _run_phase(f: Fit, pi: int, callbacks: list[Callback], *, steps_per_epoch: int, device: Any) -> None:
    """One phase: what trains and at which LRs, then its epochs; the callbacks decide the best, checkpoint,
    report and stop."""
    backbone, cfg, state, result = f.backbone, f.cfg, f.state, f.result
    phase = f.phase = f.phases[pi]
    f.phase_index = pi
    if pi != state.phase_index:
        state.phase_index, state.phase_epoch, state.bad_epochs = pi, 0, 0
    backbone.set_trainable(phase.train_groups, freeze_bn_stats=cfg.model.bn == "frozen", select=phase.select)
    groups = build_param_groups(backbone.layer_groups(), trainable=phase.train_groups, lr=phase.lr,
                                head_lr=phase.head_lr, weight_decay=cfg.optim.weight_decay,
                                layer_decay=cfg.optim.layer_decay, requires_grad_only=phase.select is not None)
    f.optimizer = _fast_optimizer(make_optimizer(cfg.optim.name, groups, momentum=cfg.optim.momentum), cfg)
    if f.extra.get("resume_optimizer") is not None:
        f.optimizer.load_state_dict(f.extra.pop("resume_optimizer"))
    f.train_feed, f.val_feed = _phase_feeds(backbone, f.pipeline, cfg, phase, channels_last=f.channels_last, w=f.w,
                                            console=f.console, costs=result.cache_costs)
    if f.w.active:  # what trains in this phase, in DDP (built again in each phase: what trains changes)
        f.train_feed = dataclasses.replace(f.train_feed, forward=data_parallel(backbone, f.train_feed.forward))
    if cfg.train.compile and not (phase.head_only and f.train_feed.cached):  # a linear head gains nothing
        f.train_feed = dataclasses.replace(f.train_feed, forward=torch.compile(f.train_feed.forward))
    scaler = grad_scaler(f.train_feed.amp, device)  # fp16 on a GPU; kept across the phase's epochs
    f.epoch_steps = steps_per_epoch * phase.repeat
    f.total_steps = f.epoch_steps * phase.epochs
    planned = sum(p.epochs for p in f.phases)
    _event(callbacks, "before_phase", f)
    for e in range(state.phase_epoch, phase.epochs):
        f.epoch, f.cancel, f.end_phase = e, "", False
        t0 = time.perf_counter()
        epoch_seed = cfg.train.seed * 100_003 + state.global_epoch
        torch.manual_seed(epoch_seed)
        loader = f.train_feed.make(epoch_seed, phase.repeat)
        bar = f.bar
        task = bar.add_task(f"epoch {state.global_epoch + 1}/{planned} [{phase.name}]",
                            total=len(loader)) if bar else None
        train_loss, lr_now, abandoned = _train_epoch(
            backbone, loader, f.optimizer, cfg, forward=f.train_feed.forward, amp=f.train_feed.amp, scaler=scaler,
            step0=e * f.epoch_steps, total_steps=f.total_steps, bar=bar, task=task,
            on_diverge=lambda lr: _diverged(backbone, f.best_weights, f.ckpt, lr, state, cfg.optim.lr), w=f.w,
            stop=f.step_stop, class_weights=f.extra.get("class_weights"), label_task=f.pipeline.task)
        if abandoned:  # the unfinished epoch is dropped: the fit ends on its best epoch so far, as after a cancel
            if bar:
                bar.remove_task(task)
            result.stopped_by = result.stopped_by or abandoned
            state.seconds += time.perf_counter() - t0
            break
        if f.w.active:
            sync_module(backbone)  # BatchNorm statistics of each worker's share, averaged
        val_loss, val_acc, val_score = _validate(backbone, f.val_feed.make(0, 1), cfg, channels_last=f.channels_last,
                                                 w=f.w, forward=f.val_feed.forward, amp=f.val_feed.amp,
                                                 label_task=f.pipeline.task)
        if bar:
            bar.remove_task(task)
        if not math.isfinite(val_loss):
            _diverged(backbone, f.best_weights, f.ckpt, lr_now, state, cfg.optim.lr)
        seconds = time.perf_counter() - t0
        f.rec = EpochRecord(state.global_epoch, phase.name, train_loss, val_loss, val_acc, lr_now, seconds,
                            f.train_feed.cached, torch.get_num_threads(), val_score)
        result.history.append(f.rec)
        _event(callbacks, "after_validate", f)
        state.global_epoch += 1
        state.phase_epoch = e + 1
        state.seconds += seconds
        _event(callbacks, "after_epoch", f)
        if result.interrupted:
            break
        if f.cancel:
            result.stopped_by = f.cancel
            break
        if f.end_phase:
            break


def _event(callbacks: list[Callback], name: str, f: Fit) -> None:
    for cb in callbacks:
        getattr(cb, name)(f)


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


def _diverged(backbone: Backbone, best: dict[str, torch.Tensor], ckpt: Checkpointer, lr: float, state: _State,
              base_lr: float) -> None:
    backbone.load_state_dict(best)
    ckpt.save_last_good(best)
    # Suggest from the configured base LR (what the user sets), not the momentary LR of the
    # fastest group, which includes the head multiplier and the schedule.
    raise TrainingDiverged(
        f"loss became NaN/inf at epoch {state.global_epoch + 1} (LR {lr:.2g}); kept the last good weights — "
        f"try a lower LR, e.g. --set optim.lr={max(base_lr / 10, 1e-7):.0e}")


@contextlib.contextmanager
def _progress(enabled: bool, console: Any):
    if not enabled:
        yield None
        return
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TextColumn("ETA"), TimeRemainingColumn(), console=console, transient=True) as bar:
        yield bar


def accuracy(pred: np.ndarray, y: np.ndarray) -> float:
    return float((pred == y).mean()) if len(y) else float("nan")

