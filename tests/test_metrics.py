"""The metric that matters (issue 31): train.monitor's metrics, auto's choice of macro-F1 on imbalanced labels,
the kept epoch, the study's ranking and a search's objective on it; train.class_balance's loss weights and
balanced sampler."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from rich.console import Console
from sklearn.metrics import f1_score, roc_auc_score
from test_cli import TINY_IMAGE, one_error_line, run_cli, write_image_folder

from ajuste.config import RunConfig
from ajuste.data.batches import balanced_draw
from ajuste.errors import ConfigError
from ajuste.io import read_jsonl
from ajuste.metrics import imbalance_ratio, resolve_monitor, score
from ajuste.training.checkpoint import _improved, _State
from ajuste.training.steps import class_weights

IMBALANCED = {"a": 60, "b": 12, "c": 12}  # largest class 5x the smallest
FAST = ["model.pretrained=false", "data.image_size=32", "data.batch_size=16", "train.min_steps=0", "train.epochs=3",
        "train.patience=3"]


# --------------------------------------------------------------------------------------------- the metrics


def test_auto_picks_macro_f1_when_the_largest_class_is_over_three_times_the_smallest_and_says_so():
    skewed = np.array([0] * 40 + [1] * 10 + [2] * 12)
    metric, why = resolve_monitor("auto", skewed, 3)
    assert metric == "macro_f1" and "4.0× the smallest" in why and "train.monitor=accuracy" in why
    assert resolve_monitor("auto", np.array([0] * 30 + [1] * 10), 2) == ("accuracy", "")  # 3x: not over
    assert resolve_monitor("auto", np.array([0, 0, 1, 1]), 3)[0] == "macro_f1"  # a class with no example
    assert resolve_monitor("balanced_accuracy", skewed, 3) == ("balanced_accuracy", "")
    assert resolve_monitor("val_accuracy", skewed, 3) == ("accuracy", "")  # the old names still work
    assert imbalance_ratio(skewed, 3) == pytest.approx(4.0)


def test_the_scores_agree_with_scikit_learn_and_see_through_a_majority_classifier():
    rng = np.random.default_rng(0)
    y = (rng.random(200) < 0.1).astype(int)  # 90/10
    always_majority = np.tile([0.9, 0.1], (200, 1))
    assert score("accuracy", y, always_majority) == pytest.approx(1 - y.mean())
    assert score("macro_f1", y, always_majority) < 0.5  # the majority answer is useless, and F1 says so
    assert score("balanced_accuracy", y, always_majority) == pytest.approx(0.5)
    probs = rng.dirichlet([1, 1], 200)
    assert score("auroc", y, probs) == pytest.approx(roc_auc_score(y, probs[:, 1]))
    y3 = rng.integers(0, 3, 300)
    p3 = rng.dirichlet([1, 1, 1], 300)
    assert score("macro_f1", y3, p3) == pytest.approx(f1_score(y3, p3.argmax(1), average="macro"))
    expected = np.mean([roc_auc_score(y3 == k, p3[:, k]) for k in range(3)])
    assert score("auroc", y3, p3) == pytest.approx(expected)
    assert score("loss", y3, p3, loss=0.7) == 0.7


def test_the_kept_epoch_is_the_best_by_the_monitored_score_not_by_accuracy():
    state = _State(best_val_loss=0.5, best_val_accuracy=0.9, best_val_score=0.40, best_epoch=0, best_phase=0)
    # less accurate but a better macro-F1: the new best under macro_f1 (a score that ranks the minority classes)
    assert _improved("macro_f1", 0.6, 0.55, state)
    assert not _improved("macro_f1", 0.4, 0.39, state)
    assert _improved("macro_f1", 0.4, 0.40, state)  # a tie on the score: the lower loss
    assert _improved("loss", 0.4, 0.10, state) and not _improved("loss", 0.6, 0.99, state)


@pytest.mark.parametrize("key,bad", [("train.monitor", "f1"), ("train.class_balance", "oversample")])
def test_an_unknown_metric_or_balance_is_one_line_naming_the_choices(key, bad):
    with pytest.raises(ConfigError, match=rf"{key}='{bad}' is not one of") as exc:
        RunConfig().override([f"{key}={bad}"])
    assert "\n" not in str(exc.value)


# --------------------------------------------------------------------------------------------- imbalance


def test_class_weights_are_inverse_frequencies_that_average_one_over_the_examples():
    labels = np.array([0] * 80 + [1] * 20)
    w = class_weights(labels, 3)
    assert w.tolist() == pytest.approx([100 / (2 * 80), 100 / (2 * 20), 0.0])
    assert float(w[torch.as_tensor(labels)].mean()) == pytest.approx(1.0)


def test_the_balanced_sampler_draws_each_class_about_equally_and_keeps_the_epoch_length():
    labels = np.array([0] * 180 + [1] * 20)
    drawn = balanced_draw(list(range(200)), labels, torch.Generator().manual_seed(0))
    assert len(drawn) == 200
    share = np.mean([labels[i] == 1 for i in drawn.indices])
    assert 0.4 < share < 0.6  # 10% of the rows, about half of the draws


# --------------------------------------------------------------------------------------------- end to end


@pytest.fixture(scope="module")
def skewed_folder(tmp_path_factory):
    return write_image_folder(tmp_path_factory.mktemp("skewed") / "data", IMBALANCED)


def _train(folder, out, *extra):
    from ajuste.training.run import train_run

    cfg = RunConfig().override({"data.source": str(folder), "model.name": "timm/test_efficientnet",
                                "strategy.name": "full"}).override(FAST + list(extra))
    text = io.StringIO()
    res = train_run(cfg=cfg, out=out, progress=False, console=Console(file=text, width=200))
    return res.summary, text.getvalue()


def test_a_run_on_imbalanced_labels_is_judged_on_macro_f1_from_the_kept_epoch_to_evaluate(skewed_folder, tmp_path):
    s, printed = _train(skewed_folder, tmp_path / "r")
    assert s["metric"] == "macro_f1" and "imbalanced (largest class" in printed
    rows = read_jsonl(tmp_path / "r" / "metrics.jsonl")
    best = rows[s["best_epoch"] - 1]
    assert s["val_score"] == pytest.approx(best["val_score"]) == pytest.approx(max(r["val_score"] for r in rows))
    assert s["test_score"] == pytest.approx(s["test"]["macro_f1"])
    assert {"balanced_accuracy", "auroc"} <= set(s["test"])
    rc, out, _ = run_cli(["evaluate", tmp_path / "r"])
    lines = [ln for ln in out.splitlines() if ln.split(" ")[0] in ("accuracy", "macro-F1", "balanced", "AUROC")]
    assert rc == 0 and lines[0].startswith("macro-F1") and "the run's metric" in lines[0]
    rc, out, _ = run_cli(["evaluate", tmp_path / "r", "--json"])
    assert json.loads(out)["metric"] == "macro_f1"


@pytest.mark.parametrize("balance", ["weights", "sampler"])
def test_class_balance_changes_what_the_network_trains_on(skewed_folder, tmp_path, balance):
    plain, _ = _train(skewed_folder, tmp_path / "none", "train.epochs=1")
    balanced, _ = _train(skewed_folder, tmp_path / balance, "train.epochs=1", f"train.class_balance={balance}")
    first = [read_jsonl(tmp_path / d / "metrics.jsonl")[0]["train_loss"] for d in ("none", balance)]
    assert first[0] != pytest.approx(first[1], rel=1e-4)
    assert balanced["class_balance"] == balance and plain["class_balance"] == "none"


def test_a_study_on_imbalanced_labels_ranks_and_writes_its_report_on_macro_f1(skewed_folder, tmp_path):
    rc, out, err = run_cli(["compare", skewed_folder, *TINY_IMAGE, "--strategies", "classical,linear-probe",
                            "--fractions", "1", "--no-similarity", "--out", tmp_path / "s",
                            *[x for kv in FAST[1:] for x in ("--set", kv)]])
    assert rc == 0, err
    assert "the study ranks on macro_f1" in out
    records = read_jsonl(tmp_path / "s" / "results.jsonl")
    assert {r["metric"] for r in records} == {"macro_f1"}
    for r in records:
        run = json.loads((tmp_path / "s" / r["run_dir"] / "summary.json").read_text())
        assert r["test_score"] == pytest.approx(run["test"]["macro_f1"]) and run["metric"] == "macro_f1"
    advice = json.loads((tmp_path / "s" / "advice.json").read_text())
    assert "test macro-F1" in advice["text"]
    best = max(records, key=lambda r: r["val_score"])
    assert advice["best_cell"] == best["cell"] or advice.get("winner") == "classical"
    assert "val macro-F1" in (tmp_path / "s" / "report.html").read_text()


def test_an_unknown_tune_metric_is_one_line(skewed_folder, capsys):
    from ajuste.cli.main import main

    rc = main(["tune", str(skewed_folder), *TINY_IMAGE, "--metric", "f1", "--trials", "1"])
    assert rc != 0
    line = one_error_line(capsys.readouterr().err)
    assert "macro_f1" in line and "balanced_accuracy" in line


def test_a_study_compares_class_balance_variants_as_arms(skewed_folder, tmp_path):
    """``--strategies full,full+weights``: one arm per variant, each cell trained with its class_balance, and the
    floor's variant still counted as the floor."""
    rc, out, err = run_cli(["compare", skewed_folder, *TINY_IMAGE, "--strategies",
                            "classical,classical+weights,full,full+sampler", "--fractions", "1", "--no-similarity",
                            "--out", tmp_path / "s", *[x for kv in FAST[1:] for x in ("--set", kv)]])
    assert rc == 0, err
    records = {r["strategy"]: r for r in read_jsonl(tmp_path / "s" / "results.jsonl")}
    assert set(records) == {"classical", "classical+weights", "full", "full+sampler"}
    for arm, r in records.items():
        run = json.loads((tmp_path / "s" / r["run_dir"] / "summary.json").read_text())
        assert run["class_balance"] == (arm.partition("+")[2] or "none") and r["class_balance"] == run["class_balance"]
        assert run["strategy"] == arm.partition("+")[0]
    from ajuste.strategies.base import baseline_strategies

    assert "classical+weights" in baseline_strategies()


def test_an_unknown_arm_variant_is_one_line(skewed_folder, capsys):
    from ajuste.cli.main import main

    assert main(["compare", str(skewed_folder), "--strategies", "full+focal"]) != 0
    line = one_error_line(capsys.readouterr().err)
    assert "unknown variant 'focal'" in line and "+weights" in line
