"""The training loop's events and the callbacks on them, in the shape of fastai's and Lightning's.

`fit` (training/loop.py) owns what every run does: phases, the optimizer of each, the epochs, their records
and counters. What a run may or may not want is a callback on one of its events, each seeing the `Fit` (the
loop's state):

    before_fit → [before_phase → [after_validate → after_epoch]* → after_phase]* → after_fit

- `BestTracking` (after_validate): is this epoch the best so far; keeps its weights; early stopping's count.
- `WeightAveraging` (after_validate, after_phase): sums a phase's last epochs, then validates their mean.
- `Checkpointing` (after_epoch): the metrics line and the kill-safe checkpoint (the loop itself saves at
  every phase boundary, which a resume starts from).
- `ProgressReport` (after_epoch): the epoch's line on the console and the total bar.
- `EpochHook` (after_epoch): a caller's function, e.g. a search's pruner; it ends the fit with `CancelFit`.
- `Interruption` (after_epoch): a Ctrl-C during the epoch: checkpoint and stop.
- `EarlyStopping` (after_epoch): the phase ends when validation stopped improving for its patience.
- `TimeLimit` (before_fit, after_epoch): ``train.max_seconds``: the fit ends before the epoch that would pass it.

The order of the list is the order they run in, and it matters: the checkpoint holds the best-so-far this
epoch decided, the caller's hook sees it, and an interruption wins over a cancel.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

from ajuste.io import append_jsonl
from ajuste.metrics import accuracy_text, metric_name
from ajuste.training.checkpoint import EpochRecord, FitResult, _beats, _improved, _state_dict


class CancelFit(Exception):
    """Raised by a callback (early stopping, pruning) to end training cleanly after an epoch."""


@dataclass
class Fit:
    """What the callbacks see of a fit in progress; the loop and the callbacks update it."""

    backbone: Any
    pipeline: Any
    cfg: Any
    phases: list
    ckpt: Any
    state: Any  # checkpoint._State: what a resume needs
    result: FitResult
    best_weights: dict
    console: Any = None
    w: Any = None
    interrupt: Any = None  # loop._Interrupt: a first Ctrl-C sets .requested
    bar: Any = None
    total_task: Any = None
    phase: Any = None
    phase_index: int = 0
    epoch: int = 0  # within the phase
    optimizer: Any = None
    train_feed: Any = None
    val_feed: Any = None
    epoch_steps: int = 0
    total_steps: int = 0
    channels_last: bool = False
    rec: EpochRecord | None = None
    improved: bool = False
    cancel: str = ""  # set by a callback: the fit ends after this epoch, for this reason
    end_phase: bool = False  # set by a callback: on to the next phase
    # set by a callback: asked after each optimizer step; a reason abandons the epoch (neither validated nor
    # counted: the best epoch so far stands) and ends the fit for it
    step_stop: Callable[[], str] | None = None
    extra: dict = field(default_factory=dict)


class Callback:
    """No-op hooks; a callback overrides the events it needs (optuna's BaseSampler shape)."""

    def before_fit(self, f: Fit) -> None:
        pass

    def before_phase(self, f: Fit) -> None:
        pass

    def after_validate(self, f: Fit) -> None:
        pass

    def after_epoch(self, f: Fit) -> None:
        pass

    def after_phase(self, f: Fit) -> None:
        pass

    def after_fit(self, f: Fit) -> None:
        pass


class BestTracking(Callback):
    """The best epoch so far by ``train.monitor`` (a weight-averaged phase offers only its average, at its end,
    as a candidate); its weights are kept, in memory and in the checkpoint."""

    def after_validate(self, f: Fit) -> None:
        rec, s = f.rec, f.state
        f.improved = not f.phase.average and _improved(f.cfg.train.monitor, rec.val_loss, rec.score, s)
        if f.improved:
            s.best_val_loss, s.best_val_accuracy, s.best_val_score = rec.val_loss, rec.val_accuracy, rec.score
            s.best_epoch, s.best_phase, s.bad_epochs = s.global_epoch, f.phase_index, 0
            f.best_weights = _state_dict(f.backbone)
            f.ckpt.save_best(f.best_weights)
        else:
            s.bad_epochs += 1
        # the best epoch so far, for the callers' hooks (a search reports it to its pruner)
        f.result.best_val_loss, f.result.best_val_accuracy = s.best_val_loss, s.best_val_accuracy
        f.result.best_val_score, f.result.best_epoch = s.best_val_score, s.best_epoch


class WeightAveraging(Callback):
    """A phase with ``average`` N: the weights of its last N epochs are summed, and at its end their mean is
    validated and kept if it beats the best so far (stochastic weight averaging, Izmailov et al. 2018)."""

    def __init__(self, add_weights: Callable, take_average: Callable) -> None:
        self.add_weights, self.take_average = add_weights, take_average

    def after_validate(self, f: Fit) -> None:
        phase, rec = f.phase, f.rec
        if not phase.average:
            return
        if f.epoch >= phase.epochs - phase.average:
            f.ckpt.average = self.add_weights(f.ckpt.average, f.backbone)
            f.state.averaged += 1
        ref = f.result.provisional
        monitor = f.cfg.train.monitor
        if (_beats(monitor, rec.val_loss, rec.score, *ref) if ref
                else _improved(monitor, rec.val_loss, rec.score, f.state)):
            f.result.provisional = (rec.val_loss, rec.score)

    def after_phase(self, f: Fit) -> None:
        if f.phase.average and f.state.averaged:
            f.best_weights = self.take_average(f.backbone, f.pipeline, f.cfg, f.ckpt, f.state, f.result,
                                               f.best_weights, val_feed=f.val_feed, channels_last=f.channels_last,
                                               w=f.w, console=f.console)


class Checkpointing(Callback):
    """One metrics line per epoch, then a checkpoint (skipped when saves cost much next to the epochs)."""

    def after_epoch(self, f: Fit) -> None:
        if f.ckpt.metrics and f.ckpt.write:
            append_jsonl(f.ckpt.metrics, asdict(f.rec))
        f.ckpt.save(f.backbone, f.optimizer, f.state, force=False)


class ProgressReport(Callback):
    """The epoch's line (a star marks a new best) and one step of the total bar."""

    def after_epoch(self, f: Fit) -> None:
        rec = f.rec
        if f.console is not None:
            mark = " *" if f.improved else ""
            metric = metric_name(f.cfg.train.monitor)
            extra = f"  val_{metric} {rec.score:.4f}" if metric not in ("accuracy", "loss") else ""
            f.console.print(f"epoch {rec.epoch + 1:>3} [{rec.phase}] train_loss {rec.train_loss:.4f}  val_loss "
                            f"{rec.val_loss:.4f}{accuracy_text(rec.val_accuracy)}{extra}  lr {rec.lr:.2e}  "
                            f"{rec.seconds:.1f}s{mark}", markup=False, highlight=False, soft_wrap=True)
        if f.bar:
            f.bar.update(f.total_task, advance=1)


class EpochHook(Callback):
    """A caller's ``on_epoch_end(record, result)``; raising `CancelFit` ends the fit after this epoch."""

    def __init__(self, fn: Callable[[EpochRecord, FitResult], None]) -> None:
        self.fn = fn

    def after_epoch(self, f: Fit) -> None:
        try:
            self.fn(f.rec, f.result)
        except CancelFit as exc:
            f.cancel = str(exc) or "cancelled"


class Interruption(Callback):
    """A first Ctrl-C (on any data-parallel worker) during the epoch: flush the checkpoint and stop."""

    def __init__(self, any_worker: Callable[[bool], bool]) -> None:
        self.any_worker = any_worker

    def after_epoch(self, f: Fit) -> None:
        if self.any_worker(f.interrupt.requested):
            f.result.interrupted, f.result.stopped_by = True, "interrupted (Ctrl-C)"
            f.ckpt.flush(f.backbone, f.optimizer, f.state)


class EarlyStopping(Callback):
    """The phase ends after ``patience`` epochs without a new best, but not in its first third nor before
    ``train.min_steps`` optimizer steps: a re-initialised network's validation loss often rises first."""

    def after_epoch(self, f: Fit) -> None:
        if f.result.interrupted or f.cancel or f.phase.patience is None:
            return
        warm_steps = min(f.total_steps, max(0.3 * f.total_steps, f.cfg.train.min_steps))
        warm = (f.epoch + 1) * f.epoch_steps >= warm_steps
        if warm and f.state.bad_epochs >= f.phase.patience:
            f.end_phase = True
            if f.bar:
                f.bar.update(f.total_task, advance=f.phase.epochs - f.epoch - 1)


MARGIN = 1.1  # the next epoch is taken to last this many times the last one (TimeLimit)


class TimeLimit(Callback):
    """``train.max_seconds`` (Lightning's ``max_time``): after each epoch, the fit ends when the next epoch, taken
    to last as long as this one did (its training, validation and checkpoint), would end past the limit, so a run
    stops before its limit rather than an epoch after it. The best epoch so far is kept, as when early stopping ends
    a fit. An epoch that runs past the limit all the same (the first end-to-end epoch after cheap head-only ones, an
    epoch slowed by other work) is abandoned at the first optimizer step past it, so a run ends at most one step
    late (its first epoch aside: it always finishes, or the run would have no model). The time counted is this
    session's since the fit began (frozen passes that fill the activation cache included) plus the epoch seconds of
    earlier sessions, which the checkpoint keeps: a resumed run whose time is spent stops at once instead of
    training again. The decision is taken on every data-parallel worker alike (their clocks differ)."""

    REASON = "time limit"

    def __init__(self, seconds: float, any_worker: Callable[[bool], bool],
                 clock: Callable[[], float] | None = None) -> None:
        self.seconds, self.any_worker = seconds, any_worker
        self.clock = clock or time.perf_counter  # looked up when the fit starts (the loop times epochs with it)
        self.start = self.before = self.validated = 0.0

    def before_fit(self, f: Fit) -> None:
        self.start, self.before = self.clock(), f.state.seconds
        f.step_stop = lambda: self._past_limit(f)
        # A resumed run: the last epoch's length stands for the next one. A run with no epoch yet trains one.
        last = f.result.history[-1].seconds if f.result.history else 0.0
        if self.any_worker(f.state.global_epoch > 0 and self.before + last > self.seconds):
            f.cancel = self.REASON

    def _past_limit(self, f: Fit) -> str:
        if f.state.global_epoch == 0:  # a run's first epoch is always finished: without it there is no model
            return ""
        return self.REASON if self.any_worker(self.before + self.clock() - self.start > self.seconds) else ""

    def after_validate(self, f: Fit) -> None:
        self.validated = self.clock()

    def after_epoch(self, f: Fit) -> None:
        now = self.clock()
        elapsed = self.before + now - self.start
        # the epoch as the record times it, plus what came after its validation (best weights, checkpoint), and
        # a tenth more: epochs of one phase vary (measured here: 7.2 s then 11.0 s on a shared 2-core machine)
        next_epoch = MARGIN * (f.rec.seconds + (now - self.validated))
        last = f.phase_index == len(f.phases) - 1 and (f.end_phase or f.epoch + 1 >= f.phase.epochs)
        over = not (last or f.result.interrupted or f.cancel) and elapsed + next_epoch > self.seconds
        if self.any_worker(over):
            f.cancel = self.REASON


def standard_callbacks(*, on_epoch_end: Callable | None, add_weights: Callable, take_average: Callable,
                       any_worker: Callable, max_seconds: float | None = None) -> list[Callback]:
    """Every run's callbacks, in the order they must run (the time limit after early stopping: the fit's last
    epoch, an early stop included, is not counted as cut short by it)."""
    out: list[Callback] = [BestTracking(), WeightAveraging(add_weights, take_average), Checkpointing(),
                           ProgressReport()]
    if on_epoch_end is not None:
        out.append(EpochHook(on_epoch_end))
    out += [Interruption(any_worker), EarlyStopping()]
    if max_seconds is not None:
        out.append(TimeLimit(max_seconds, any_worker))
    return out
