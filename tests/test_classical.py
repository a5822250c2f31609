"""The classical arm: TF-IDF or HOG + colour features and a tuned logistic regression, saved without pickle and
used like any run (evaluate, predict, export), and the study's floor."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch

from ajuste.backbones.classical import HogColourBackbone, TfidfBackbone, colour_histograms, feature_length, hog
from ajuste.config import RunConfig
from ajuste.errors import AjusteError, ConfigError
from ajuste.strategies.base import list_strategies
from ajuste.training.run import train_run
from ajuste.training.run_eval import evaluate_run, predict_inputs
from ajuste.training.run_load import load_run

SPAM = ["win a free prize now", "free cash prize claim now", "claim your free entry", "urgent prize waiting call now",
        "you won cash call now", "free entry win cash"]
HAM = ["see you at lunch", "are we still on for dinner", "call me when you get home", "lunch at noon tomorrow",
       "running late see you soon", "dinner is ready at home"]


def _text_csv(tmp_path: Path, copies: int = 6) -> Path:
    rows = ["text,label"]
    for k in range(copies):
        rows += [f"{t} {k},spam" for t in SPAM] + [f"{t} {k},ham" for t in HAM]
    path = tmp_path / "sms.csv"
    path.write_text("\n".join(rows) + "\n")
    return path


def _cfg(source: Path | str, **extra) -> RunConfig:
    return RunConfig().override({"data.source": str(source), "strategy.name": "classical", **extra})


def test_listed_as_a_strategy_and_the_floor_of_a_study():
    from ajuste.study.spec import DEFAULT_STRATEGIES

    names = {s.name: s for s in list_strategies()}
    assert names["classical"].baseline and "classical" in DEFAULT_STRATEGIES


def test_torch_tfidf_equals_scikit_learn(tmp_path):
    texts = SPAM + HAM + ["Free lunch? CALL now!!", "жжж щщщ"]
    bb = TfidfBackbone.fit(SPAM + HAM, 2, max_features=1000)
    want = bb.matrix(texts).toarray()
    got = bb.features(bb.tokenizer(texts, padding=True, return_tensors="pt")).numpy()
    assert got.shape == want.shape and np.abs(want).sum() > 0
    np.testing.assert_allclose(got, want, atol=1e-5)
    assert not got[-1].any()  # no known n-gram: the zero vector, as scikit-learn gives


def test_image_features_see_shape_and_colour():
    x = torch.zeros(2, 3, 64, 64)
    x[0, :, :, 32:] = 1.0  # a vertical edge, grey
    x[1, :, 32:, :] = 1.0  # a horizontal edge
    h = hog(x)
    assert h.shape == (2, 7 * 7 * 4 * 9) and torch.isfinite(h).all()
    assert not torch.allclose(h[0], h[1])  # the orientation of the edge shows
    red = torch.zeros(1, 3, 16, 16)
    red[:, 0] = 1.0
    c = colour_histograms(red)
    assert torch.isclose(c[0, :48].sum(), torch.tensor(3.0))  # each channel's histogram sums to 1
    assert c[0, 48:].argmax() == 3 * 16  # the joint bin of pure red (r=3, g=0, b=0)
    bb = HogColourBackbone(3)
    assert bb.raw_features(torch.rand(4, 3, 96, 96) * 2 - 1).shape == (4, feature_length())


def test_text_run_trains_saves_without_pickle_and_predicts(tmp_path, monkeypatch):
    out = tmp_path / "run"
    res = train_run(cfg=_cfg(_text_csv(tmp_path)), out=out, progress=False)
    s = res.summary
    assert s["status"] == "complete" and s["strategy"] == "classical" and s["model"] == "tf-idf"
    assert s["test_accuracy"] >= 0.9  # the two classes share no word: the floor must separate them
    lines = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [x["phase"] for x in lines][:2] == ["C=0.01", "C=0.1"] and s["best_epoch"] >= 1
    # Nothing in the run is a pickle, and loading it never unpickles: refuse every way of doing so.
    for f in out.rglob("*"):
        if f.is_file():
            assert f.suffix in {".json", ".jsonl", ".yaml", ".safetensors", ".lock", ""}, f
            assert not f.read_bytes().startswith(b"\x80"), f  # pickle protocol 2+ header

    def no_pickle(*a, **k):
        raise AssertionError("unpickling")

    monkeypatch.setattr(pickle, "load", no_pickle)
    monkeypatch.setattr(pickle, "loads", no_pickle)
    monkeypatch.setattr(pickle, "Unpickler", no_pickle)
    monkeypatch.setattr(torch, "load", no_pickle)
    run = load_run(out)
    assert isinstance(run.backbone, TfidfBackbone)
    preds = predict_inputs(out, ["claim your free cash prize now", "see you at dinner"])
    assert [p["label"] for p in preds] == ["spam", "ham"]
    ev = evaluate_run(out)
    assert ev["accuracy"] == pytest.approx(s["test_accuracy"])


def test_image_run_reproduces_its_scikit_learn_fit_after_reload(tmp_path, digits_small):
    out = tmp_path / "run"
    res = train_run(cfg=_cfg("digits"), data=digits_small, out=out, progress=False)
    assert res.summary["test_accuracy"] > 0.8  # HOG on 48-px digits: far above chance (0.1)
    reloaded = load_run(out).backbone
    x = torch.rand(5, 3, 48, 48) * 2 - 1
    with torch.no_grad():
        assert torch.allclose(reloaded(x), res.backbone.eval()(x), atol=1e-5)
    assert reloaded.scale.min() > 0 and reloaded.mean.abs().sum() > 0  # standardisation fitted and saved


def test_exports_it_cannot_carry_are_one_line(tmp_path):
    from ajuste.export import export_run

    out = tmp_path / "run"
    train_run(cfg=_cfg(_text_csv(tmp_path, copies=3)), out=out, progress=False)
    with pytest.raises(AjusteError, match="--format ajuste"):
        export_run(run_dir=out, out=tmp_path / "onnx", format="onnx")
    assert not (tmp_path / "onnx").exists()
    done = export_run(run_dir=out, out=tmp_path / "exp", format="ajuste")
    assert done.max_abs_diff == 0.0 and load_run(tmp_path / "exp").summary["strategy"] == "classical"


def test_a_class_missing_from_a_small_training_share_is_never_predicted():
    from ajuste.strategies.classical import _all_classes

    class Fitted:  # what scikit-learn leaves on a model fitted on classes 0 and 2 of 3
        classes_ = np.array([0, 2])
        coef_ = np.array([[1.0, -1.0]])
        intercept_ = np.array([0.5])

    coef, bias = _all_classes(Fitted(), 3)
    assert coef.shape == (3, 2) and bias[1] < -10 and (coef[1] == 0).all()
    np.testing.assert_allclose(coef[2] - coef[0], [1.0, -1.0])  # the binary logit z = (2) - (0)


def test_tune_refuses_it_in_one_line(tmp_path):
    from ajuste.search.space import default_space
    from ajuste.strategies.base import get_strategy

    cfg = RunConfig().override({"strategy.name": "classical"})
    space = default_space(get_strategy("classical"), modality="text", default_lr=1e-3)
    with pytest.raises(ConfigError, match="nothing to search"):
        space.check(cfg)


def test_too_few_texts_for_any_ngram_is_one_line():
    with pytest.raises(AjusteError, match="too few or too short"):
        TfidfBackbone.fit(["a", "b"], 2, max_features=10)


def test_advice_names_the_floor_when_within_noise_and_recommends_it_only_when_it_beats_the_deep_arms():
    from ajuste.study.advice import recommend

    def rec(strategy, val, test, seconds):
        return {"cell": f"{strategy}-f1-s0", "strategy": strategy, "fraction": 1.0, "seed": 0, "n_train": 5000,
                "n_val": 800, "val_accuracy": val, "test_accuracy": test, "test_macro_f1": test, "val_loss": 0.3,
                "train_seconds": seconds, "cost_seconds": seconds, "peak_memory_mb": 100, "trainable_params": 10,
                "total_params": 10}

    # Within noise (one standard error of 800 examples is ±0.011) the floor is named, not chosen: a validation
    # split cannot show how hand-made features carry over to other data (pneumoniamnist: level on validation,
    # 8 points behind on test).
    near = recommend([rec("classical", 0.894, 0.880, 3.0), rec("two-stage", 0.890, 0.893, 400.0)])
    assert near["winner"] == "two-stage"
    assert any("within noise" in r and "1/133 of its cost" in r for r in near["reasons"])
    far = recommend([rec("classical", 0.70, 0.69, 3.0), rec("two-stage", 0.90, 0.91, 400.0)])
    assert far["winner"] == "two-stage"
    assert any("gains +22.0 points" in r for r in far["reasons"])
    above = recommend([rec("classical", 0.95, 0.95, 3.0), rec("two-stage", 0.90, 0.91, 400.0)])
    assert above["winner"] == "classical"
    assert any("beats every deep arm" in r for r in above["reasons"])
    assert any("matched the deep arms" in r for r in above["reasons"])


def test_the_floor_is_handed_over_only_when_it_is_the_recommendation():
    from ajuste.study.advice import handed_over

    recs = [{"cell": "classical-f1-s0", "strategy": "classical", "fraction": 1.0, "val_accuracy": 0.97,
             "cost_seconds": 3.0, "train_seconds": 3.0},
            {"cell": "two-stage-f1-s0", "strategy": "two-stage", "fraction": 1.0, "val_accuracy": 0.967,
             "cost_seconds": 400.0, "train_seconds": 400.0}]
    assert handed_over(recs, {"winner": "two-stage"})["cell"] == "two-stage-f1-s0"
    assert handed_over(recs, {"winner": "classical"})["cell"] == "classical-f1-s0"
