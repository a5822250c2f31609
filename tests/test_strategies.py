"""Every strategy on tiny models: trainable params get gradients, frozen ones don't, frozen BN stays put."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from ajuste.config import RunConfig
from ajuste.strategies.base import get_strategy, list_strategies, resolve_config
from ajuste.training.param_groups import build_param_groups

STRATEGIES = ["linear-probe", "partial", "full", "two-stage", "gradual", "discriminative", "scratch",
              "scratch-compact"]
MODELS = ["tiny_timm", "tiny_text"]


def _cfg(strategy: str, modality: str) -> RunConfig:
    cfg = RunConfig().override({"strategy.name": strategy, "strategy.unfreeze": 1})
    return resolve_config(cfg, modality)


def test_registry_lists_all_strategies():
    peft = ["lora", "ia3", "bitfit", "prompt-tuning", "prefix-tuning"]  # tests/test_peft.py
    own_model = ["classical"]  # tests/test_classical.py
    assert sorted(s.name for s in list_strategies()) == sorted(STRATEGIES + peft + own_model)


@pytest.mark.parametrize("model_fixture", MODELS)
@pytest.mark.parametrize("strategy", STRATEGIES)
def test_every_phase_trains_exactly_its_groups(strategy, model_fixture, request):
    bb = request.getfixturevalue(model_fixture)
    batch = request.getfixturevalue("image_batch" if bb.modality == "image" else "text_batch")
    cfg = _cfg(strategy, bb.modality)
    strat = get_strategy(strategy)
    strat.prepare(bb, cfg)
    groups = bb.layer_groups()
    phases = strat.phases(cfg, len(groups))
    assert phases, strategy
    for phase in phases:
        bb.set_trainable(phase.train_groups, freeze_bn_stats=cfg.model.bn == "frozen")
        bb.zero_grad(set_to_none=True)
        bb.train()
        inputs, y = batch
        F.cross_entropy(bb(inputs), y).backward()
        chosen = set(range(len(groups))) if phase.train_groups is None else {i % len(groups) for i in phase.train_groups}
        for gi, g in enumerate(groups):
            for name, p in g.params:
                if gi in chosen:
                    assert p.requires_grad, (phase.name, name)
                    assert p.grad is not None, f"{strategy}/{phase.name}: trainable {name} got no gradient"
                else:
                    assert not p.requires_grad and p.grad is None, f"{strategy}/{phase.name}: frozen {name} got a gradient"
        # The optimizer sees exactly the trainable parameters, each once.
        pg = build_param_groups(groups, trainable=phase.train_groups, lr=1e-3, head_lr=1e-2, weight_decay=0.01)
        in_opt = [p for g in pg for p in g["params"]]
        assert len(in_opt) == len({id(p) for p in in_opt})
        assert {id(p) for p in in_opt} == {id(p) for p in bb.parameters() if p.requires_grad}


def _bn_stats(bb):
    return {n: b.clone() for n, b in bb.named_buffers() if "running" in n}


def test_frozen_batchnorm_stays_in_eval_mode_and_keeps_its_statistics(tiny_timm, image_batch):
    bb = tiny_timm
    bns = [m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns
    bb.set_trainable([-1])  # linear probe: everything but the head frozen
    bb.train()  # the classic bug: .train() puts frozen BN back into training mode
    assert all(not m.training for m in bns)
    before = _bn_stats(bb)
    bb(image_batch[0])
    after = _bn_stats(bb)
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_unfrozen_batchnorm_updates_statistics_unless_frozen_stats(tiny_timm, image_batch):
    bb = tiny_timm
    bb.set_trainable(None, freeze_bn_stats=False)
    bb.train()
    before = _bn_stats(bb)
    bb(image_batch[0])
    changed = [k for k in before if not torch.equal(before[k], _bn_stats(bb)[k])]
    assert changed, "trainable BN in train mode must update running stats"
    bb.set_trainable(None, freeze_bn_stats=True)
    bb.train()
    before = _bn_stats(bb)
    bb(image_batch[0])
    after = _bn_stats(bb)
    assert all(torch.equal(before[k], after[k]) for k in before)
    # ...while their affine parameters still learn.
    bn = next(m for m in bb.modules() if isinstance(m, torch.nn.BatchNorm2d))
    assert bn.weight.requires_grad


def test_scratch_reinitialises_every_weight(tiny_text):
    before = {n: p.clone() for n, p in tiny_text.named_parameters()}
    cfg = _cfg("scratch", "text")
    get_strategy("scratch").prepare(tiny_text, cfg)
    changed = [n for n, p in tiny_text.named_parameters() if p.ndim > 1 and not torch.equal(before[n], p)]
    matrices = [n for n, p in tiny_text.named_parameters() if p.ndim > 1]
    assert set(changed) == set(matrices)


def test_scratch_uses_he_init_for_convolutions(tiny_timm):
    tiny_timm.reinitialize(seed=0)
    conv = next(m for m in tiny_timm.modules() if isinstance(m, torch.nn.Conv2d) and m.groups == 1)
    fan_out = conv.out_channels * conv.kernel_size[0] * conv.kernel_size[1]
    expected = (2.0 / fan_out) ** 0.5
    assert conv.weight.std().item() == pytest.approx(expected, rel=0.35)


def test_layer_groups_are_ordered_input_to_output_with_head_last(tiny_timm, tiny_text):
    g = tiny_timm.layer_groups()
    assert g[0].name.startswith("conv_stem") or "stem" in g[0].name or g[0].params[0][0].startswith("conv_stem")
    assert g[-1].name == "head" and {p.shape[0] for _, p in g[-1].params} == {3}
    t = tiny_text.layer_groups()
    assert [x.name for x in t] == ["embeddings", "layer.0", "layer.1", "head"]
    # Every parameter belongs to exactly one group, except the unused pooler.
    named = [n for grp in t for n, _ in grp.params]
    assert len(named) == len(set(named))


def test_partial_rejects_more_groups_than_exist(tiny_timm):
    from ajuste.errors import ConfigError

    cfg = resolve_config(RunConfig().override({"strategy.name": "partial", "strategy.unfreeze": 99}), "image")
    with pytest.raises(ConfigError, match="strategy.unfreeze=99"):
        get_strategy("partial").phases(cfg, len(tiny_timm.layer_groups()))


def test_two_stage_second_phase_lr_is_head_lr_times_factor():
    cfg = resolve_config(RunConfig().override({"strategy.name": "two-stage", "optim.lr": 1e-4,
                                               "optim.head_lr_mult": 10, "strategy.stage2_lr_factor": 0.1}), "image")
    head, full = get_strategy("two-stage").phases(cfg, 5)
    assert head.train_groups == [-1] and head.head_lr == pytest.approx(1e-3)
    assert full.train_groups is None and full.lr == pytest.approx(1e-4) and full.head_lr == pytest.approx(1e-4)


def test_two_stage_end_to_end_phase_runs_its_schedule_unless_asked_to_stop_early():
    from ajuste.errors import ConfigError

    cfg = resolve_config(RunConfig().override({"strategy.name": "two-stage", "train.patience": 4}), "image")
    head, full = get_strategy("two-stage").phases(cfg, 5)
    assert head.patience == 4 and full.patience is None
    cfg = resolve_config(RunConfig().override({"strategy.name": "two-stage", "strategy.stage2_patience": 2}), "image")
    assert get_strategy("two-stage").phases(cfg, 5)[1].patience == 2
    with pytest.raises(ConfigError, match="strategy.stage2_patience=-1"):
        RunConfig().override({"strategy.stage2_patience": -1})


def test_gradual_unfreezes_one_group_per_phase_top_first():
    cfg = resolve_config(RunConfig().override({"strategy.name": "gradual"}), "image")
    phases = get_strategy("gradual").phases(cfg, 4)  # 3 body groups + head
    assert [p.train_groups for p in phases] == [[-1], [2, -1], [1, 2, -1], None]
    assert [p.patience for p in phases][:-1] == [None, None, None]
