"""A study across backbones (``compare --models a,b``): one study per backbone, the floor run once, the page that
compares them (backbone × strategy table, score against the measured cost of a prediction) and the winner's model
handed over. Two tiny random timm networks on a small colour-coded image folder keep it to seconds."""

from __future__ import annotations

import json

import pytest
from test_cli import TINY_IMAGE, one_error_line, run_cli, write_image_folder

from ajuste.cli.main import main

MODELS = ["timm/test_efficientnet", "timm/test_resnet"]
FAST_SETS = ["--set", "train.epochs=2", "--set", "strategy.head_epochs=2", "--set", "train.min_steps=0"]


@pytest.fixture(scope="module")
def study(tmp_path_factory):
    data = write_image_folder(tmp_path_factory.mktemp("bb") / "data", {"a": 16, "b": 16, "c": 16})
    out = tmp_path_factory.mktemp("bb") / "study"
    rc, stdout, err = run_cli(["compare", data, "--models", ",".join(MODELS), "--strategies", "classical,linear-probe",
                               "--fractions", "1", *TINY_IMAGE[2:], *FAST_SETS, "--no-similarity", "-j", "1",
                               "--out", out])
    assert rc == 0, err
    return out, stdout


def test_one_study_per_backbone_and_the_floor_once(study):
    out, _ = study
    arms = {}
    for d in ("timm-test_efficientnet", "timm-test_resnet"):
        arms[d] = {json.loads(x)["strategy"] for x in (out / d / "results.jsonl").read_text().splitlines()}
    assert arms == {"timm-test_efficientnet": {"classical", "linear-probe"}, "timm-test_resnet": {"linear-probe"}}


def test_the_page_names_backbone_and_strategy_with_the_cost_of_a_prediction(study):
    out, stdout = study
    bb = json.loads((out / "backbones.json").read_text())
    assert [r["model"] for r in bb["rows"]] == MODELS
    assert all(r["strategy"] == "linear-probe" and r["seconds_per_prediction"] > 0 for r in bb["rows"])
    win = max(bb["rows"], key=lambda r: (r["val_score"], -r["seconds_per_prediction"]))
    assert bb["advice"]["winner_model"] == win["model"]
    assert bb["advice"]["text"].startswith(f"Use {win['model']} with linear-probe")
    assert any("classical floor" in r for r in bb["advice"]["reasons"])
    assert "ms per prediction" in " ".join(bb["advice"]["reasons"])
    page = (out / "report.html").read_text()
    assert "Which backbone" in page and "timm-test_resnet/report.html" in page and "data:image/png" in page
    assert bb["advice"]["text"] in stdout
    # the winner's own best model is handed over
    handed = json.loads((out / "best_model" / "summary.json").read_text())
    assert handed["model"] == win["model"]


def test_the_python_api_takes_several_models(study, tmp_path):
    import ajuste

    out, _ = study
    res = ajuste.compare(_data_of(out), models=MODELS,
                         strategies=["linear-probe"], fractions=[1.0], out=tmp_path / "s", similarity=False,
                         workers=1, progress=False, overrides=TINY_IMAGE[3::2] + FAST_SETS[1::2])
    assert (tmp_path / "s" / "backbones.json").is_file() and res.path.parent == tmp_path / "s"


def _data_of(out):
    return json.loads((out / "timm-test_efficientnet" / "study.json").read_text())["source"]


def test_models_needs_two_different_backbones(capsys):
    assert main(["compare", "digits", "--models", "timm/test_resnet"]) != 0
    assert "two or more different backbones" in one_error_line(capsys.readouterr().err)


def test_topn_takes_the_n_best_of_the_ranking_and_gives_it_a_tenth_of_the_budget(study, tmp_path, monkeypatch):
    from ajuste.study import rank

    calls = []

    def fake_rank(spec, console, *, seconds=None):
        calls.append(seconds)
        return {"order": ["timm/test_resnet", "timm/test_efficientnet", "timm/test_convnext"], "rows": [],
                "examples": 0, "seconds": 0.0}

    monkeypatch.setattr(rank, "rank_for_study", fake_rank)
    out, _ = study
    rc, stdout, err = run_cli(["compare", _data_of(out), "--models", "top2", "--strategies", "linear-probe",
                               "--fractions", "1", *TINY_IMAGE[2:], *FAST_SETS, "--no-similarity", "-j", "1",
                               "--budget", "10m", "--out", tmp_path / "s"])
    assert rc == 0, err
    assert calls == [60.0]
    bb = json.loads((tmp_path / "s" / "backbones.json").read_text())
    assert bb["models"] == ["timm/test_resnet", "timm/test_efficientnet"]
    assert bb["ranking"]["order"] == ["timm/test_resnet", "timm/test_efficientnet"]
    assert any("transferability ranking" in r for r in bb["advice"]["reasons"])


def test_rank_refuses_a_regression_task_in_one_line(tmp_path, capsys):
    import csv

    with open(tmp_path / "r.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "score"])
        w.writerows([[f"t {i} {'good ' * (i % 5)}", i * 0.37] for i in range(60)])
    assert main(["rank", str(tmp_path / "r.csv")]) != 0
    assert "score class labels" in one_error_line(capsys.readouterr().err)


def test_a_folder_backbone_gets_a_study_named_after_the_folder_not_its_whole_path(tmp_path):
    from ajuste.report.backbones import backbone_dir

    a, b = tmp_path / "x" / "mpnet", tmp_path / "y" / "mpnet"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    da, db = backbone_dir(tmp_path, str(a)).name, backbone_dir(tmp_path, str(b)).name
    assert da.startswith("mpnet-") and db.startswith("mpnet-") and da != db  # one name, two folders: two studies
    assert backbone_dir(tmp_path, str(a)).name == da  # the same folder: the same study (a rerun resumes it)
    assert backbone_dir(tmp_path, "timm/resnet50").name == "timm-resnet50"
    assert backbone_dir(tmp_path, "hf:bert-base-uncased").name == "hf-bert-base-uncased"
