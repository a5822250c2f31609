"""train.max_seconds: the fit ends before the epoch that would pass its limit, keeps its best epoch, is tested
as usual and says it was stopped by the time limit; a resume of a run whose time is spent does not train again."""

from __future__ import annotations

import json
import time

import pytest
import yaml

from ajuste.config import RunConfig
from ajuste.errors import AjusteError, ConfigError
from ajuste.io import read_jsonl
from ajuste.training.run import train_run
from ajuste.training.run_dir import epochs_done, seconds_trained

SLOW = 0.4  # seconds each epoch's hook sleeps in the resume test


def _cfg(**over) -> RunConfig:
    base = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "strategy.name": "full",
            "train.epochs": 30, "train.patience": 30, "data.image_size": 32, "data.batch_size": 64,
            "train.min_steps": 0}
    base.update(over)
    return RunConfig().override(base)


def _slow(times: list[float]):
    def hook(rec, result):
        time.sleep(SLOW)
        times.append(time.perf_counter())
    return hook


class VirtualClock:
    """time.perf_counter for the fit: it moves only when an epoch's hook says a second went by (and by a
    microsecond per reading), so the limit's decisions do not depend on this machine's load."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        self.now += 1e-6
        return self.now


def test_a_run_stops_before_its_time_limit_keeps_its_best_epoch_and_says_so(tmp_path, digits_small, monkeypatch):
    clock = VirtualClock()
    monkeypatch.setattr(time, "perf_counter", clock)

    def one_second_epochs(rec, result):
        clock.now += 1.0

    # Epochs of one second: after the third, a fourth (reckoned a tenth longer) would end at 4.1 s > 3.5 s.
    res = train_run(cfg=_cfg(**{"train.max_seconds": 3.5}), out=tmp_path / "r", data=digits_small,
                    progress=False, on_epoch_end=one_second_epochs)
    monkeypatch.undo()
    s = res.summary
    assert s["status"] == "complete" and s["stopped_by"] == "time limit" and s["epochs"] == 3
    metrics = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    assert len(metrics) == 3
    best = max(range(len(metrics)), key=lambda i: (metrics[i]["val_accuracy"], -metrics[i]["val_loss"]))
    assert s["best_epoch"] == best + 1 and s["val_accuracy"] == pytest.approx(metrics[best]["val_accuracy"])
    assert "test_accuracy" in s and (tmp_path / "r" / "model.safetensors").is_file()
    assert json.loads((tmp_path / "r" / "status.json").read_text())["status"] == "complete"
    assert not (tmp_path / "r" / "checkpoint").exists()


def test_an_epoch_that_runs_past_the_limit_is_abandoned_at_the_next_step(tmp_path, digits_small, monkeypatch):
    """Optimizer steps of one virtual second, then of a hundred from the second epoch on (an end-to-end phase
    after cheap head epochs): the per-epoch check lets the second epoch start, and the per-step check abandons
    it after its first step. The run ends on its first epoch, unvalidated steps dropped, one step past the
    limit at most."""
    from torch.optim.optimizer import register_optimizer_step_post_hook

    clock = VirtualClock()
    monkeypatch.setattr(time, "perf_counter", clock)
    steps, per_step = [], [1.0]

    def tick(optimizer, args, kwargs):
        clock.now += per_step[0]
        steps.append(per_step[0])

    def slower(rec, result):
        per_step[0] = 100.0

    handle = register_optimizer_step_post_hook(tick)
    try:
        res = train_run(cfg=_cfg(**{"train.max_seconds": 20}), out=tmp_path / "r", data=digits_small,
                        progress=False, on_epoch_end=slower)
    finally:
        handle.remove()
        monkeypatch.undo()
    first = steps.count(1.0)
    assert 2 <= first <= 9  # the premise: a second epoch of one-second steps would have fitted
    assert steps.count(100.0) == 1  # abandoned after the step that passed the limit
    s = res.summary
    assert s["status"] == "complete" and s["stopped_by"] == "time limit" and s["epochs"] == 1
    assert len(read_jsonl(tmp_path / "r" / "metrics.jsonl")) == 1 and s["best_epoch"] == 1
    assert "test_accuracy" in s and (tmp_path / "r" / "model.safetensors").is_file()


def test_a_run_that_ends_within_its_limit_is_not_marked_as_stopped_by_it(tmp_path, digits_small):
    res = train_run(cfg=_cfg(**{"train.epochs": 2, "train.max_seconds": 600}), out=tmp_path / "r",
                    data=digits_small, progress=False)
    assert res.summary["stopped_by"] == "completed" and res.summary["epochs"] == 2


class Boom(Exception):
    pass


def test_a_resumed_run_whose_time_is_spent_stops_at_once_and_a_new_limit_is_accepted(tmp_path, digits_small):
    """Killed after two epochs (checkpointed); resumed with a limit its earlier epochs already used: no epoch
    is trained again and the run completes. The resume takes the new limit (a study gives a resumed cell the
    time left then) and writes it into config.yaml; any other change is still refused."""
    times: list[float] = []
    hook = _slow(times)

    def die_after_two(rec, result):
        hook(rec, result)
        if len(times) == 2:
            raise Boom

    out = tmp_path / "r"
    with pytest.raises(Boom):
        train_run(cfg=_cfg(**{"train.max_seconds": 600}), out=out, data=digits_small, progress=False,
                  on_epoch_end=die_after_two)
    done = epochs_done(out)  # what the checkpoint holds (a quick epoch's save may be skipped)
    assert done >= 1
    with pytest.raises(AjusteError, match="different config"):
        train_run(cfg=_cfg(**{"train.max_seconds": 1e-3, "train.epochs": 29}), out=out, data=digits_small,
                  progress=False)
    assert seconds_trained(out) > 0
    res = train_run(cfg=_cfg(**{"train.max_seconds": 1e-3}), out=out, data=digits_small, progress=False)
    assert res.summary["stopped_by"] == "time limit" and res.summary["status"] == "complete"
    assert len(read_jsonl(out / "metrics.jsonl")) == done  # nothing trained again
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["max_seconds"] == 1e-3


@pytest.mark.parametrize("bad", ["0", "-5", "nan"])
def test_a_time_limit_that_is_not_positive_is_refused_in_one_line(bad):
    with pytest.raises(ConfigError, match="train.max_seconds=.* must be > 0"):
        RunConfig().override([f"train.max_seconds={bad}"])
