"""Frozen-prefix activation cache: the split forward equals the live one, every key part misses when it
changes, size limits fall back to live with a notice, damaged files are rebuilt, and studies share entries."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from ajuste.config import RunConfig
from ajuste.data.pipeline import Pipeline, make_preprocessing
from ajuste.training import cache
from ajuste.training.feeds import _activations, _cut, _phase_feeds
from ajuste.training.inference import use_channels_last
from ajuste.training.run import train_run

TINY = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "data.image_size": 32,
        "data.batch_size": 64, "train.min_steps": 0, "train.threads": 1, "data.augment": "none"}


@pytest.fixture(autouse=True)
def _fresh_registry():
    cache.clear()
    cache._SAID.clear()
    yield
    cache.clear()


def _cfg(**over) -> RunConfig:
    return RunConfig().override({**TINY, **over})


def _pipeline(data, bb, *, image_size=32, mean=None, n_train=60, augment="none"):
    rng = np.random.default_rng(0)
    idx = rng.permutation(len(data))
    splits = {"train": idx[:n_train], "val": idx[n_train:n_train + 30], "test": idx[n_train + 30:n_train + 40]}
    pre = make_preprocessing(data, bb, image_size=image_size, max_length=64)
    if mean is not None:
        pre.mean = mean
    return Pipeline(data, splits, pre, tokenizer=getattr(bb, "tokenizer", None), augment=augment, batch_size=16)


# --- the split forward ----------------------------------------------------------------------------------


def test_every_timm_group_cut_reproduces_the_forward_pass(tiny_timm, image_batch):
    x, _ = image_batch
    tiny_timm.eval()
    with torch.no_grad():
        want = tiny_timm.features(x)
        for g in range(1, len(tiny_timm.layer_groups())):
            assert tiny_timm.split(g) is not None, g
            got = tiny_timm.forward_suffix(tiny_timm.forward_prefix(x, g), g)
            torch.testing.assert_close(got, want, rtol=0, atol=0)
    assert tiny_timm.split(0) is None  # nothing below the first group to freeze


def test_text_cut_is_ragged_and_independent_of_padding(tiny_text):
    """Stored without padding and re-padded per batch, each example's features do not change."""
    tiny_text.eval()
    texts = ["a fine day", "terrible, awful film that went on and on", "ok"]
    alone = [dict(tiny_text.tokenizer([t], return_tensors="pt")) for t in texts]
    batch = dict(tiny_text.tokenizer(texts, padding=True, return_tensors="pt"))
    g = 2  # input of the second transformer layer
    sp = tiny_text.split(g)
    assert sp is not None and sp.ragged
    with torch.no_grad():
        want = torch.cat([tiny_text.features(a) for a in alone])
        acts = tiny_text.forward_prefix(batch, g)  # (B, T, H), padded to the longest
        lens = batch["attention_mask"].sum(1).numpy()
        entry = cache.build("k", cache.Settings(True, None, 2**30, torch.float32),
                            iter([(acts, lens)]), n=3, lengths=lens)
        got = tiny_text.forward_suffix(entry.batch([0, 1, 2]), g)
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5)
    assert entry.data.shape[0] == lens.sum()  # real tokens only


def test_cached_partial_fit_equals_the_live_one(digits_small):
    """Same batches, same numbers: fp32 storage equals live to float noise, bf16 storage within its rounding."""
    runs = {}
    for name, over in {"live": {"train.cache": "off"}, "fp32": {"train.cache_dtype": "fp32"},
                       "bf16": {"train.cache_dtype": "bf16"}}.items():
        cfg = _cfg(**{"strategy.name": "partial", "strategy.unfreeze": 2, "train.epochs": 3, **over})
        res = train_run(cfg=cfg, data=digits_small, progress=False, evaluate_test=False)
        runs[name] = res
    assert runs["live"].summary["val_loss"] == pytest.approx(runs["fp32"].summary["val_loss"], rel=1e-4)
    assert runs["live"].summary["val_loss"] == pytest.approx(runs["bf16"].summary["val_loss"], rel=2e-2)
    assert runs["live"].summary["val_loss"] != runs["bf16"].summary["val_loss"]  # bf16 storage was really used


def test_cached_logits_match_live_in_training_mode(digits_small):
    """Frozen BatchNorm stays in eval mode in the live pass too, so a cached batch gives the live logits."""
    cfg = _cfg(**{"strategy.name": "partial", "strategy.unfreeze": 2, "train.epochs": 2})
    from ajuste.backbones.factory import create_backbone
    from ajuste.strategies.base import get_strategy, resolve_config

    cfg = resolve_config(cfg, "image")
    bb = create_backbone("timm/test_efficientnet", num_classes=10, pretrained=False)
    pipe = _pipeline(digits_small, bb)
    phase = get_strategy("partial").phases(cfg, len(bb.layer_groups()))[0]
    bb.set_trainable(phase.train_groups, freeze_bn_stats=True)
    train, val = _phase_feeds(bb, pipe, cfg, phase, channels_last=use_channels_last(cfg, bb))
    assert train.cached and val.cached
    bb.train()
    live = pipe.loader("train", shuffle=True, augment=True, seed=3)
    cached = train.make(3, 1)
    (x, y1), (acts, y2) = next(iter(live)), next(iter(cached))
    assert torch.equal(y1, y2)  # the same shuffle
    with torch.no_grad():
        torch.testing.assert_close(train.forward(acts), bb(x), rtol=2e-2, atol=2e-2)  # bf16 storage


# --- keys ---------------------------------------------------------------------------------------------------


def _key(bb, pipe, cut, split="train", **kw):
    args = dict(amp=None, channels_last=False, dtype=torch.bfloat16)
    args.update(kw)
    return cache.digest_json(cache.cache_key(backbone=bb, split=cut, pipeline=pipe, split_name=split, **args))


def test_changing_any_key_part_misses(digits_small, tiny_timm):
    bb = tiny_timm
    pipe = _pipeline(digits_small, bb)
    groups = bb.layer_groups()
    cut = bb.split(len(groups) - 2)
    base = _key(bb, pipe, cut)
    assert _key(bb, pipe, cut) == base  # deterministic
    other = {
        "cut": _key(bb, pipe, bb.split(len(groups) - 3)),
        "split indices": _key(bb, pipe, cut, split="val"),
        "image size": _key(bb, _pipeline(digits_small, bb, image_size=48), cut),
        "normalisation": _key(bb, _pipeline(digits_small, bb, mean=(0.4, 0.4, 0.4)), cut),
        "fewer examples": _key(bb, _pipeline(digits_small, bb, n_train=59), cut),
        "storage dtype": _key(bb, pipe, cut, dtype=torch.float16),
        "compute dtype": _key(bb, pipe, cut, amp=torch.bfloat16),
        "compute dtype fp16": _key(bb, pipe, cut, amp=torch.float16),
        "compute device": _key(bb, pipe, cut, device=torch.device("cuda", 0)),
        "inputs": _key(bb, _pipeline(digits_small.subset(np.arange(len(digits_small))[::-1]), bb), cut),
    }
    with torch.no_grad():  # one frozen weight, or one BatchNorm statistic, of the prefix
        bb.model.blocks[0][0].conv.weight[0, 0, 0, 0] += 1e-3
    other["prefix weight"] = _key(bb, pipe, cut)
    with torch.no_grad():
        bb.model.blocks[0][0].conv.weight[0, 0, 0, 0] -= 1e-3
        bb.model.bn1.running_mean[0] += 1e-3
    other["prefix BN statistics"] = _key(bb, pipe, cut)
    with torch.no_grad():
        bb.model.bn1.running_mean[0] -= 1e-3
    assert _key(bb, pipe, cut) == base
    for what, key in other.items():
        assert key != base, what
    # The trainable suffix and the head are not inputs of the cached values: changing them hits.
    with torch.no_grad():
        bb.model.conv_head.weight.add_(1.0)
        bb.classifier.weight.add_(1.0)
    assert _key(bb, pipe, cut) == base


def test_other_weights_are_never_served_from_memory_or_disk(digits_small, tmp_path):
    from ajuste.backbones.factory import create_backbone

    cfg = _cfg(**{"train.cache_dir": str(tmp_path)})
    torch.manual_seed(0)
    a = create_backbone("timm/test_efficientnet", num_classes=10, pretrained=False)
    torch.manual_seed(1)
    b = create_backbone("timm/test_efficientnet", num_classes=10, pretrained=False)
    pipe = _pipeline(digits_small, a)
    cut_a, cut_b = a.split(4), b.split(4)
    ea = _activations(a, pipe, cfg, cut_a, "train", channels_last=False, worth=True, console=None)
    eb = _activations(b, pipe, cfg, cut_b, "train", channels_last=False, worth=True, console=None)
    assert cache.REGISTRY.stats["builds"] == 2 and ea.key != eb.key
    assert not torch.equal(ea.batch([0, 1]), eb.batch([0, 1]))
    again = _activations(a, pipe, cfg, cut_a, "train", channels_last=False, worth=True, console=None)
    assert again is ea and cache.REGISTRY.stats["hits"] == 1


# --- limits, files ---------------------------------------------------------------------------------------


def test_over_the_size_limit_runs_live_with_one_notice(digits_small, capsys):
    cfg = _cfg(**{"strategy.name": "partial", "strategy.unfreeze": 2, "train.epochs": 2,
                  "train.cache_max_gb": 1e-7})
    res = train_run(cfg=cfg, data=digits_small, progress=False, evaluate_test=False)
    res2 = train_run(cfg=cfg, data=digits_small, progress=False, evaluate_test=False)
    err = capsys.readouterr().err
    assert err.count("train.cache_max_gb") == 1 and "run every epoch instead" in err
    assert res.summary["status"] == res2.summary["status"] == "complete"
    assert cache.REGISTRY.stats["builds"] == 0 and cache.REGISTRY.stats["too_large"] >= 2


def _entry(tmp_path, digits_small, tiny_timm, **over):
    cfg = _cfg(**{"train.cache_dir": str(tmp_path), **over})
    pipe = _pipeline(digits_small, tiny_timm)
    cut = tiny_timm.split(4)
    return lambda: _activations(tiny_timm, pipe, cfg, cut, "train", channels_last=False, worth=True, console=None)


def test_a_file_is_read_back_by_another_process(tmp_path, digits_small, tiny_timm):
    get = _entry(tmp_path, digits_small, tiny_timm)
    first = get()
    assert first.path is not None and first.path.is_file()
    cache.clear()  # a new process: nothing in memory
    second = get()
    assert cache.REGISTRY.stats == {**cache.REGISTRY.stats, "disk_hits": 1, "builds": 0}
    assert torch.equal(first.batch(list(range(first.n))), second.batch(list(range(second.n))))


@pytest.mark.parametrize("damage", ["truncate", "flip", "garbage", "empty"])
def test_a_damaged_file_is_detected_and_rebuilt(tmp_path, digits_small, tiny_timm, damage, capsys):
    get = _entry(tmp_path, digits_small, tiny_timm)
    good = get()
    path = good.path
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    elif damage == "flip":
        raw[len(cache.MAGIC) + 100] ^= 0xFF  # one data byte: only the checksum can tell
    elif damage == "garbage":
        raw = bytearray(b"not a cache file at all" * 10)
    else:
        raw = bytearray()
    path.write_bytes(bytes(raw))
    cache.clear()
    rebuilt = get()
    assert cache.REGISTRY.stats["rebuilt_corrupt"] == 1 and cache.REGISTRY.stats["builds"] == 1
    assert "damaged" in capsys.readouterr().err
    assert torch.equal(rebuilt.batch([0, 5]), good.batch([0, 5]))
    cache.clear()
    get()  # the rebuilt file is whole
    assert cache.REGISTRY.stats["disk_hits"] == 1


def test_too_large_for_memory_spills_to_a_memmap(tmp_path, digits_small, tiny_timm, monkeypatch):
    in_memory = _entry(tmp_path / "a", digits_small, tiny_timm)()
    cache.clear()
    monkeypatch.setattr(cache, "MEMORY_SHARE", 0.0)
    monkeypatch.setattr(cache, "_SPILL_DIR", tmp_path / "spill")
    pipe = _pipeline(digits_small, tiny_timm)
    spilled = _activations(tiny_timm, pipe, _cfg(), tiny_timm.split(4), "train", channels_last=False, worth=True,
                           console=None)
    assert not spilled.in_memory and isinstance(spilled.data, np.memmap)
    assert spilled.path.parent == tmp_path / "spill"
    idx = [3, 1, 4, 1, 5]
    assert torch.equal(spilled.batch(idx), in_memory.batch(idx))


# --- when the cache is used -----------------------------------------------------------------------------


def test_augmentation_keeps_training_live_and_says_so_once(digits_small, capsys):
    cfg = _cfg(**{"strategy.name": "partial", "strategy.unfreeze": 2, "train.epochs": 2, "data.augment": "light"})
    res = train_run(cfg=cfg, data=digits_small, progress=False, evaluate_test=False)
    train_run(cfg=cfg, data=digits_small, progress=False, evaluate_test=False)
    err = capsys.readouterr().err
    assert err.count("data.augment=light") == 1
    assert res.summary["status"] == "complete"
    assert cache.REGISTRY.stats["builds"] == 1 and cache.REGISTRY.stats["hits"] == 1  # validation only


@pytest.mark.parametrize("strategy,cut_group", [("linear-probe", -1), ("partial", -3), ("two-stage", -1),
                                                ("full", None), ("lora", None)])
def test_which_phases_cut_where(strategy, cut_group, tiny_timm):
    from ajuste.strategies.base import get_strategy, resolve_config

    cfg = resolve_config(_cfg(**{"strategy.name": strategy}), "image")
    strat = get_strategy(strategy)
    strat.prepare(tiny_timm, cfg)
    phase = strat.phases(cfg, len(tiny_timm.layer_groups()))[0]
    tiny_timm.set_trainable(phase.train_groups, select=phase.select)
    cut = _cut(tiny_timm, cfg, phase)
    if cut_group is None:
        assert cut is None
    else:
        assert cut is not None and cut.group == cut_group % len(tiny_timm.layer_groups())
    assert _cut(tiny_timm, cfg.override({"train.cache": "off"}), phase) is None


def test_study_cells_share_activations_through_the_study_dir(tmp_path):
    """linear-probe and the head phase of two-stage cut at the same place (same seed: same weights). One cell
    after the other in this process (workers=1), so the registry's counts are this process's."""
    from ajuste.study.runner import run_study
    from ajuste.study.spec import StudySpec

    sets = [f"{k}={v}" for k, v in TINY.items()] + ["train.epochs=2", "strategy.head_epochs=2"]
    spec = StudySpec(source="digits", model="timm/test_efficientnet", strategies=["linear-probe", "two-stage"],
                     fractions=[0.2], seeds=1, sets=sets)
    run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    stats = dict(cache.REGISTRY.stats)
    assert stats["builds"] == 2 and stats["hits"] == 2  # (train, val) built by one cell, read by the other
    assert len(list((tmp_path / "cache").glob("*.acts"))) == 2
