"""One epoch of training (mixed precision, gradient accumulation, data-parallel steps through DDP), validation,
and the weight average that ends a weight-averaged phase."""

from __future__ import annotations

import math
from typing import Any, Callable, Iterator

import torch
from torch.utils.data import DataLoader

from ajuste.backbones.base import Backbone
from ajuste.config import RunConfig
from ajuste.data.pipeline import Pipeline, to_device_batch
from ajuste.metrics import accuracy_text, metric_name, score
from ajuste.tasks import Task
from ajuste.training.checkpoint import Checkpointer, FitResult, _improved, _State, _state_dict
from ajuste.training.distributed import World, all_reduce_sum, gather_rows, no_sync, sync_module
from ajuste.training.execution import autocast, model_device, to_device
from ajuste.training.feeds import _Feed
from ajuste.training.inference import amp_for, predict_logits
from ajuste.training.schedules import lr_multiplier


def _train_epoch(backbone: Backbone, loader: DataLoader, optimizer: Any, cfg: RunConfig, *,
                 forward: Callable[[Any], torch.Tensor], amp: torch.dtype | None, step0: int, total_steps: int,
                 bar: Any, task: Any, on_diverge: Callable[[float], None], w: World = World(),
                 scaler: Any = None, stop: Callable[[], str] | None = None,
                 class_weights: torch.Tensor | None = None, label_task: Task = Task()) -> tuple[float, float, str]:
    """One pass over ``loader``: (mean loss, last LR, ""), or, when ``stop`` (asked after each optimizer step)
    gives a reason, that reason third, the pass left unfinished. ``scaler``: fp16's `torch.amp.GradScaler`, or
    None. ``class_weights``: per-class loss weights (``_loss``). ``label_task``: the loss's `ajuste.tasks.Task`.

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
        step_ends = accum == 1 or (i + 1) % accum == 0 or last
        y = to_device(y, device)
        if w.active:
            # This worker's share, summed: DDP averages the workers' gradients (reducing only at the window's
            # last batch) and the step below turns that into the mean over the global batch's examples.
            with no_sync(forward, skip=not step_ends):
                with autocast(amp, device):
                    logits = forward(inputs)
                loss = _loss(logits, y, cfg, class_weights, summed=True, label_task=label_task)
                if accum == 1:
                    optimizer.zero_grad(set_to_none=True)
                (scaler.scale(loss) if scaler is not None else loss).backward()
            n_float, loss_sum = all_reduce_sum([float(len(y)), loss.item()])  # the global batch's count and loss
            n = int(round(n_float))
            if not math.isfinite(loss_sum):
                on_diverge(lr_now)
        else:
            with autocast(amp, device):
                logits = forward(inputs)
            loss = _loss(logits, y, cfg, class_weights, summed=False, label_task=label_task)
            if not torch.isfinite(loss):
                on_diverge(lr_now)
            if accum == 1:
                optimizer.zero_grad(set_to_none=True)
            backward = loss if accum == 1 else loss * len(y)  # accumulated: summed, divided at the step
            (scaler.scale(backward) if scaler is not None else backward).backward()
            n, loss_sum = len(y), loss.item() * len(y)
        in_window += n
        if step_ends:
            if scaler is not None:
                scaler.unscale_(optimizer)  # clip (and divide) the true gradients, not the scaled ones
            if accum > 1 or w.active:
                # summed over the window (and averaged over the workers by DDP): the mean over its examples
                for p in params:
                    if p.grad is not None:
                        p.grad.div_(in_window / w.size)
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
        if step_ends and stop is not None and (reason := stop()):
            return total / max(1, count), lr_now, reason
    return total / max(1, count), lr_now, ""


def _loss(logits: torch.Tensor, y: torch.Tensor, cfg: RunConfig, weights: torch.Tensor | None, *,
          summed: bool, label_task: Task = Task()) -> torch.Tensor:
    """The task's loss in fp32 (cross-entropy, binary cross-entropy per label, or squared error on the
    standardised target): summed over the batch (data parallel: the step divides by the global count), or its
    mean over the batch's examples; class weights divide by the example count too, not by the sum of weights."""
    return label_task.loss(logits, y, label_smoothing=cfg.optim.label_smoothing, weights=weights, summed=summed)


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
              amp: torch.dtype | None | str = "auto", label_task: Task = Task()) -> tuple[float, float, float]:
    """(loss, accuracy, score of train.monitor's metric: its loss for ``loss``) on the validation split; accuracy
    is NaN for regression (`Task.accuracy`)."""
    if amp == "auto":
        amp = amp_for(cfg, backbone, training=False)
    logits, y = predict_logits(backbone, loader, amp=amp, channels_last=channels_last, forward=forward)
    logits = logits.float()
    metric = metric_name(cfg.train.monitor)
    if w.active:  # each worker saw its share of the validation split
        local = [label_task.loss(logits, y, summed=True).item(), label_task.accuracy(logits, y) * len(y),
                 len(y)] if len(y) else [0.0, 0.0, 0.0]
        loss_sum, correct, n = all_reduce_sum(local)
        loss, acc = loss_sum / max(1, n), correct / max(1, n)
    else:
        loss = label_task.loss(logits, y).item() if len(y) else float("nan")
        acc = label_task.accuracy(logits, y)
    if metric in ("accuracy", "loss"):
        return loss, acc, acc if metric == "accuracy" else loss
    if w.active:
        logits, y = gather_rows(logits, y)  # a metric that ranks examples needs the whole split
    return loss, acc, score(metric, y.numpy(), label_task.outputs(logits))


def class_weights(labels: Any, n_classes: int, device: Any = None) -> torch.Tensor:
    """Inverse-frequency class weights, n / (k · n_c) (scikit-learn's "balanced"): they average 1 over the
    training examples. A class with no training example gets weight 0 (it has no loss term anyway)."""
    counts = torch.bincount(torch.as_tensor(labels, dtype=torch.long), minlength=n_classes).double()
    present = counts > 0
    w = torch.zeros(n_classes, dtype=torch.float64)
    w[present] = counts.sum() / (int(present.sum()) * counts[present])
    return w.float().to(device) if device is not None else w.float()


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
    val_loss, val_acc, val_score = _validate(backbone, val_feed.make(0, 1), cfg, channels_last=channels_last, w=w,
                                             forward=val_feed.forward, amp=val_feed.amp, label_task=pipeline.task)
    kept = math.isfinite(val_loss) and _improved(cfg.train.monitor, val_loss, val_score, state)
    first, last = state.global_epoch - n + 1, state.global_epoch
    result.averaged = {"epochs": [first, last], "val_loss": val_loss, "val_accuracy": val_acc,
                       "val_score": val_score, "kept": kept}
    if kept:
        state.best_val_loss, state.best_val_accuracy, state.best_epoch = val_loss, val_acc, last - 1
        state.best_val_score = val_score
        state.best_phase = state.phase_index
        best_weights = _state_dict(backbone)
        ckpt.save_best(best_weights)
    result.best_val_loss, result.best_val_accuracy = state.best_val_loss, state.best_val_accuracy
    result.best_val_score, result.best_epoch, result.provisional = state.best_val_score, state.best_epoch, None
    ckpt.average, state.averaged = None, 0
    if console is not None:
        console.print(f"weights of epochs {first}-{last} averaged: val_loss {val_loss:.4f}{accuracy_text(val_acc)}"
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

