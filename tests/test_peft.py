"""PEFT strategies on tiny models: adapters initialised non-trivially (a no-op would fail), one step
changes exactly the adapter and head parameters, merge == unmerged, save → load → same predictions,
and the bad-input errors."""

from __future__ import annotations

import json
import re

import pytest
import torch
import torch.nn.functional as F
from conftest import write_sentiment_csv

from ajuste.backbones.adapters import get_method, merge_adapters
from ajuste.config import RunConfig
from ajuste.errors import AjusteError, ConfigError
from ajuste.strategies.base import get_strategy, resolve_config
from ajuste.training.param_groups import build_param_groups

PEFT = ["lora", "ia3", "bitfit", "prompt-tuning", "prefix-tuning"]
CASES = [(m, f) for m in PEFT for f in ("tiny_timm", "tiny_text") if not (m.endswith("-tuning") and f == "tiny_timm")]


def _cfg(strategy: str, modality: str, **over) -> RunConfig:
    return resolve_config(RunConfig().override({"strategy.name": strategy, **over}), modality)


def _prepared(request, fixture: str, method: str, **over):
    bb = request.getfixturevalue(fixture)
    cfg = _cfg(method, bb.modality, **over)
    strat = get_strategy(method)
    strat.prepare(bb, cfg)
    _perturb(bb, method)
    return bb, cfg, strat


def _perturb(bb, method: str) -> None:
    """Move adapters off their identity initialisation (LoRA B = 0, IA3 = 1) so they change the output."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, p in bb.named_parameters():
            if method == "lora" and ".lora_B." in name:
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            elif method == "ia3" and ".ia3_l." in name:
                p.copy_(1.0 + 0.5 * torch.randn(p.shape, generator=g))
            elif method.endswith("-tuning") and "prompt_encoder" in name:
                p.copy_(torch.randn(p.shape, generator=g))


def _batch(request, bb):
    return request.getfixturevalue("image_batch" if bb.modality == "image" else "text_batch")


def _fresh_text(request):
    """A second, adapter-free tiny BERT with the same (saved) weights."""
    from ajuste.backbones.factory import create_backbone

    return create_backbone(str(request.getfixturevalue("tiny_bert_dir")), num_classes=3, pretrained=True)


def test_auto_targets_follow_the_structure(tiny_timm, tiny_text):
    timm_targets = tiny_timm.lora_targets(8)
    assert timm_targets and all(re.search(r"(conv_pw|conv_pwl|conv_head)$", n) for n in timm_targets)
    assert not any(".se." in n for n in timm_targets)  # squeeze-excite gates are skipped
    assert {n.rsplit(".", 1)[-1] for n in tiny_text.lora_targets(8)} == {"query", "value"}
    targets, ff = tiny_text.ia3_targets()
    assert {n.split("layer.0.", 1)[-1] for n in targets if ".0." in n} == \
        {"attention.self.key", "attention.self.value", "output.dense"}
    assert ff and set(ff) <= set(targets) and all(n.endswith("output.dense") and "attention" not in n for n in ff)


@pytest.mark.parametrize("method,fixture", CASES)
def test_one_step_changes_only_adapter_and_head(method, fixture, request):
    bb, cfg, strat = _prepared(request, fixture, method)
    inputs, y = _batch(request, bb)
    (phase,) = strat.phases(cfg, len(bb.layer_groups()))
    bb.set_trainable(phase.train_groups, select=phase.select, freeze_bn_stats=cfg.model.bn == "frozen")
    groups = build_param_groups(bb.layer_groups(), trainable=phase.train_groups, lr=1e-2, head_lr=1e-2,
                                weight_decay=0.01, requires_grad_only=True)
    in_opt = {id(p) for g in groups for p in g["params"]}
    assert in_opt == {id(p) for p in bb.parameters() if p.requires_grad}

    names = {id(p): n for n, p in bb.named_parameters()}
    head = {names[id(p)] for _, p in bb.layer_groups()[-1].params}
    trainable = {n for n, p in bb.named_parameters() if p.requires_grad}
    adapters = trainable - head
    assert adapters and head <= trainable
    assert all(re.search(get_method(method).select, n) for n in adapters)
    if method == "bitfit":
        assert all(n.endswith(".bias") for n in adapters)

    before = {k: v.clone() for k, v in bb.state_dict().items()}
    opt = torch.optim.AdamW(groups)
    bb.train()  # frozen BatchNorm must stay in eval mode: running statistics unchanged
    F.cross_entropy(bb(inputs), y).backward()
    for n, p in bb.named_parameters():
        assert (p.grad is not None) == (n in trainable), n
    opt.step()
    after = bb.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    # state_dict keys equal parameter names here, except for shared tensors listed twice by peft.
    changed_params = {k for k in changed if k in names.values()}
    assert changed == changed_params, f"buffers or aliases changed: {sorted(changed - changed_params)[:5]}"
    assert changed == trainable


@pytest.mark.parametrize("method,fixture", [c for c in CASES if c[0] != "bitfit"])
def test_adapters_change_the_output(method, fixture, request):
    """Guards the test above: the perturbed adapters are live in the forward pass."""
    if fixture == "tiny_timm":
        from ajuste.backbones.factory import create_backbone

        torch.manual_seed(0)
        plain = create_backbone("timm/test_efficientnet", num_classes=3, pretrained=False)
        torch.manual_seed(0)
        bb = create_backbone("timm/test_efficientnet", num_classes=3, pretrained=False)
        cfg = _cfg(method, "image")
        get_strategy(method).prepare(bb, cfg)
        _perturb(bb, method)
        inputs = request.getfixturevalue("image_batch")[0]
    else:
        bb, _, _ = _prepared(request, fixture, method)
        plain = _fresh_text(request)
        plain.classifier.load_state_dict(bb.classifier.state_dict())
        inputs = request.getfixturevalue("text_batch")[0]
    bb.eval(), plain.eval()
    with torch.no_grad():
        assert not torch.allclose(bb(inputs), plain(inputs), atol=1e-4)


@pytest.mark.parametrize("method,fixture", [(m, f) for m in ("lora", "ia3") for f in ("tiny_timm", "tiny_text")])
def test_merged_equals_unmerged(method, fixture, request):
    bb, _, _ = _prepared(request, fixture, method)
    inputs, _ = _batch(request, bb)
    bb.eval()
    with torch.no_grad():
        before = bb(inputs)
        merge_adapters(bb)
        after = bb(inputs)
    assert bb.peft is None and "peft" not in bb.describe()
    assert not any("lora" in k or "ia3" in k or "base_layer" in k for k in bb.state_dict())
    torch.testing.assert_close(after, before, rtol=1e-4, atol=1e-5)


def test_bitfit_trains_only_biases_and_head(tiny_text):
    cfg = _cfg("bitfit", "text")
    strat = get_strategy("bitfit")
    strat.prepare(tiny_text, cfg)
    (phase,) = strat.phases(cfg, len(tiny_text.layer_groups()))
    tiny_text.set_trainable(phase.train_groups, select=phase.select)
    trainable = [n for n, p in tiny_text.named_parameters() if p.requires_grad]
    assert all(n.endswith(".bias") or n.startswith("_classifier.") for n in trainable)
    assert "_classifier.weight" in trainable
    assert not any("pooler" in n for n in trainable)  # unused by our pooling: no gradient would reach it
    assert sum(n.endswith(".bias") for n in trainable) > 10


# --- runs: summary, save → load, export -----------------------------------------------------------


def _image_run_cfg(strategy: str, **over) -> RunConfig:
    base = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "strategy.name": strategy,
            "train.epochs": 1, "data.image_size": 32, "data.batch_size": 64, "train.min_steps": 0}
    return RunConfig().override({**base, **over})


@pytest.fixture()
def text_csv(tmp_path):
    return write_sentiment_csv(tmp_path / "tiny.csv", 80)


def _test_logits(backbone, pipeline):
    from ajuste.training.loop import predict_logits

    return predict_logits(backbone, pipeline.loader("test", batch_size=64), amp=None)[0]


def test_lora_run_saves_loads_and_exports_merged(tmp_path, digits_small):
    from ajuste.export import export_run
    from ajuste.training.run import train_run
    from ajuste.training.run_eval import load_run

    res = train_run(cfg=_image_run_cfg("lora"), out=tmp_path / "run", data=digits_small, progress=False)
    s = res.summary
    p = s["peft"]
    assert p["method"] == "lora" and {"conv_pw", "conv_pwl"} <= set(p["targets"]) and p["n_target_modules"] > 0
    assert p["adapter_bytes"] == (tmp_path / "run" / "adapter.safetensors").stat().st_size > 0
    assert s["trainable_params"] == p["adapter_params"] + p["head_params"] < s["total_params"]
    assert 0 < p["adapter_share"] < 1
    desc = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert desc["peft"]["method"] == "lora" and desc["peft"]["target_modules"]
    from safetensors.torch import load_file

    saved_adapter = load_file(tmp_path / "run" / "adapter.safetensors")
    assert any(".lora_A." in k for k in saved_adapter) and any("classifier" in k for k in saved_adapter)
    assert not any("base_layer" in k for k in saved_adapter)

    expected = _test_logits(res.backbone, res.pipeline)
    loaded = load_run(tmp_path / "run")
    torch.testing.assert_close(_test_logits(loaded.backbone, res.pipeline), expected, rtol=1e-5, atol=1e-5)

    out = export_run(run_dir=tmp_path / "run", out=tmp_path / "merged", merge=True)
    assert out.merged and not out.peft_needed and out.max_abs_diff < 1e-3
    desc = json.loads((tmp_path / "merged" / "backbone.json").read_text())
    assert "peft" not in desc
    merged = load_run(tmp_path / "merged")
    assert merged.backbone.peft is None and type(merged.backbone.model).__name__ == "EfficientNet"
    assert not any("lora" in k for k in merged.backbone.state_dict())
    torch.testing.assert_close(_test_logits(merged.backbone, res.pipeline), expected, rtol=1e-3, atol=1e-3)
    with pytest.raises(AjusteError, match="not empty"):
        export_run(run_dir=tmp_path / "run", out=tmp_path / "merged", merge=True)


@pytest.mark.parametrize("method", ["lora", "prefix-tuning"])
def test_text_run_reloads_with_the_same_predictions(method, tmp_path, tiny_bert_dir, text_csv):
    from ajuste.export import export_run
    from ajuste.training.run import train_run
    from ajuste.training.run_eval import load_run, predict_inputs

    cfg = RunConfig().override({"model.name": str(tiny_bert_dir), "strategy.name": method, "train.epochs": 1,
                                "train.min_steps": 0, "data.source": str(text_csv), "data.batch_size": 16})
    res = train_run(cfg=cfg, out=tmp_path / "run", progress=False)
    expected = _test_logits(res.backbone, res.pipeline)
    loaded = load_run(tmp_path / "run")
    torch.testing.assert_close(_test_logits(loaded.backbone, res.pipeline), expected, rtol=1e-4, atol=1e-4)
    rows = predict_inputs(tmp_path / "run", ["great lovely film", "awful dreadful film"])
    assert [r["label"] in ("neg", "pos") for r in rows] == [True, True]
    if method == "lora":
        out = export_run(run_dir=tmp_path / "run", out=tmp_path / "merged", merge=True)
        assert out.merged and out.max_abs_diff < 1e-3
        merged_rows = predict_inputs(tmp_path / "merged", ["great lovely film", "awful dreadful film"])
        assert [r["label"] for r in merged_rows] == [r["label"] for r in rows]
        assert [r["probability"] for r in merged_rows] == pytest.approx([r["probability"] for r in rows], abs=1e-3)
    else:
        with pytest.raises(ConfigError, match="cannot be merged"):
            export_run(run_dir=tmp_path / "run", out=tmp_path / "merged", merge=True)
        out = export_run(run_dir=tmp_path / "run", out=tmp_path / "copy")
        assert not out.merged and out.peft_needed and out.max_abs_diff < 1e-5


# --- bad input ------------------------------------------------------------------------------------


@pytest.mark.parametrize("assignment,match", [("peft.r=0", r"peft\.r=0"), ("peft.r=-4", r"peft\.r=-4"),
                                              ("peft.targets=query,,value", r"peft\.targets"),
                                              ("peft.num_virtual_tokens=0", r"peft\.num_virtual_tokens")])
def test_bad_peft_config_names_the_field(assignment, match):
    with pytest.raises(ConfigError, match=match):
        RunConfig().override([assignment])


def test_rank_larger_than_the_layer(tiny_timm, tiny_text):
    with pytest.raises(ConfigError, match=r"peft\.r=100 is larger than layer .*query"):
        get_strategy("lora").prepare(tiny_text, _cfg("lora", "text", **{"peft.r": 100, "peft.targets": "query"}))
    with pytest.raises(ConfigError, match=r"peft\.r=4096 is larger than every auto-selected layer"):
        get_strategy("lora").prepare(tiny_timm, _cfg("lora", "image", **{"peft.r": 4096}))


def test_target_matching_nothing_lists_existing_modules(tiny_timm, tiny_text):
    with pytest.raises(ConfigError, match=r"'qurey' matches no .*attention\.self\.query"):
        get_strategy("lora").prepare(tiny_text, _cfg("lora", "text", **{"peft.targets": "qurey"}))
    with pytest.raises(ConfigError, match=r"'attn' matches no .*conv_pw"):
        get_strategy("ia3").prepare(tiny_timm, _cfg("ia3", "image", **{"peft.targets": "conv_pw,attn"}))


def test_explicit_targets_glob_and_suffix(tiny_timm):
    get_strategy("lora").prepare(tiny_timm, _cfg("lora", "image", **{"peft.targets": "conv_head,blocks.4.*pwl",
                                                                       "peft.r": 4}))
    assert tiny_timm.peft["target_modules"] == ["conv_head", "blocks.4.0.conv_pwl"]


@pytest.mark.parametrize("method", ["prompt-tuning", "prefix-tuning"])
def test_prompt_methods_refuse_image_models(method, tiny_timm, tmp_path, capsys):
    with pytest.raises(ConfigError, match="not supported for image models"):
        _cfg(method, "image")
    with pytest.raises(ConfigError, match="not supported for image models"):
        get_strategy(method).prepare(tiny_timm, RunConfig())
    from ajuste.cli.main import main

    rc = main(["train", "digits", "--model", "timm/test_efficientnet", "--strategy", method,
               "--out", str(tmp_path / "r"), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "not supported for image models" in err and "Traceback" not in err


def test_search_spaces_are_valid_config_ranges():
    space_mod = pytest.importorskip("ajuste.search.space")
    for method in PEFT:
        strat = get_strategy(method)
        for modality in ("text",) if method.endswith("-tuning") else ("text", "image"):
            raw = strat.search_space(modality)
            assert "optim.lr" in raw
            space = space_mod.SearchSpace.from_mapping(raw, where=method)
            values = {}
            for p in space:
                values[p.name] = p.choices[0] if p.kind == "categorical" else p.low
            RunConfig().override(values)  # every key is a real config field with a valid value
    merged = space_mod.default_space(get_strategy("lora"), modality="text", default_lr=1e-3)
    assert {"peft.r", "peft.alpha", "peft.dropout", "optim.lr", "optim.weight_decay"} <= {p.name for p in merged}
    assert merged.params["optim.lr"].high == pytest.approx(5e-3)  # the strategy's range wins
