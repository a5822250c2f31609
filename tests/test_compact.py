"""`scratch-compact`: a small network trained from scratch, exported and reloaded like any run, and
counted as a from-scratch arm by the study's advice."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from ajuste.config import RunConfig
from ajuste.study.advice import aggregate, best_scratch_arm, crossover, recommend

BASE = {"train.epochs": 1, "train.min_steps": 0, "train.bf16": "off", "strategy.name": "scratch-compact"}


def _train(out: Path, **over):
    from ajuste.training.run import train_run

    return train_run(cfg=RunConfig().override({**BASE, **over}), out=out, progress=False)


@pytest.fixture(scope="module")
def image_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("compact-img") / "run"
    _train(out, **{"data.source": "digits", "data.fraction": 0.1, "data.image_size": 32, "data.batch_size": 32})
    return out


def test_image_run_trains_the_compact_resnet_not_the_backbone(image_run):
    from ajuste.backbones.compact import IMAGE_ARCH, IMAGE_ARGS

    desc = json.loads((image_run / "backbone.json").read_text())
    assert desc["arch"] == IMAGE_ARCH and desc["model_args"] == IMAGE_ARGS
    summary = json.loads((image_run / "summary.json").read_text())
    assert summary["strategy"] == "scratch-compact"
    # Half-width ResNet-10-T: ~1.2 M parameters, all trainable (EfficientNet-Lite0 would be 3.4 M).
    assert 1.0e6 < summary["trainable_params"] == summary["total_params"] < 1.5e6


def test_image_run_reloads_and_exports_as_plain_timm(image_run, tmp_path):
    import timm

    from ajuste.export import export_run
    from ajuste.training.run_eval import load_run

    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected = load_run(image_run).backbone.eval()(x).float()
    export_run(run_dir=image_run, out=tmp_path / "hf", format="hf")
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["architecture"] == "resnet10t" and cfg["model_args"]["channels"] == [32, 64, 128, 256]
    # Outside ajuste: timm applies the exported widths itself (a full-width ResNet-10-T would not load).
    model = timm.create_model(f"local-dir:{tmp_path / 'hf'}", pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(model(x), expected, atol=1e-5, rtol=1e-5)


def test_text_run_keeps_the_tokenizer_at_the_compact_shape(tiny_bert_dir, tmp_path):
    from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer

    from ajuste.backbones.compact import TEXT_SHAPE
    from ajuste.export import export_run
    from ajuste.training import calibration

    rows = ["text,label"] + [f"{w} film {i},{'pos' if w in ('great', 'lovely') else 'neg'}"
                             for i, w in enumerate(["awful", "great", "bad", "lovely"] * 6)]
    csv = tmp_path / "tiny.csv"
    csv.write_text("\n".join(rows) + "\n")
    run = tmp_path / "run"
    res = _train(run, **{"model.name": str(tiny_bert_dir), "data.source": str(csv), "data.batch_size": 8})
    saved = AutoConfig.from_pretrained(run / "hf")
    source = AutoConfig.from_pretrained(tiny_bert_dir)
    assert (saved.num_hidden_layers, saved.hidden_size) == (TEXT_SHAPE["num_hidden_layers"], TEXT_SHAPE["hidden_size"])
    assert source.hidden_size != saved.hidden_size and saved.vocab_size == source.vocab_size
    assert res.summary["total_params"] == sum(p.numel() for p in res.backbone.parameters())

    export_run(run_dir=run, out=tmp_path / "hf", format="hf")
    model = AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf", trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = tok(["great film", "awful awful film"], padding=True, return_tensors="pt")
    temperature = calibration.read(run)["temperature"]  # the export's logits are the calibrated ones
    with torch.no_grad():
        ours = res.backbone.eval()(dict(enc)).float() / temperature
        torch.testing.assert_close(model(**enc).logits.float(), ours, atol=1e-4, rtol=1e-4)


def _rec(strategy, fraction, n, acc, val=None):
    return {"strategy": strategy, "fraction": fraction, "seed": 0, "n_train": n, "test_accuracy": acc,
            "test_macro_f1": acc, "val_accuracy": acc if val is None else val, "train_seconds": 1.0,
            "peak_memory_mb": 100.0, "trainable_params": 10, "total_params": 100}


def test_advice_measures_the_crossover_against_the_scratch_arm_validation_prefers():
    recs = [_rec("two-stage", 0.1, 100, 0.90), _rec("two-stage", 1.0, 1000, 0.95),
            _rec("scratch", 0.1, 100, 0.40), _rec("scratch", 1.0, 1000, 0.80),
            _rec("scratch-compact", 0.1, 100, 0.60), _rec("scratch-compact", 1.0, 1000, 0.95)]
    agg = aggregate(recs)
    assert best_scratch_arm(agg) == "scratch-compact"
    assert crossover(agg, "two-stage", "scratch-compact")["status"] == "measured"
    assert crossover(agg, "two-stage", "scratch")["status"] == "not-reached"
    adv = recommend(recs)
    assert adv["best_finetuned"] == "two-stage"  # a compact net from scratch is not a fine-tuned arm
    assert adv["crossover"]["text"].startswith("scratch-compact catches up with two-stage at 1000")
    ahead = aggregate([_rec("two-stage", 0.1, 100, 0.88), _rec("scratch-compact", 0.1, 100, 0.93),
                       _rec("two-stage", 1.0, 1000, 0.98), _rec("scratch-compact", 1.0, 1000, 0.98)])
    assert crossover(ahead, "two-stage", "scratch-compact")["text"].startswith(
        "scratch-compact is level with or ahead of two-stage already at the smallest size run, 100 training examples")


def test_the_plot_labels_a_crossover_at_the_smallest_size_as_level_not_as_catching_up():
    from ajuste.report import plots

    def labels(agg, scratch):
        fig = plots.data_efficiency(agg, crossover=crossover(agg, "two-stage", scratch))
        return [t.get_text() for ax in fig.axes for t in (ax.get_legend().get_texts() if ax.get_legend() else [])]

    caught = aggregate([_rec("two-stage", 0.1, 100, 0.90), _rec("scratch", 0.1, 100, 0.40),
                        _rec("two-stage", 1.0, 1000, 0.95), _rec("scratch", 1.0, 1000, 0.95)])
    assert "scratch catches up" in labels(caught, "scratch")
    ahead = aggregate([_rec("two-stage", 0.1, 100, 0.88), _rec("scratch-compact", 0.1, 100, 0.93),
                       _rec("two-stage", 1.0, 1000, 0.98), _rec("scratch-compact", 1.0, 1000, 0.98)])
    got = labels(ahead, "scratch-compact")
    assert "scratch-compact level or ahead from here" in got and not any("catches up" in t for t in got)


def test_a_winner_behind_on_test_is_not_said_to_be_ahead():
    # Validation chose scratch-compact; its test accuracy is lower: no "-0.7 points over".
    adv = recommend([_rec("scratch-compact", 1.0, 1257, acc=0.978, val=0.993),
                     _rec("two-stage", 1.0, 1257, acc=0.985, val=0.970)])
    assert adv["winner"] == "scratch-compact"
    assert "ahead on validation (0.993 vs 0.970) though 0.7 points behind two-stage on test (0.985)" in adv["text"]
    assert "-0.7" not in adv["text"]


def test_the_study_default_runs_the_compact_net_as_its_scratch_arm():
    from ajuste.study.spec import StudySpec

    assert StudySpec(source="digits", model="efficientnet_lite0").strategies == \
        ["classical", "linear-probe", "two-stage", "scratch-compact"]
