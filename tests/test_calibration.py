"""Temperature scaling (training/calibration.py): T fitted on validation, stored in the run, applied by predict,
evaluate and every export format; ECE before and after in evaluate and the study report."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ajuste.cli.main import main
from ajuste.config import RunConfig
from ajuste.errors import AjusteError
from ajuste.metrics import expected_calibration_error, reliability_bins
from ajuste.training import calibration

TINY = {"model.name": "timm/test_efficientnet", "model.pretrained": False, "data.image_size": 32,
        "strategy.name": "full", "train.epochs": 2, "train.min_steps": 0, "data.batch_size": 32, "train.bf16": "off"}


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert "Traceback" not in err and len(lines) == 1, err
    return lines[0]


# --- the fit and the metric ------------------------------------------------------------------------------

def _calibrated_logits(n: int = 4000, classes: int = 10, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits and labels drawn from softmax(logits): a perfectly calibrated model, by construction."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, classes, generator=g) * 2
    y = torch.multinomial(torch.softmax(z, 1), 1, generator=g).squeeze(1)
    return z, y


def test_overconfident_logits_fit_the_temperature_that_undoes_them():
    z, y = _calibrated_logits()
    assert calibration.fit_temperature(z, y) == pytest.approx(1.0, abs=0.05)
    t = calibration.fit_temperature(z * 5, y)  # five times too confident
    assert t == pytest.approx(5.0, rel=0.05)
    assert calibration.fit_temperature(z / 3, y) == pytest.approx(1 / 3, rel=0.05)  # underconfident: T < 1
    s = calibration.scores(z * 5, y, t)
    assert s["nll_after"] < s["nll_before"] - 1.0 and s["ece_after"] < 0.03 < 0.2 < s["ece_before"]
    assert calibration.fit_temperature(z * 5, y) == t  # deterministic


def test_fit_is_bounded_and_never_raises_the_nll():
    y = torch.tensor([0, 1, 2, 0])
    separable = torch.eye(3)[y] * 4  # NLL keeps falling as T -> 0: the bound stops it
    assert 1 / 20 <= calibration.fit_temperature(separable, y) < 0.2  # (the NLL is flat at 0 down there)
    assert calibration.fit_temperature(torch.zeros(0, 3), torch.zeros(0, dtype=torch.long)) == 1.0
    z, y = _calibrated_logits(50, seed=3)
    t = calibration.fit_temperature(z, y)
    assert calibration.nll(z, y, t) <= calibration.nll(z, y)


def test_ece_is_top_label_over_15_equal_width_bins():
    probs = np.array([[0.9, 0.1], [0.9, 0.1], [0.6, 0.4], [0.3, 0.7]])
    labels = np.array([0, 1, 0, 1])
    bins = reliability_bins(probs, labels)
    assert len(bins["count"]) == 15 and sum(bins["count"]) == 4
    # confidence 0.9 -> bin 13 ((13/15, 14/15]); 0.6 -> bin 8 ((8/15, 9/15]); 0.7 -> bin 10
    assert bins["count"][13] == 2 and bins["accuracy"][13] == 0.5 and bins["confidence"][13] == pytest.approx(0.9)
    assert bins["count"][8] == 1 and bins["count"][10] == 1 and bins["confidence"][0] is None
    assert expected_calibration_error(probs, labels) == pytest.approx(0.5 * 0.4 + 0.25 * 0.4 + 0.25 * 0.3)
    assert reliability_bins(np.array([[1 / 15, 14 / 15]]), np.array([1]))["count"][13] == 1  # right-closed
    assert np.isnan(expected_calibration_error(np.zeros((0, 2)), np.zeros(0)))


# --- a real run ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    from ajuste.training.run import train_run

    # the built-in digits read again by evaluate (its own test split); a small training share keeps it quick
    out = tmp_path_factory.mktemp("cal") / "run"
    train_run(cfg=RunConfig().override({**TINY, "data.fraction": 0.2}), out=out, progress=False)
    return out


def _inputs(n: int = 6) -> torch.Tensor:
    return torch.randn(n, 3, 32, 32, generator=torch.Generator().manual_seed(5))


def test_the_run_stores_a_temperature_that_lowers_validation_nll(run):
    rec = json.loads((run / "calibration.json").read_text())
    summary = json.loads((run / "summary.json").read_text())
    t = rec["temperature"]
    assert t > 0 and abs(t - 1) > 0.02, "a two-epoch tiny model should be miscalibrated: T = 1 tests nothing"
    assert rec["n_val"] == summary["n_val"] > 0 and rec["val"]["n"] == rec["n_val"]
    assert rec["val"]["nll_after"] <= rec["val"]["nll_before"]
    assert rec["val"]["ece_after"] < rec["val"]["ece_before"]
    assert "Guo" in rec["method"] and rec["test"]["n"] == summary["n_test"]
    brief = summary["calibration"]
    assert brief["temperature"] == t and brief["val_ece_before"] == rec["val"]["ece_before"]
    assert summary["test"]["calibration"]["temperature"] == t and "test_ece_after" in brief


def test_predict_gives_softmax_of_logits_over_t_with_the_same_labels(run):
    from ajuste.training.run_eval import load_run, predict_items

    loaded = load_run(run)
    assert loaded.temperature == json.loads((run / "calibration.json").read_text())["temperature"]
    x = _inputs()
    with torch.no_grad():
        logits = loaded.backbone(x).float()
    # predict_items takes PIL images or uint8 arrays; the API takes a float stack: check both through the run's
    # own forward, on images the pipeline turns into the same tensors
    digits = (np.random.default_rng(0).random((6, 8, 8)) * 255).astype(np.uint8)
    probs = predict_items(loaded, digits)
    from ajuste.data.pipeline import Pipeline
    from ajuste.data.sources import LabelledData

    data = LabelledData(modality="image", inputs=digits, labels=np.zeros(6, dtype=np.int64), classes=loaded.classes,
                        splits={}, source="t", warnings=[])
    batch, _ = next(iter(Pipeline(data, {"test": np.arange(6)}, loaded.preprocessing, augment="none").loader("test")))
    with torch.no_grad():
        raw = loaded.backbone(batch).float()
    np.testing.assert_allclose(probs, torch.softmax(raw / loaded.temperature, 1).numpy(), atol=1e-5)
    assert not np.allclose(probs, torch.softmax(raw, 1).numpy(), atol=1e-3)  # T was applied
    assert (probs.argmax(1) == raw.argmax(1).numpy()).all()  # T > 0 keeps every label
    assert (torch.softmax(logits / loaded.temperature, 1).argmax(1) == logits.argmax(1)).all()


def test_a_run_without_calibration_json_loads_with_t_1_and_a_damaged_one_is_one_line(run, tmp_path):
    from ajuste.training.run_eval import load_run

    old = tmp_path / "old"
    shutil.copytree(run, old)
    (old / "calibration.json").unlink()  # a run trained before calibration existed
    assert load_run(old).temperature == 1.0
    (old / "calibration.json").write_text('{"temperature": -2}')
    with pytest.raises(AjusteError, match="no positive temperature"):
        load_run(old)


def test_evaluate_reports_ece_before_and_after(run, capsys):
    assert main(["evaluate", str(run), "--json"]) == 0
    m = json.loads(capsys.readouterr().out)
    c = m["calibration"]
    assert c["ece_bins"] == 15 and c["temperature"] == json.loads((run / "calibration.json").read_text())["temperature"]
    assert 0 <= c["ece_after"] <= 1 and 0 <= c["ece_before"] <= 1 and c["ece_after"] != c["ece_before"]
    assert main(["evaluate", str(run)]) == 0
    text = capsys.readouterr().out
    assert "after temperature scaling (T = " in text and "before (top-label, 15 equal-width bins)" in text


@pytest.mark.parametrize("fmt", ["ajuste", "onnx", "torchscript", "hf"])
def test_every_export_gives_predicts_calibrated_probabilities(run, tmp_path, fmt):
    from ajuste.export import export_run
    from ajuste.training.run_eval import load_run

    loaded = load_run(run)
    x = _inputs()
    with torch.no_grad():
        expected = torch.softmax(loaded.backbone(x).float() / loaded.temperature, 1)
    out = tmp_path / fmt
    res = export_run(run_dir=run, out=out, format=fmt)
    record = json.loads((out / ("summary.json" if fmt == "ajuste" else "export.json")).read_text())
    assert (record["export"] if fmt == "ajuste" else record)["temperature"] == loaded.temperature
    with torch.no_grad():
        if fmt == "ajuste":
            again = load_run(out)
            logits = again.backbone(x).float() / again.temperature
        elif fmt == "onnx":
            import onnxruntime as ort

            sess = ort.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
            logits = torch.from_numpy(sess.run(["logits"], {"pixel_values": x.numpy()})[0])
        elif fmt == "torchscript":
            logits = torch.jit.load(str(out / "model.pt"))(x)
        else:  # timm's format holds the plain network; its config.json names the temperature
            import timm

            t = json.loads((out / "config.json").read_text())["ajuste_calibration"]["temperature"]
            logits = timm.create_model(f"local-dir:{out}", pretrained=True).eval()(x) / t
    torch.testing.assert_close(torch.softmax(logits.float(), 1), expected, atol=1e-5, rtol=1e-4)
    assert res.max_abs_diff < 1e-4


@pytest.mark.parametrize("fmt", ["ajuste", "torchscript", "hf"])
def test_an_export_that_drops_the_temperature_fails_its_check(run, tmp_path, fmt, monkeypatch):
    from ajuste.export import ajuste_dir, common, export_run, hf, torchscript

    if fmt == "ajuste":
        monkeypatch.setattr(ajuste_dir, "_COPY", [n for n in ajuste_dir._COPY if n != "calibration.json"])
    elif fmt == "torchscript":
        monkeypatch.setattr(torchscript, "Positional", lambda bb, names, t=1.0, task=None: common.Positional(bb, names))
    else:
        real = hf._write_timm

        def without_t(bb, run_, stage):
            real(bb, run_, stage)
            cfg = json.loads((stage / "config.json").read_text())
            cfg.pop("ajuste_calibration")
            (stage / "config.json").write_text(json.dumps(cfg))
        monkeypatch.setattr(hf, "_write_timm", without_t)
    with pytest.raises(AjusteError, match="export check failed"):
        export_run(run_dir=run, out=tmp_path / fmt, format=fmt)


# --- turning it off, bad input, the classical arm, the report ---------------------------------------------

def test_calibrate_false_stores_no_temperature_but_still_measures_ece(digits_small_shared, tmp_path):
    from ajuste.training.run import train_run
    from ajuste.training.run_eval import load_run

    cfg = RunConfig().override({**TINY, "train.epochs": 1, "train.calibrate": False})
    res = train_run(cfg=cfg, data=digits_small_shared, out=tmp_path / "r", progress=False)
    assert not (tmp_path / "r" / "calibration.json").exists() and "calibration" not in res.summary
    c = res.summary["test"]["calibration"]
    assert c["temperature"] == 1.0 and c["ece_after"] == c["ece_before"]
    assert load_run(tmp_path / "r").temperature == 1.0


def test_train_calibrate_maybe_is_one_line(capsys):
    assert main(["train", "digits", "--set", "train.calibrate=maybe"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "train.calibrate" in line and "maybe" in line


def test_the_classical_arm_is_calibrated_too(digits_small_shared, tmp_path):
    from ajuste.training.run import train_run
    from ajuste.training.run_eval import load_run

    cfg = RunConfig().override({"strategy.name": "classical"})
    res = train_run(cfg=cfg, data=digits_small_shared, out=tmp_path / "r", progress=False)
    rec = json.loads((tmp_path / "r" / "calibration.json").read_text())
    assert rec["temperature"] > 0 and rec["val"]["nll_after"] <= rec["val"]["nll_before"]
    assert load_run(tmp_path / "r").temperature == rec["temperature"] == res.summary["calibration"]["temperature"]


def test_the_report_has_an_ece_column_and_the_best_models_reliability_diagram(tmp_path):
    from ajuste.report import reliability

    rec = {"calibration": {"test_ece_after": 0.0123, "test_ece_before": 0.3456}}
    assert reliability.cell_ece(rec) == "0.012 (0.346)" and reliability.cell_ece({}) == "—"
    z, y = _calibrated_logits(500)
    fig = reliability.reliability_diagram(calibration.scores(z * 3, y, 3.0))
    labels = [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    assert any(s.startswith("before (T = 1): ECE") for s in labels) and any("after (T = 3)" in s for s in labels)

    from ajuste.report.html import build_report
    from ajuste.study.runner import run_study
    from ajuste.study.spec import StudySpec

    spec = StudySpec(source="digits", model="timm/test_efficientnet", strategies=["classical"], fractions=[0.2])
    run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "test ECE (before scaling)" in html and reliability.HEADING in html
    assert "reliability diagram" in html and (tmp_path / "reliability_best.png").stat().st_size > 5000
    cell = json.loads((tmp_path / "results.jsonl").read_text().splitlines()[0])
    assert reliability.cell_ece(cell) in html and cell["calibration"]["temperature"] > 0
