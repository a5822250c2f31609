"""The Python API end to end on digits: train, predict on arrays and PIL images, evaluate, export, load; a
small compare and a small tune; every public name documented."""

from __future__ import annotations

import inspect
import subprocess
import sys

import numpy as np
import pytest

import ajuste
from ajuste.errors import AjusteError

TINY = {"model.pretrained": False, "data.image_size": 32, "train.epochs": 2, "strategy.head_epochs": 1,
        "data.batch_size": 64, "train.min_steps": 0}


@pytest.fixture(scope="module")
def digits_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("api") / "run"
    return ajuste.train("digits", model="timm/test_efficientnet", strategy="two-stage", out=out,
                        overrides={**TINY, "data.fraction": 0.2}, progress=False)


def test_the_api_names_survive_importing_the_library():
    import ajuste.training.run  # noqa: F401 - a submodule import sets attributes on its parent packages

    assert callable(ajuste.train) and callable(ajuste.compare) and callable(ajuste.tune)


def test_import_is_light_and_every_public_name_is_documented():
    code = "import sys, ajuste; assert 'torch' not in sys.modules, 'import ajuste loaded torch'"
    subprocess.run([sys.executable, "-c", code], check=True)
    for name in ajuste.__all__:
        obj = getattr(ajuste, name)
        assert inspect.getdoc(obj), f"ajuste.{name} has no docstring"
        if inspect.isclass(obj):
            for member, value in vars(obj).items():
                if not member.startswith("_") and (callable(value) or isinstance(value, property)):
                    assert inspect.getdoc(value), f"ajuste.{name}.{member} has no docstring"


def test_train_gives_a_run_with_metrics_config_and_path(digits_run):
    run = digits_run
    assert run.path.is_dir() and run.config.strategy.name == "two-stage"
    assert run.config.data.image_size == 32  # the overrides reached the run
    assert set(run.metrics) >= {"accuracy", "macro_f1"} and run.metrics["accuracy"] == run.summary["test_accuracy"]
    assert "test accuracy" in run._repr_html_()


def test_predict_on_arrays_pil_images_and_lists(digits_run):
    from PIL import Image

    from ajuste.data.sources import load_data

    images = load_data("digits").inputs[:6]  # uint8 (6, 8, 8), as the run was trained on
    many = digits_run.predict(images)
    assert len(many) == 6 and all(p.label in digits_run.classes for p in many)
    one = digits_run.predict(images[0])
    assert one.label == many[0].label and one.probability == pytest.approx(many[0].probability, abs=1e-5)
    assert sum(one.probabilities.values()) == pytest.approx(1.0, abs=1e-4)
    as_floats = digits_run.predict(images[:2].astype(np.float32) / 255.0)  # floats in [0, 1] are scaled
    assert [p.label for p in as_floats] == [p.label for p in many[:2]]
    pil = digits_run.predict([Image.fromarray(images[0]), Image.fromarray(images[1])])
    assert len(pil) == 2
    with pytest.raises(AjusteError, match="255 / 16"):
        digits_run.predict(images[0].astype(np.float64) * 16 / 255)  # scikit-learn's 0..16 range: refused


def test_evaluate_export_and_load_round_trip(digits_run, tmp_path):
    ev = digits_run.evaluate()
    assert ev["accuracy"] == pytest.approx(digits_run.metrics["accuracy"])
    exported = digits_run.export("ajuste", tmp_path / "exp")
    again = ajuste.load(exported)
    assert again.summary["strategy"] == "two-stage"
    x = np.full((8, 8), 200, dtype=np.uint8)
    assert again.predict(x).probabilities == pytest.approx(digits_run.predict(x).probabilities, abs=1e-5)
    onnx_dir = tmp_path / "ts"
    digits_run.export("torchscript", onnx_dir)
    with pytest.raises(AjusteError, match="torchscript export"):
        ajuste.load(onnx_dir)
    with pytest.raises(AjusteError, match="not a finished run"):
        ajuste.load(tmp_path)


def test_compare_gives_a_study_with_recommendation_results_and_best_model(tmp_path):
    study = ajuste.compare("digits", model="timm/test_efficientnet", strategies=["classical", "linear-probe"],
                           fractions=[0.3], overrides=TINY, similarity=False, workers=1, out=tmp_path / "s",
                           progress=False)
    rec = study.recommendation
    assert rec["strategy"] in {"classical", "linear-probe"} and rec["model"] == "timm/test_efficientnet"
    assert rec["reasons"] and rec["text"].startswith("Use ")
    assert {r["strategy"] for r in study.results} == {"classical", "linear-probe"}
    assert study.report_path.is_file()
    assert isinstance(study.best_model, ajuste.Run) and study.best_model.metrics["accuracy"] > 0
    assert ajuste.load(study.path).path == study.path / "best_model"
    html = study._repr_html_()
    assert "data:image/png;base64," in html and "linear-probe" in html
    df = study.results.to_pandas() if _has_pandas() else None
    assert df is None or len(df) == 2
    with pytest.raises(AjusteError, match="list of backbone names"):
        ajuste.compare("digits", models="a,b", out=tmp_path / "t")


def test_tune_gives_a_search_with_its_optuna_study(tmp_path):
    search = ajuste.tune("digits", strategy="linear-probe", model="timm/test_efficientnet", trials=2,
                         sampler="random", overrides={**TINY, "data.fraction": 0.3}, out=tmp_path / "t",
                         progress=False)
    assert search.best_value is not None and "optim.lr" in search.best_params
    assert len(search.study.trials) == 2


def _has_pandas() -> bool:
    try:
        import pandas  # noqa: F401
    except ImportError:
        return False
    return True
