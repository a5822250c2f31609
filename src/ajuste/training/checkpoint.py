"""What a run's training state is, and how it survives a kill: epoch records, the loop's state, checkpoints.

Each save writes numbered files (``last-N.safetensors``, ``optimizer-N.pt``, ``best-N.safetensors``), then
``state.json`` naming them, then removes older files: a kill at any moment leaves ``state.json`` naming one
complete set from one moment. `_improved` is the rule that decides which epoch is the best so far.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch

from ajuste.backbones.base import Backbone
from ajuste.io import (
    atomic_save_safetensors,
    atomic_torch_save,
    atomic_write_json,
    atomic_write_text,
    read_jsonl,
)
from ajuste.metrics import higher_is_better, metric_name


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
    # the value of train.monitor's metric (ajuste.metrics); None in the lines of runs from before it: accuracy
    val_score: float | None = None

    @property
    def score(self) -> float:
        return self.val_accuracy if self.val_score is None else self.val_score


@dataclass
class FitResult:
    history: list[EpochRecord] = field(default_factory=list)
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_val_score: float = -math.inf  # train.monitor's metric at the kept epoch (its loss for loss)
    best_epoch: int = -1
    seconds: float = 0.0
    interrupted: bool = False
    stopped_by: str = ""
    # Set when the kept weights are a weight average: its epochs (1-based, inclusive) and validation.
    averaged: dict[str, Any] | None = None
    # During a weight-averaged phase: (val loss, val score) of its best epoch so far when that beats the
    # kept best; the average is validated once, at the phase's end, so meanwhile a search's pruner judges
    # the phase by this (None outside such a phase)
    provisional: tuple[float, float] | None = None
    # Frozen activations the run used, by cache key: (seconds computing them took, computed by this run). The
    # ones another run computed are part of what this arm costs on its own, and what sharing saved.
    cache_costs: dict[str, tuple[float, bool]] = field(default_factory=dict)


@dataclass
class _State:
    phase_index: int = 0
    phase_epoch: int = 0  # next epoch to run within the phase
    global_epoch: int = 0
    best_val_loss: float = math.inf
    best_val_accuracy: float = 0.0
    best_val_score: float = -math.inf  # a checkpoint from before scores: set from the accuracy on load
    best_epoch: int = -1
    best_phase: int = -1  # the phase whose weights are the best so far
    bad_epochs: int = 0
    seconds: float = 0.0
    averaged: int = 0  # epochs summed into the running weight average of the current phase (Phase.average)


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
        if "best_val_score" not in saved["state"]:  # saved before scores: its monitor was accuracy or the loss
            state.best_val_score = state.best_val_accuracy
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
        import json

        rows = [r for r in read_jsonl(self.metrics) if r.get("epoch", 10**9) < upto]
        atomic_write_text(self.metrics, "".join(json.dumps(r) + "\n" for r in rows))


def _improved(monitor: str, val_loss: float, val_score: float, state: _State) -> bool:
    """Whether this epoch is the new best: lower val loss (monitor ``loss``), or a higher score of the monitored
    metric, ties broken by the loss. The first epoch always is.

    Across phases a score tie is not broken by the loss: a later phase (end-to-end after head-only)
    replaces an earlier phase's best only when it scores higher. Its lower loss on a validation split
    it already gets right says that it is surer, not that it is better (measured by held-out folds of
    hymenoptera's training images, docs/results.md), and it trained more weights on the same few examples."""
    if state.best_epoch < 0:
        return True
    if metric_name(monitor) != "loss" and 0 <= state.best_phase < state.phase_index:
        sign = 1.0 if higher_is_better(monitor) else -1.0
        return sign * val_score > sign * state.best_val_score + 1e-9
    return _beats(monitor, val_loss, val_score, state.best_val_loss, state.best_val_score)


def _beats(monitor: str, val_loss: float, val_score: float, best_loss: float, best_score: float) -> bool:
    """A higher score (lower for an error such as RMSE), ties broken by a lower loss; for ``loss``, the loss."""
    if metric_name(monitor) != "loss":
        if not higher_is_better(monitor):
            val_score, best_score = -val_score, -best_score
        if val_score > best_score + 1e-9:
            return True
        return abs(val_score - best_score) <= 1e-9 and val_loss < best_loss - 1e-4
    return val_loss < best_loss - 1e-4
