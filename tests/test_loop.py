"""The training loop: early stopping keeps the best weights, resume equals an uninterrupted run,
divergence stops cleanly, same seed → same metrics."""

from __future__ import annotations

import json

import pytest
import torch

from ajuste.config import RunConfig
from ajuste.errors import TrainingDiverged
from ajuste.io import read_jsonl
from ajuste.training.run import train_run


def _cfg(**over) -> RunConfig:
    base = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "strategy.name": "two-stage",
            "strategy.head_epochs": 2, "train.epochs": 3, "data.image_size": 32, "data.batch_size": 64,
            "train.patience": 5, "train.min_steps": 0}
    base.update(over)
    return RunConfig().override(base)


class Boom(Exception):
    pass


def test_resume_after_a_kill_equals_an_uninterrupted_run(tmp_path, digits_small):
    full = train_run(cfg=_cfg(), out=tmp_path / "a", data=digits_small, progress=False)

    calls = {"n": 0}

    def die_after_three(rec, result):
        calls["n"] += 1
        if calls["n"] == 3:  # mid phase 2: checkpoint of epoch 3 is on disk
            raise Boom

    with pytest.raises(Boom):
        train_run(cfg=_cfg(), out=tmp_path / "b", data=digits_small, progress=False, on_epoch_end=die_after_three)
    assert not (tmp_path / "b" / "summary.json").exists()
    assert json.loads((tmp_path / "b" / "status.json").read_text())["status"] == "failed"
    resumed = train_run(cfg=_cfg(), out=tmp_path / "b", data=digits_small, progress=False)

    a = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == list(range(len(a)))  # nothing lost, nothing duplicated
    assert [r["phase"] for r in a] == [r["phase"] for r in b]
    for ra, rb in zip(a, b):
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5, abs=1e-6)
    assert resumed.summary["test_accuracy"] == pytest.approx(full.summary["test_accuracy"])
    assert not (tmp_path / "b" / "checkpoint").exists()


@pytest.mark.parametrize("die_at", [3, 4])  # 3: state.json of the phase boundary; 4: of the first end-to-end epoch
def test_a_kill_after_the_weights_but_before_state_json_resumes_consistently(tmp_path, digits_small, monkeypatch,
                                                                             die_at):
    """The window the SIGKILL test in CI once hit: new weights on disk, loop state not yet. The resumed run
    must still equal an uninterrupted one (it used to continue from epoch N's weights with epoch N-1's state)."""
    import ajuste.training.loop as loop

    # every epoch saves: otherwise a save is skipped while the last took long next to the epochs (timing),
    # and the state.json write this test counts on may never come
    monkeypatch.setattr(loop.Checkpointer, "SKIP_WINDOW", 0)
    full = train_run(cfg=_cfg(), out=tmp_path / "a", data=digits_small, progress=False)
    import ajuste.training.checkpoint as checkpoint

    real = checkpoint.atomic_write_json
    writes = {"n": 0}

    def dies_on_a_state_write(path, obj):
        if path.name == "state.json":
            writes["n"] += 1
            if writes["n"] == die_at:
                raise Boom
        real(path, obj)

    monkeypatch.setattr(checkpoint, "atomic_write_json", dies_on_a_state_write)
    with pytest.raises(Boom):
        train_run(cfg=_cfg(), out=tmp_path / "b", data=digits_small, progress=False)
    monkeypatch.setattr(checkpoint, "atomic_write_json", real)
    ckpt = tmp_path / "b" / "checkpoint"
    # the orphaned files of the interrupted save are there, and not the ones state.json names
    named = set(json.loads((ckpt / "state.json").read_text())["files"].values())
    assert {f.name for f in ckpt.glob("*.safetensors")} - named
    resumed = train_run(cfg=_cfg(), out=tmp_path / "b", data=digits_small, progress=False)

    a = read_jsonl(tmp_path / "a" / "metrics.jsonl")
    b = read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == list(range(len(a)))
    for ra, rb in zip(a, b):
        assert rb["train_loss"] == pytest.approx(ra["train_loss"], rel=1e-5, abs=1e-6)
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5, abs=1e-6)
    assert resumed.summary["test_accuracy"] == pytest.approx(full.summary["test_accuracy"])


def test_same_seed_same_metrics_different_seed_differs(tmp_path, digits_small):
    r1 = train_run(cfg=_cfg(), out=tmp_path / "1", data=digits_small, progress=False)
    r2 = train_run(cfg=_cfg(), out=tmp_path / "2", data=digits_small, progress=False)
    r3 = train_run(cfg=_cfg(**{"train.seed": 1}), out=tmp_path / "3", data=digits_small, progress=False)
    assert r1.summary["val_loss"] == r2.summary["val_loss"]
    assert r1.summary["test_accuracy"] == r2.summary["test_accuracy"]
    assert r1.summary["seed"] == 0 and r3.summary["seed"] == 1
    assert r3.summary["val_loss"] != r1.summary["val_loss"]


def test_training_leaves_the_callers_floating_point_mode_as_it_found_it(tmp_path, digits_small):
    # fit flushes denormals to zero while it trains (a process-wide CPU flag); code running after it in the
    # same process, e.g. hypothesis drawing floats, must still see IEEE subnormals.
    subnormal = 5e-324
    assert subnormal * 1.0 != 0.0
    train_run(cfg=_cfg(**{"train.epochs": 1, "strategy.head_epochs": 1}), out=tmp_path / "r", data=digits_small,
              progress=False)
    assert subnormal * 1.0 != 0.0
    assert (torch.tensor([1e-40]) * 1.0).item() != 0.0


def test_early_stopping_restores_the_best_epoch(tmp_path, digits_small):
    # A constant, too-high LR makes later epochs worse than an early one. Kept by the loss here (the
    # default monitor is the accuracy): the re-validation below checks the kept weights by their loss.
    res = train_run(cfg=_cfg(**{"strategy.name": "full", "train.epochs": 8, "train.patience": 2,
                                "optim.lr": 0.05, "optim.schedule": "constant", "optim.warmup": 0.0,
                                "train.monitor": "val_loss"}),
                    out=tmp_path / "r", data=digits_small, progress=False)
    hist = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    best = min(hist, key=lambda r: r["val_loss"])
    assert res.summary["best_epoch"] == best["epoch"] + 1
    assert res.summary["val_loss"] == pytest.approx(best["val_loss"])
    # The saved model is the best epoch's: re-validating it gives the best val loss.
    from ajuste.training.steps import _validate

    cfg = res.config
    loss, _, _ = _validate(res.backbone, res.pipeline.loader("val", batch_size=64), cfg, channels_last=False)
    assert loss == pytest.approx(best["val_loss"], rel=0.02)


def test_nan_loss_stops_with_a_lr_hint_and_keeps_good_weights(tmp_path, digits_small):
    with pytest.raises(TrainingDiverged, match=r"optim\.lr="):
        train_run(cfg=_cfg(**{"strategy.name": "full", "optim.lr": 10.0, "optim.grad_clip": 0.0,
                              "optim.warmup": 0.0, "optim.name": "sgd"}),
                  out=tmp_path / "nan", data=digits_small, progress=False)
    assert (tmp_path / "nan" / "checkpoint" / "best.safetensors").exists()
    from safetensors.torch import load_file

    assert all(torch.isfinite(t).all() for t in load_file(tmp_path / "nan" / "checkpoint" / "best.safetensors").values()
               if t.is_floating_point())


def test_linear_probe_caches_features_and_never_touches_the_backbone(tmp_path, digits_small):
    from ajuste.backbones.factory import create_backbone

    res = train_run(cfg=_cfg(**{"strategy.name": "linear-probe", "train.epochs": 3}), out=tmp_path / "lp",
                    data=digits_small, progress=False)
    hist = read_jsonl(tmp_path / "lp" / "metrics.jsonl")
    assert all(r["cached"] for r in hist)
    torch.manual_seed(0)  # train_run seeds before building the backbone: same initial weights
    initial = create_backbone("timm/test_efficientnet", num_classes=10, pretrained=False).state_dict()
    trained = res.backbone.state_dict()
    head = [k for k in trained if k.startswith("model.classifier")]
    body = [k for k in trained if k not in head]
    assert body and all(torch.equal(initial[k], trained[k]) for k in body)  # weights and BN statistics
    assert any(not torch.equal(initial[k], trained[k]) for k in head)
    assert res.summary["trainable_params"] == sum(trained[k].numel() for k in head)


def test_monitor_val_accuracy_keeps_the_most_accurate_epoch_and_breaks_ties_by_loss():
    from ajuste.training.checkpoint import _improved, _State

    s = _State(best_val_loss=0.5, best_val_accuracy=0.80, best_val_score=0.80, best_epoch=2)
    assert _improved("val_accuracy", 0.9, 0.81, s)  # higher accuracy wins despite a higher loss
    assert not _improved("val_loss", 0.9, 0.81, s)
    assert _improved("val_accuracy", 0.4, 0.80, s) and not _improved("val_accuracy", 0.6, 0.80, s)
    assert _improved("val_loss", 0.4, 0.10, s)
    assert _improved("val_accuracy", 9.0, 0.0, _State())  # the first epoch is always the best so far


def test_a_later_phase_replaces_an_earlier_phases_best_only_when_more_accurate():
    from ajuste.training.checkpoint import _improved, _State

    # best from phase 0 (head only); now in phase 1 (end to end)
    s = _State(best_val_loss=0.5, best_val_accuracy=0.80, best_val_score=0.80, best_epoch=2, best_phase=0, phase_index=1)
    assert not _improved("val_accuracy", 0.1, 0.80, s)  # a tie is not broken by the loss across phases
    assert _improved("val_accuracy", 0.9, 0.81, s)
    assert _improved("val_loss", 0.1, 0.50, s)  # monitoring the loss: the loss decides, as always
    s.best_phase = 1  # within the phase that holds the best, ties are broken by the loss again
    assert _improved("val_accuracy", 0.1, 0.80, s)


@pytest.mark.parametrize("average", [0.0, 0.5])
def test_two_stage_keeps_the_head_phase_when_validation_cannot_tell_the_phases_apart(average, monkeypatch,
                                                                                     digits_small):
    """A saturated validation split (every image right in both phases) with a loss that keeps falling:
    the end-to-end phase's epochs and its weight average never replace the head-only phase's best, unless
    the loss is what is monitored."""
    import ajuste.training.loop as loop

    calls = {"n": 0}

    def saturated(*args, **kw):
        calls["n"] += 1
        return 1.0 / calls["n"], 1.0, 1.0  # loss, accuracy, score (accuracy here)

    import ajuste.training.steps as steps

    monkeypatch.setattr(loop, "_validate", saturated)  # the epochs' validation
    monkeypatch.setattr(steps, "_validate", saturated)  # the weight average's
    over = {"train.epochs": 4, "strategy.stage2_average": average, "strategy.head_epochs": 2}
    kept = train_run(cfg=_cfg(**over), data=digits_small, progress=False, evaluate_test=False).summary
    assert kept["best_epoch"] == 2  # the head phase's last (lowest-loss) epoch
    if average:
        assert kept["averaged"]["kept"] is False
    by_loss = train_run(cfg=_cfg(**over, **{"train.monitor": "val_loss"}), data=digits_small, progress=False,
                        evaluate_test=False).summary
    assert by_loss["best_epoch"] == 6


def test_auto_monitor_is_left_to_the_data_and_an_explicit_choice_is_kept():
    from ajuste.config import RunConfig
    from ajuste.errors import ConfigError
    from ajuste.strategies.base import list_strategies, resolve_config

    base = RunConfig.from_dict({})
    checked = 0
    for strategy in list_strategies():
        for modality in ("image", "text"):
            try:
                resolved = resolve_config(base.override({"strategy.name": strategy.name}), modality)
            except ConfigError:  # a text-only method (prompt/prefix tuning) asked for images
                continue
            # no strategy or modality default overrides auto: the data decides it (accuracy, or macro-F1 on
            # imbalanced labels; tests/test_metrics.py)
            assert resolved.train.monitor == "auto", (strategy.name, modality)
            checked += 1
    assert checked >= 2 * len(list_strategies()) - 2
    for strategy in ("scratch", "two-stage"):
        assert resolve_config(base.override({"strategy.name": strategy, "train.monitor": "val_loss"}),
                              "image").train.monitor == "val_loss"


def test_image_heads_train_until_validation_stops_improving_not_to_a_short_cap():
    """Head-only training on cached image features: capped at 15 (two-stage) or 30 (linear probe) epochs the
    head stopped while validation still improved (docs/results.md); the cap is 100 for images, patience ends
    the phase. Text keeps its caps; an explicit value is kept."""
    from ajuste.config import RunConfig
    from ajuste.strategies.base import get_strategy, resolve_config

    base = RunConfig.from_dict({})

    def head(strategy: str, modality: str, **over):
        cfg = resolve_config(base.override({"strategy.name": strategy, **over}), modality)
        first = get_strategy(strategy).phases(cfg, 4)[0]
        assert first.name == "head"
        return first.epochs, first.patience, cfg.train.patience

    epochs, patience, train_patience = head("two-stage", "image")
    assert (epochs, patience) == (100, train_patience)
    assert head("two-stage", "text")[0] == 15
    assert head("two-stage", "image", **{"strategy.head_epochs": 7})[0] == 7
    epochs, patience, train_patience = head("linear-probe", "image")
    assert (epochs, patience) == (100, train_patience + 2)
    assert head("linear-probe", "text")[0] == 30
    assert head("linear-probe", "image", **{"train.epochs": 20})[0] == 20


@pytest.mark.parametrize("native", [False, True])
def test_bf16_auto_only_where_the_cpu_has_native_bf16(native, monkeypatch, tiny_timm, tiny_text):
    """Emulated bf16 (AVX2-only CPUs) ran 17-18x slower than fp32: auto must not pick it there."""
    import torch

    import ajuste.training.execution as execution
    import ajuste.training.loop as loop

    monkeypatch.setattr(execution, "native_bf16", lambda: native)
    cfg = RunConfig()
    bf16 = torch.bfloat16 if native else None
    assert loop.amp_for(cfg, tiny_text, training=True) is bf16
    assert loop.amp_for(cfg, tiny_timm, training=False) is bf16  # frozen / forward-only convnet pass
    assert loop.amp_for(cfg, tiny_timm, training=True) is None  # convnet training: slower even with AMX
    assert loop.amp_for(cfg.override({"train.bf16": "on"}), tiny_timm, training=True) is torch.bfloat16
    assert loop.amp_for(cfg.override({"train.bf16": "off"}), tiny_text, training=True) is None
    # an explicit train.precision wins over train.bf16's CPU policy
    assert loop.amp_for(cfg.override({"train.precision": "fp32", "train.bf16": "on"}), tiny_text,
                        training=True) is None
    assert loop.amp_for(cfg.override({"train.precision": "bf16"}), tiny_timm, training=True) is torch.bfloat16


def test_quick_epochs_skip_checkpoints_a_flush_writes_the_latest_and_resume_equals_a_full_run(tmp_path, digits_small):
    from ajuste.training.loop import Checkpointer, _State

    net = torch.nn.Linear(64, 10)
    opt = torch.optim.AdamW(net.parameters())
    ckpt = Checkpointer(tmp_path / "run")
    for epoch in range(10):  # epochs far shorter than a save: only the first is written
        ckpt.save(net, opt, _State(global_epoch=epoch + 1), force=False)
    state = json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())
    assert state["seq"] < 5 and state["state"]["global_epoch"] < 10
    ckpt.flush(net, opt, _State(global_epoch=10))
    assert json.loads((tmp_path / "run" / "checkpoint" / "state.json").read_text())["state"]["global_epoch"] == 10

    # a run whose head epochs skip saves, killed mid-way, still resumes to the uninterrupted result
    cfg = _cfg(**{"strategy.head_epochs": 12, "train.epochs": 2})
    full = train_run(cfg=cfg, out=tmp_path / "a", data=digits_small, progress=False)
    calls = {"n": 0}

    def die(rec, result):
        calls["n"] += 1
        if calls["n"] == 10:
            raise Boom

    with pytest.raises(Boom):
        train_run(cfg=cfg, out=tmp_path / "b", data=digits_small, progress=False, on_epoch_end=die)
    resumed = train_run(cfg=cfg, out=tmp_path / "b", data=digits_small, progress=False)
    a, b = read_jsonl(tmp_path / "a" / "metrics.jsonl"), read_jsonl(tmp_path / "b" / "metrics.jsonl")
    assert [r["epoch"] for r in b] == list(range(len(a)))
    for ra, rb in zip(a, b):
        assert rb["val_loss"] == pytest.approx(ra["val_loss"], rel=1e-5, abs=1e-6)
    assert resumed.summary["test_accuracy"] == pytest.approx(full.summary["test_accuracy"])


def test_two_stage_keeps_the_mean_of_its_last_epochs_weights(tmp_path, digits_small, monkeypatch):
    """strategy.stage2_average: the kept weights are the mean of the end-to-end phase's last epochs (here 2 of
    4), validated once more; the per-epoch history is unchanged and no single epoch of that phase is kept."""
    import ajuste.training.loop as loop

    seen = []
    real = loop._add_weights

    def spy(total, backbone):
        seen.append({k: v.detach().clone() for k, v in backbone.state_dict().items()})
        return real(total, backbone)

    monkeypatch.setattr(loop, "_add_weights", spy)
    cfg = _cfg(**{"train.epochs": 4, "strategy.stage2_average": 0.5, "strategy.head_epochs": 2})
    res = train_run(cfg=cfg, out=tmp_path / "avg", data=digits_small, progress=False)
    s = res.summary
    assert len(seen) == 2
    assert s["averaged"]["epochs"] == [5, 6] and s["averaged"]["kept"] is True
    assert s["epochs"] == 6 and s["best_epoch"] == 6
    assert s["val_accuracy"] == s["averaged"]["val_accuracy"]
    final = res.backbone.state_dict()
    for k, v in final.items():
        if v.is_floating_point():
            torch.testing.assert_close(v, (seen[0][k] + seen[1][k]) / 2)
    assert not torch.equal(seen[0]["model.classifier.weight"], seen[1]["model.classifier.weight"])
    hist = read_jsonl(tmp_path / "avg" / "metrics.jsonl")
    assert [r["phase"] for r in hist] == ["head", "head", "all", "all", "all", "all"]

    # 0: the most accurate epoch, as before; the averaging window is never summed
    seen.clear()
    plain = train_run(cfg=_cfg(**{"train.epochs": 4, "strategy.stage2_average": 0.0, "strategy.head_epochs": 2}),
                      out=tmp_path / "best", data=digits_small, progress=False)
    assert not seen and plain.summary["averaged"] is None
    best = max(read_jsonl(tmp_path / "best" / "metrics.jsonl"), key=lambda r: (r["val_accuracy"], -r["val_loss"]))
    assert plain.summary["val_accuracy"] == pytest.approx(best["val_accuracy"])


def test_a_kill_inside_the_averaging_window_resumes_to_the_same_average(tmp_path, digits_small):
    cfg = _cfg(**{"train.epochs": 4, "strategy.stage2_average": 0.75, "strategy.head_epochs": 2})
    full = train_run(cfg=cfg, out=tmp_path / "a", data=digits_small, progress=False)

    calls = {"n": 0}

    def die_after_five(rec, result):
        calls["n"] += 1
        if calls["n"] == 5:  # two of the three averaged epochs summed
            raise Boom

    with pytest.raises(Boom):
        train_run(cfg=cfg, out=tmp_path / "b", data=digits_small, progress=False, on_epoch_end=die_after_five)
    state = json.loads((tmp_path / "b" / "checkpoint" / "state.json").read_text())
    if state["state"]["averaged"]:  # the epoch's checkpoint was not skipped: the running sum is on disk
        assert "average" in state["files"]
    resumed = train_run(cfg=cfg, out=tmp_path / "b", data=digits_small, progress=False)
    assert resumed.summary["averaged"]["epochs"] == full.summary["averaged"]["epochs"] == [4, 6]
    assert resumed.summary["averaged"]["val_loss"] == pytest.approx(full.summary["averaged"]["val_loss"], rel=1e-5)
    assert resumed.summary["test_accuracy"] == pytest.approx(full.summary["test_accuracy"])


def test_averaged_weights_get_batchnorm_statistics_of_their_own_when_batchnorm_trains(digits_small, monkeypatch):
    """model.bn=train: the epochs' running statistics belong to the epochs' weights, not to their mean; the
    average's are recomputed over the training split (mean of per-batch means, as momentum=None does)."""
    import ajuste.training.steps as steps

    checked = []
    real = steps._refresh_batchnorm

    def check(backbone, pipeline, **kw):
        net = backbone.net
        before = net.bn1.running_mean.clone()
        real(backbone, pipeline, **kw)
        with torch.no_grad():
            means = [net.conv_stem(x).mean(dim=(0, 2, 3)) for x, _ in pipeline.loader("train")]
        assert not torch.allclose(net.bn1.running_mean, before)
        torch.testing.assert_close(net.bn1.running_mean, torch.stack(means).mean(0), rtol=1e-4, atol=1e-5)
        assert net.bn1.momentum == 0.1 and backbone.training
        checked.append(True)

    monkeypatch.setattr(steps, "_refresh_batchnorm", check)
    cfg = _cfg(**{"train.epochs": 3, "strategy.stage2_average": 1.0, "strategy.head_epochs": 1,
                  "model.bn": "train", "data.augment": "none"})
    res = train_run(cfg=cfg, out=None, data=digits_small, progress=False, evaluate_test=False)
    assert checked and res.summary["averaged"]["epochs"] == [2, 4]
    # frozen statistics (the fine-tuning default) are the same in every epoch: nothing to recompute
    checked.clear()
    train_run(cfg=cfg.override({"model.bn": "frozen"}), out=None, data=digits_small, progress=False,
              evaluate_test=False)
    assert not checked


def test_a_callback_sees_every_event_in_order_with_the_epoch_and_its_best(digits_small):
    """The loop is an engine with events (fastai/Lightning shape): a callback given to fit sees them all, in
    order, with the epoch's record and whether it was the best so far (what a tracker logs)."""
    from ajuste.training.callbacks import Callback

    class Spy(Callback):
        def __init__(self):
            self.events = []

        def before_fit(self, f):
            self.events.append("before_fit")

        def before_phase(self, f):
            self.events.append(f"before_phase:{f.phase.name}")

        def after_epoch(self, f):
            self.events.append(f"after_epoch:{f.rec.epoch}:{f.improved}")

        def after_phase(self, f):
            self.events.append(f"after_phase:{f.phase.name}")

        def after_fit(self, f):
            self.events.append("after_fit")

    spy = Spy()
    cfg = _cfg(**{"train.epochs": 2, "strategy.head_epochs": 2})
    from ajuste.backbones.factory import create_backbone
    from ajuste.data.pipeline import Pipeline, make_preprocessing
    from ajuste.data.splits import make_splits
    from ajuste.strategies.base import get_strategy, resolve_config
    from ajuste.training.loop import fit

    cfg = resolve_config(cfg, "image")
    splits = make_splits(digits_small, seed=0)
    bb = create_backbone("timm/test_efficientnet", num_classes=10, pretrained=False)
    pipe = Pipeline(digits_small, splits, make_preprocessing(digits_small, bb, image_size=32, max_length=16),
                    augment="none", batch_size=32)
    strategy = get_strategy("two-stage")
    strategy.prepare(bb, cfg)
    res = fit(backbone=bb, pipeline=pipe, strategy=strategy, cfg=cfg, progress=False, callbacks=[spy])
    names = [e.split(":")[0] for e in spy.events]
    assert names == ["before_fit", "before_phase", "after_epoch", "after_epoch", "after_phase", "before_phase",
                     "after_epoch", "after_epoch", "after_phase", "after_fit"], spy.events
    assert spy.events[1] == "before_phase:head" and spy.events[2].startswith("after_epoch:0:")
    assert [e.split(":")[1] for e in spy.events if e.startswith("after_epoch")] == ["0", "1", "2", "3"]
    assert len(res.history) == 4
    assert spy.events[2].endswith(":True")  # the first epoch is always the best so far
