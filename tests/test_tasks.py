"""Multi-label and regression (``data.task``): what `auto` detects and how to override it, the loaders (``|`` cells,
0/1 columns, an image folder with labels.csv), the task's loss, outputs and metrics, and train / evaluate /
predict / export / compare of each task, with the clear one-line refusals of bad input.

The data is made here: texts whose words carry their labels ("redish" → red) or their number (each "good" adds
0.7), and coloured images whose colour says the labels, so each task is learnable in a few steps."""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import TINY_IMAGE, one_error_line, run_cli

from ajuste.cli.main import main
from ajuste.data.sources import load_data
from ajuste.data.splits import make_splits, take_fraction
from ajuste.errors import ConfigError
from ajuste.metrics import resolve_monitor, score
from ajuste.tasks import Task, constant_labels, for_data, multilabel_metrics, regression_metrics, tune_thresholds

WORDS = "alpha beta gamma delta eps zeta eta theta iota kappa".split()
COLOURS = ("red", "green", "blue")


def _write(path: Path, header: list[str], rows: list[list]) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(header)
        w.writerows(rows)
    return path


def multilabel_rows(n: int, seed: int = 0) -> list[tuple[str, list[str]]]:
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        labs = [c for c in COLOURS if rng.random() < 0.4] or [rng.choice(COLOURS)]
        words = [rng.choice(WORDS) for _ in range(5)] + [c + "ish" for c in labs]
        rng.shuffle(words)
        out.append((" ".join(words), labs))
    return out


@pytest.fixture(scope="module")
def ml_csv(tmp_path_factory) -> Path:
    p = tmp_path_factory.mktemp("ml") / "tags.csv"
    return _write(p, ["text", "labels"], [[t, "|".join(labs)] for t, labs in multilabel_rows(160)])


@pytest.fixture(scope="module")
def reg_csv(tmp_path_factory) -> Path:
    rng = random.Random(1)
    rows = []
    for _ in range(160):
        k = rng.randint(0, 5)
        words = ["good"] * k + [rng.choice(WORDS) for _ in range(5)]
        rng.shuffle(words)
        rows.append([" ".join(words), round(0.7 * k + rng.gauss(0, 0.1) + 10.0, 3)])
    return _write(tmp_path_factory.mktemp("reg") / "scores.csv", ["text", "score"], rows)


# --- detection and loading ---------------------------------------------------------------------------------


def test_auto_detects_multilabel_from_bars_and_says_so(ml_csv):
    notes: list[str] = []
    d = load_data(ml_csv, notes=notes)
    assert d.task == "multilabel" and d.classes == sorted(COLOURS)
    assert d.targets.shape == (160, 3) and set(np.unique(d.targets)) <= {0.0, 1.0}
    assert any("multilabel" in n for n in notes)
    first_labels = ml_csv.read_text().splitlines()[1].rsplit(",", 1)[1].split("|")
    assert [d.classes[k] for k in np.flatnonzero(d.targets[0])] == sorted(first_labels)


def test_task_classification_overrides_detection(ml_csv):
    d = load_data(ml_csv, task="classification")
    assert d.task == "classification" and d.targets is None
    assert any("|" in c for c in d.classes)  # each combination one class


def test_zero_one_columns_are_one_multilabel_target(tmp_path):
    rows = [[t] + [int(c in labs) for c in COLOURS] for t, labs in multilabel_rows(60)]
    p = _write(tmp_path / "oh.csv", ["text", *COLOURS], rows)
    d = load_data(p, label_col="red,green,blue")
    assert d.task == "multilabel" and d.classes == sorted(COLOURS)
    idx = {c: d.classes.index(c) for c in COLOURS}
    assert [d.targets[i, idx[c]] for i, c in enumerate(COLOURS)] == [float(rows[i][1 + i]) for i in range(3)]


def test_float_column_is_regression_with_strata_for_splits(reg_csv):
    d = load_data(reg_csv)
    assert d.task == "regression" and d.classes == ["score"] and d.targets.dtype == np.float32
    splits = make_splits(d, seed=0)
    assert sum(len(v) for v in splits.values()) == 160
    # every quantile stratum reaches training, and a fraction keeps each
    assert set(d.labels[splits["train"]]) == set(d.labels)
    small = take_fraction(splits["train"], d.labels, 0.2, seed=0)
    assert set(d.labels[small]) == set(d.labels)


def test_five_integer_ratings_stay_classes(tmp_path):
    p = _write(tmp_path / "stars.csv", ["text", "label"], [[f"{WORDS[i % 10]} {i}", 1 + i % 5] for i in range(50)])
    assert load_data(p).task == "classification"


def test_image_folder_with_labels_csv(tmp_path):
    from PIL import Image

    rows = []
    for i in range(24):
        labs = [c for j, c in enumerate(COLOURS) if (i >> j) & 1] or ["red"]
        rgb = [200 if c in labs else 30 for c in COLOURS]
        Image.fromarray(np.full((24, 24, 3), rgb, dtype=np.uint8)).save(tmp_path / f"{i}.png")
        rows.append([f"{i}.png", "|".join(labs)])
    _write(tmp_path / "labels.csv", ["file", "labels"], rows)
    d = load_data(tmp_path)
    assert d.modality == "image" and d.task == "multilabel" and len(d) == 24


# --- bad input -----------------------------------------------------------------------------------------------


def test_labels_csv_naming_missing_files_is_one_line(tmp_path, capsys):
    from PIL import Image

    Image.fromarray(np.zeros((8, 8, 3), dtype=np.uint8)).save(tmp_path / "a.png")
    _write(tmp_path / "labels.csv", ["file", "labels"], [["a.png", "x"], ["gone.png", "y"]])
    assert main(["train", str(tmp_path)]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "gone.png" in line and "not in" in line


def test_non_numeric_regression_target_is_one_line(tmp_path, capsys):
    p = _write(tmp_path / "r.csv", ["text", "score"], [[f"t {i}", i * 0.5] for i in range(30)] + [["t x", "high"]])
    assert main(["train", str(p), "--task", "regression", "--label-col", "score"]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "not numbers" in line and "'high'" in line


def test_a_label_in_every_row_is_one_line(tmp_path, capsys):
    p = _write(tmp_path / "m.csv", ["text", "labels"], [[f"t {i}", "all|" + COLOURS[i % 3]] for i in range(30)])
    assert main(["train", str(p)]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "label 'all' is in every row" in line


def test_a_missing_label_column_is_one_line(ml_csv, capsys):
    assert main(["train", str(ml_csv), "--label-col", "red,purple"]) != 0
    assert "column 'red' not found" in one_error_line(capsys.readouterr().err)


def test_a_metric_of_another_task_is_refused():
    with pytest.raises(ConfigError, match="does not apply to a regression task"):
        resolve_monitor("accuracy", np.zeros(4, dtype=np.int64), 1, "regression")
    assert resolve_monitor("auto", np.zeros(4, dtype=np.int64), 3, "multilabel")[0] == "map"
    assert resolve_monitor("auto", np.zeros(4, dtype=np.int64), 1, "regression")[0] == "rmse"


def test_class_balance_is_refused_off_classification(reg_csv, capsys):
    assert main(["train", str(reg_csv), "--set", "train.class_balance=weights"]) != 0
    assert "class_balance" in one_error_line(capsys.readouterr().err)


# --- the task's loss, outputs and metrics ------------------------------------------------------------------------


def test_regression_is_learnt_standardised_and_answered_in_units(reg_csv):
    d = load_data(reg_csv)
    task = for_data(d, np.arange(100))
    y = d.targets[:100].astype(np.float64)
    assert task.mean == pytest.approx(y.mean(), rel=1e-6) and task.std == pytest.approx(y.std(), rel=1e-6)
    z = torch.as_tensor((y - task.mean) / task.std)
    assert task.loss(z, torch.as_tensor(y)).item() == pytest.approx(0.0, abs=1e-9)  # the standardised target
    np.testing.assert_allclose(task.outputs(z), y, rtol=1e-6)  # back in the target's units
    assert Task.from_json(json.loads(json.dumps(task.to_json()))) == task


def test_huber_loss_is_taken_on_the_standardised_target(reg_csv, tmp_path):
    task = Task("regression", mean=10.0, std=2.0, loss_name="huber")
    out, y = torch.tensor([0.0, 3.0]), torch.tensor([10.0, 10.0])  # z targets 0, 0: errors 0 and 3
    assert task.loss(out, y).item() == pytest.approx((0.0 + (3.0 - 0.5)) / 2)
    rc, stdout, err = run_cli(["train", reg_csv, "--strategy", "classical", "--set", "train.regression_loss=huber",
                               "--out", tmp_path / "h"])
    assert rc == 0, err
    fits = [ln for ln in stdout.splitlines() if ln.startswith("C=")]  # one line per regularisation strength
    assert len(fits) >= 3 and all("val_rmse" in ln and "val_acc" not in ln and "nan" not in ln for ln in fits), stdout
    assert json.loads((tmp_path / "h" / "task.json").read_text())["loss_name"] == "huber"


def test_multilabel_loss_is_binary_cross_entropy_per_label():
    logits, y = torch.tensor([[2.0, -1.0], [0.0, 3.0]]), torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    expected = torch.nn.functional.binary_cross_entropy_with_logits(logits, y)
    assert Task("multilabel").loss(logits, y).item() == pytest.approx(expected.item())
    assert Task("multilabel").accuracy(logits, y) == 1.0


def test_a_label_constant_in_the_training_split_is_named(ml_csv):
    d = load_data(ml_csv)
    red = d.targets[:, d.classes.index("red")]
    without_red = np.flatnonzero(red == 0)[:30]
    notes = constant_labels(d, without_red)
    assert len(notes) == 1 and notes[0].startswith("label 'red' is on none of the 30 training examples")
    assert constant_labels(d, np.arange(len(d))) == []
    assert constant_labels(load_data(ml_csv, task="classification"), without_red) == []


def test_thresholds_are_tuned_per_label_on_f1():
    rng = np.random.default_rng(0)
    y = (rng.random((400, 2)) < 0.3).astype(float)
    probs = np.column_stack([0.2 + 0.3 * y[:, 0] + rng.normal(0, 0.02, 400),   # positives near 0.5, negatives 0.2
                             0.6 + 0.3 * y[:, 1] + rng.normal(0, 0.02, 400)])  # negatives over 0.5
    t = tune_thresholds(probs, y)
    assert 0.2 < t[0] < 0.5 and 0.6 < t[1] < 0.9
    tuned = multilabel_metrics(y, probs, ["a", "b"], t)
    assert tuned["macro_f1"] > multilabel_metrics(y, probs, ["a", "b"])["macro_f1"]
    assert tuned["map"] == pytest.approx(1.0)


def test_regression_metrics_and_score_agree():
    y, p = np.array([1.0, 2.0, 3.0, 4.0]), np.array([1.5, 2.0, 2.5, 4.0])
    m = regression_metrics(y, p)
    assert m["rmse"] == pytest.approx(np.sqrt(0.125)) and m["mae"] == pytest.approx(0.25)
    assert m["r2"] == pytest.approx(1 - 0.5 / 5.0)
    assert score("rmse", y, p) == m["rmse"] and score("r2", y, p) == m["r2"]


# --- end to end -----------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ml_run(ml_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "ml"
    rc, _, err = run_cli(["train", ml_csv, "--strategy", "classical", "--out", out, "-q"])
    assert rc == 0, err
    return out


def test_multilabel_run_tunes_thresholds_and_scores_map(ml_run):
    s = json.loads((ml_run / "summary.json").read_text())
    assert s["task"] == "multilabel" and s["metric"] == "map"
    assert s["test"]["map"] > 0.9 and s["test_score"] == s["test"]["map"]
    task = json.loads((ml_run / "task.json").read_text())
    assert task["kind"] == "multilabel" and len(task["thresholds"]) == 3


def test_multilabel_predict_gives_the_label_set(ml_run, capsys):
    assert main(["predict", str(ml_run), "alpha redish blueish beta", "--format", "jsonl"]) == 0
    row = json.loads(capsys.readouterr().out.splitlines()[0])
    assert set(row["labels"]) == {"red", "blue"}
    assert set(row["probabilities"]) == set(COLOURS) and row["probabilities"]["green"] < 0.5


def test_multilabel_evaluate_shows_map_first(ml_run, capsys):
    assert main(["evaluate", str(ml_run)]) == 0
    out = capsys.readouterr().out
    assert out.splitlines()[1].startswith("mAP") and "per label" in out


def test_multilabel_python_api_prediction(ml_run):
    import ajuste

    p = ajuste.load(ml_run).predict("gamma greenish delta")
    assert p.labels == ["green"] and p.label == "green"


@pytest.fixture(scope="module")
def reg_run(reg_csv, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reg"
    rc, _, err = run_cli(["train", reg_csv, "--strategy", "classical", "--out", out, "-q"])
    assert rc == 0, err
    return out


def test_regression_run_predicts_in_the_targets_units(reg_run, capsys):
    s = json.loads((reg_run / "summary.json").read_text())
    assert s["task"] == "regression" and s["metric"] == "rmse" and s["test"]["r2"] > 0.8
    assert main(["predict", str(reg_run), "good alpha good beta gamma good delta good eps",
                 "zeta eta theta iota kappa", "--format", "jsonl"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert rows[0]["value"] == pytest.approx(12.8, abs=0.7) and rows[1]["value"] == pytest.approx(10.0, abs=0.7)


def test_regression_export_answers_in_the_targets_units(reg_run, tmp_path, capsys):
    rc, _, err = run_cli(["export", reg_run, "--format", "ajuste", "--out", tmp_path / "ex"])
    assert rc == 0, err
    assert json.loads((tmp_path / "ex" / "task.json").read_text())["kind"] == "regression"
    text = "good alpha good beta gamma delta eps"
    answers = []
    for where in (reg_run, tmp_path / "ex"):
        assert main(["predict", str(where), text, "--format", "jsonl"]) == 0
        answers.append(json.loads(capsys.readouterr().out)["value"])
    assert answers[0] == pytest.approx(answers[1]) and answers[0] == pytest.approx(11.4, abs=0.7)


def test_compare_ranks_regression_on_rmse(reg_csv, tmp_path):
    rc, out, err = run_cli(["compare", reg_csv, "--strategies", "classical", "--fractions", "0.5,1", "--seeds", "1",
                            "--out", tmp_path / "study", "--no-similarity", "-j", "1", "-q"])
    assert rc == 0, err
    recs = [json.loads(x) for x in (tmp_path / "study" / "results.jsonl").read_text().splitlines()]
    assert {r["metric"] for r in recs} == {"rmse"}
    assert all(r["test_score"] < 0 for r in recs)  # recorded negated: the study ranks the highest
    advice = json.loads((tmp_path / "study" / "advice.json").read_text())
    best = max(r["test_score"] for r in recs if r["fraction"] == 1)
    assert advice["text"].startswith(f"Use classical: test RMSE {-best:.3f} with ")  # shown positive, as it is
    page = (tmp_path / "study" / "report.html").read_text()
    assert "test RMSE (lower is better)" in page and f"{-best:.3f}" in page and f"{best:.3f}" not in page
    assert (tmp_path / "study" / "best_model" / "task.json").is_file()


@pytest.mark.parametrize("monitor", ["loss", "val_loss"])
def test_a_regression_study_kept_by_loss_ranks_on_the_validation_rmse(monitor, reg_csv, tmp_path):
    """Epochs kept by their loss (the MSE of the standardised target): the study still ranks and labels RMSE, so
    it needs the kept model's validation RMSE, in the target's units, not the loss under RMSE's name."""
    rc, _, err = run_cli(["compare", reg_csv, "--strategies", "classical", "--fractions", "1", "--seeds", "1",
                          "--out", tmp_path / "study", "--no-similarity", "-j", "1", "-q",
                          "--set", f"train.monitor={monitor}"])
    assert rc == 0, err
    (rec,) = [json.loads(x) for x in (tmp_path / "study" / "results.jsonl").read_text().splitlines()]
    s = json.loads((tmp_path / "study" / rec["run_dir"] / "summary.json").read_text())
    assert rec["metric"] == "rmse" and s["val_metrics"]["rmse"] > 0
    assert rec["val_score"] == pytest.approx(-s["val_metrics"]["rmse"])
    assert rec["test_score"] == pytest.approx(-s["test"]["rmse"]) and s["test_score"] == s["test"]["rmse"]


@pytest.mark.parametrize("strategy", ["linear-probe", "full"])
def test_deep_arms_train_each_task_through_the_loop(strategy, ml_csv, reg_csv, tiny_bert_dir, tmp_path):
    """A tiny random BERT: the loop's loss, validation score and kept epoch follow the task (regression keeps the
    epoch with the lowest RMSE)."""
    for name, data in (("ml", ml_csv), ("reg", reg_csv)):
        out = tmp_path / name
        rc, stdout, err = run_cli(["train", data, "--model", str(tiny_bert_dir), "--strategy", strategy, "--epochs",
                                   "3", "--set", "strategy.head_epochs=3", "--set", "train.min_steps=0", "--out", out])
        assert rc == 0, err
        epoch_lines = [ln for ln in stdout.splitlines() if "val_loss" in ln and "train_loss" in ln]
        assert len(epoch_lines) == 3, stdout  # each line says the task's metric; accuracy only where defined
        metric = "val_rmse" if name == "reg" else "val_map"
        assert all(metric in ln and ("val_acc" in ln) == (name == "ml") and "nan" not in ln for ln in epoch_lines)
        s = json.loads((out / "summary.json").read_text())
        hist = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
        scores = [h["val_score"] for h in hist]
        best = min(scores) if name == "reg" else max(scores)
        assert s["val_score"] == pytest.approx(best)
        assert np.isfinite(s["test_score"])


def test_images_with_labels_csv_train_and_predict_each_task(tmp_path, capsys):
    """An image folder with labels.csv: multi-label (which colour channels are lit) and regression (brightness),
    trained by the classical arm (colour histograms see both) and answered by predict."""
    from PIL import Image

    rng = np.random.default_rng(0)
    ml_rows, reg_rows = [], []
    for i in range(60):
        on = [c for j, c in enumerate(COLOURS) if (i >> j) & 1] or ["red"]
        level = 40 + 3 * (i % 60)
        rgb = np.array([level if c in on else 15 for c in COLOURS])
        img = (rgb + rng.integers(-8, 8, (32, 32, 3))).clip(0, 255).astype(np.uint8)
        Image.fromarray(img).save(tmp_path / f"{i}.png")
        ml_rows.append([f"{i}.png", "|".join(on)])
        reg_rows.append([f"{i}.png", level / 10 + 0.01 * (i % 7)])
    for task, rows, header in (("multilabel", ml_rows, ["file", "labels"]), ("regression", reg_rows, ["file", "value"])):
        folder = tmp_path / task
        folder.mkdir()
        for name, _ in rows:
            (folder / name).write_bytes((tmp_path / name).read_bytes())
        _write(folder / "labels.csv", header, rows)
        out = tmp_path / f"run-{task}"
        rc, _, err = run_cli(["train", folder, "--strategy", "classical", "--out", out, "-q"])
        assert rc == 0, err
        s = json.loads((out / "summary.json").read_text())
        assert s["task"] == task and s["modality"] == "image"
        assert main(["predict", str(out), str(folder / "3.png"), "--format", "jsonl"]) == 0
        row = json.loads(capsys.readouterr().out)
        if task == "multilabel":
            assert s["test"]["map"] > 0.8 and "labels" in row
        else:
            assert s["test"]["r2"] > 0.5 and row["value"] == pytest.approx(4.9, abs=1.5)


def test_tune_minimises_rmse_on_regression_and_refuses_accuracy(reg_csv, tiny_bert_dir, tmp_path, capsys):
    base = ["tune", str(reg_csv), "--model", str(tiny_bert_dir), "--strategy", "linear-probe", "--trials", "2",
            "--set", "train.epochs=2", "--set", "train.min_steps=0"]
    assert main([*base, "--out", str(tmp_path / "t0")]) != 0
    assert "--metric val_accuracy does not apply to a regression task" in one_error_line(capsys.readouterr().err)
    assert main([*base, "--metric", "rmse", "--out", str(tmp_path / "t1")]) == 0
    best = json.loads((tmp_path / "t1" / "best.json").read_text())
    assert best["metric"] == "rmse" and best["direction"] == "minimize"
    trials = (tmp_path / "t1" / "trials.csv").read_text().splitlines()
    assert len(trials) == 3
    assert "optim.lr" in trials[0] and "label_smoothing" not in trials[0]  # no classes to smooth


def test_advise_on_regression_says_the_task_and_skips_what_scores_classes(reg_csv, capsys):
    assert main(["advise", str(reg_csv)]) == 0
    out = capsys.readouterr().out
    assert "a numeric target (score)" in out and "a regression task" in out and "ajuste rank" not in out


@pytest.mark.parametrize("task", ["regression", "multilabel"])
def test_hf_export_of_a_text_task_loads_with_transformers_and_answers_as_predict(task, reg_csv, ml_csv, tiny_bert_dir,
                                                                                  tmp_path, capsys):
    """--format hf: Hugging Face's problem_type; a regression head answers in the target's units (the scale is in
    its weights), a multi-label one gives logits with the thresholds in config.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    data, run, ex = (reg_csv if task == "regression" else ml_csv), tmp_path / "run", tmp_path / "hf"
    rc, _, err = run_cli(["train", data, "--model", str(tiny_bert_dir), "--strategy", "linear-probe", "--epochs", "2",
                          "--set", "strategy.head_epochs=2", "--set", "train.min_steps=0", "--out", run, "-q"])
    assert rc == 0, err
    rc, _, err = run_cli(["export", run, "--format", "hf", "--out", ex])
    assert rc == 0, err
    cfg = json.loads((ex / "config.json").read_text())
    assert cfg["problem_type"] == ("regression" if task == "regression" else "multi_label_classification")
    model = AutoModelForSequenceClassification.from_pretrained(ex, trust_remote_code=True).eval()
    tok = AutoTokenizer.from_pretrained(ex)
    text = "good alpha good beta gamma delta eps"
    with torch.no_grad():
        out = model(**tok([text], return_tensors="pt")).logits[0]
    rc, stdout, err = run_cli(["predict", run, text, "--format", "jsonl"])
    assert rc == 0, err
    row = json.loads(stdout)
    if task == "regression":
        assert out.shape == (1,) and float(out[0]) == pytest.approx(row["value"], rel=1e-3)  # export's own rtol
    else:
        thresholds = cfg["ajuste_task"]["thresholds"]
        probs = torch.sigmoid(out).tolist()
        assert [c for c, p, t in zip(cfg["id2label"].values(), probs, thresholds) if p >= t] == row["labels"]
        assert model(**tok([text], return_tensors="pt"), labels=torch.ones(1, len(probs))).loss.item() > 0


def test_hf_export_of_an_image_regression_is_a_timm_checkpoint_in_the_targets_units(tmp_path, capsys):
    import timm
    from PIL import Image

    rng = np.random.default_rng(0)
    rows = []
    for i in range(40):
        level = 40 + 5 * i
        Image.fromarray((level + rng.integers(-8, 8, (32, 32, 3))).clip(0, 255).astype(np.uint8)).save(
            tmp_path / f"{i}.png")
        rows.append([f"{i}.png", level / 10])
    _write(tmp_path / "labels.csv", ["file", "value"], rows)
    run, ex = tmp_path / "run", tmp_path / "hf"
    rc, _, err = run_cli(["train", tmp_path, *TINY_IMAGE, "--strategy", "linear-probe", "--epochs", "2",
                          "--set", "strategy.head_epochs=2", "--set", "train.min_steps=0", "--out", run, "-q"])
    assert rc == 0, err
    rc, _, err = run_cli(["export", run, "--format", "hf", "--out", ex])
    assert rc == 0, err
    cfg = json.loads((ex / "config.json").read_text())
    assert cfg["problem_type"] == "regression" and cfg["ajuste_task"]["kind"] == "regression"
    model = timm.create_model(f"local-dir:{ex}", pretrained=True).eval()
    assert main(["predict", str(run), str(tmp_path / "7.png"), "--format", "jsonl"]) == 0
    value = json.loads(capsys.readouterr().out)["value"]
    # the export check compared the folder's outputs with the run's on probe images: here, one the user would send
    data_cfg = timm.data.resolve_data_config({}, model=model)
    x = timm.data.create_transform(**data_cfg)(Image.open(tmp_path / "7.png").convert("RGB")).unsqueeze(0)
    with torch.no_grad():
        assert float(model(x)[0, 0]) == pytest.approx(value, abs=1e-3)
