"""The study: cells on shared splits, resume without redoing finished cells, budget, advice, report."""

from __future__ import annotations

import json

import numpy as np
import pytest

from ajuste.errors import AjusteError, ConfigError
from ajuste.io import read_jsonl
from ajuste.study.advice import aggregate, crossover, recommend
from ajuste.study.runner import run_study
from ajuste.study.similarity import logme
from ajuste.study.spec import StudySpec, parse_budget

TINY = ["model.pretrained=false", "data.image_size=32", "train.epochs=1", "strategy.head_epochs=1",
        "data.batch_size=64", "train.min_steps=0"]


def _spec(**kw) -> StudySpec:
    base = dict(source="digits", model="timm/test_efficientnet", strategies=["linear-probe", "scratch"],
                fractions=[0.1, 0.3], seeds=1, sets=list(TINY))
    base.update(kw)
    return StudySpec(**base)


class Boom(Exception):
    pass


def test_kill_mid_study_then_resume_skips_finished_cells(tmp_path):
    spec = _spec()
    seen: list[str] = []

    def die_after_two(rec):
        seen.append(rec["cell"])
        if len(seen) == 2:
            raise Boom

    with pytest.raises(Boom):
        run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, on_cell_end=die_after_two,
                  workers=1)
    first = read_jsonl(tmp_path / "results.jsonl")
    assert [r["cell"] for r in first] == seen

    ran: list[str] = []
    res = run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False,
                    on_cell_end=lambda r: ran.append(r["cell"]))
    assert not set(ran) & set(seen), "finished cells must not be redone"
    cells = [r["cell"] for r in res.records]
    assert sorted(cells) == sorted(c.key for c in spec.cells())
    assert len(cells) == len(set(cells))
    # Every cell trained on the same fixed splits; the fraction's examples come from train only.
    splits = json.loads((tmp_path / "splits.json").read_text())
    for r in res.records:
        run_splits = json.loads((tmp_path / r["run_dir"] / "splits.json").read_text())
        assert run_splits["test"] == splits["test"] and run_splits["val"] == splits["val"]
        assert set(run_splits["train"]) <= set(splits["train"])


def test_nested_fractions_and_cheapest_first_order(tmp_path):
    from ajuste.study.runner import plan_cells

    spec = _spec(strategies=["scratch", "linear-probe"], fractions=[1.0, 0.1], seeds=2)
    order = [c.key for c in plan_cells(spec, set())]
    assert order[:2] == ["linear-probe-f0.1-s0", "scratch-f0.1-s0"]
    assert all(k.endswith("s1") for k in order[4:])  # extra seeds after every arm has one


def test_refuses_to_mix_another_dataset_or_config(tmp_path):
    run_study(spec=_spec(strategies=["linear-probe"], fractions=[0.1]), study_dir=tmp_path, progress=False,
              similarity=False, workers=1)
    with pytest.raises(AjusteError, match="data.image_size=32"):
        run_study(spec=_spec(strategies=["linear-probe"], fractions=[0.1], sets=TINY[1:] + ["data.image_size=48"]),
                  study_dir=tmp_path, progress=False, similarity=False, workers=1)


@pytest.mark.parametrize("fractions", [[0.0], [1.5], [-0.1]])
def test_fractions_outside_unit_interval_are_refused(fractions):
    with pytest.raises(ConfigError, match="outside"):
        _spec(fractions=fractions)


def test_a_fraction_listed_twice_is_refused_like_a_strategy_listed_twice():
    with pytest.raises(ConfigError, match="lists a fraction twice: 0.1,0.1"):
        _spec(fractions=[0.1, 0.1])
    with pytest.raises(ConfigError, match="lists a strategy twice"):
        _spec(strategies=["scratch", "scratch"])
    assert _spec(fractions=[1.0, 0.1]).fractions == [0.1, 1.0]


def test_budget_too_small_for_one_cell_says_the_minimum(tmp_path):
    # The first (cheapest) cell always runs (with workers: alone, to measure it); a budget of 0.01 s then
    # skips the rest and says so.
    res = run_study(spec=_spec(budget_seconds=0.01), study_dir=tmp_path, progress=False, similarity=False)
    assert len(res.records) == 1 and res.skipped
    assert json.loads((tmp_path / "skipped.json").read_text())


def test_parse_budget():
    assert parse_budget("30m") == 1800 and parse_budget("1h30m") == 5400 and parse_budget("90s") == 90
    assert parse_budget("2") == 2 and parse_budget(None) is None  # a bare number is seconds, as for --timeout
    assert parse_budget("1h 30m") == 5400 and parse_budget("2d") == 172800
    with pytest.raises(ConfigError):
        parse_budget("soon")
    for nothing in ("0", "0s", "0m"):  # 0 was taken as "no budget": say so instead of running unbounded
        with pytest.raises(ConfigError, match="--budget .* must be longer than 0"):
            parse_budget(nothing)
    for bad in ("-5m", "5x", "m", "30m later"):
        with pytest.raises(ConfigError, match="--budget .*expected a duration"):
            parse_budget(bad)


def _rec(strategy, fraction, n, acc, seed=0, val=None):
    return {"strategy": strategy, "fraction": fraction, "seed": seed, "n_train": n, "test_accuracy": acc,
            "test_macro_f1": acc, "val_accuracy": acc if val is None else val, "train_seconds": 1.0,
            "peak_memory_mb": 100.0, "trainable_params": 10, "total_params": 100}


def test_crossover_measured_and_not_reached():
    recs = [_rec("full", 0.1, 100, 0.9), _rec("scratch", 0.1, 100, 0.5),
            _rec("full", 1.0, 1000, 0.95), _rec("scratch", 1.0, 1000, 0.95)]
    c = crossover(aggregate(recs), "full")
    assert c["status"] == "measured" and c["n_train"] == 1000
    recs = [_rec("full", 0.1, 100, 0.90), _rec("scratch", 0.1, 100, 0.50),
            _rec("full", 1.0, 1000, 0.92), _rec("scratch", 1.0, 1000, 0.80)]
    c = crossover(aggregate(recs), "full")
    assert c["status"] == "not-reached" and "not within the data you have" in c["text"]
    assert c.get("extrapolated_n", 0) > 1000  # scratch's error falls faster: it would catch up later


@pytest.mark.parametrize("scratch_errors, words", [
    ((0.5, 0.2), "catch up at about 2943 training examples, within the 5320 you have: the full-data cells would"),
    ((0.5, 0.25), "catch up at about 5892 training examples (1.1× the 5320 you have)"),
])
def test_crossover_is_worded_against_the_data_the_user_has(scratch_errors, words):
    """A budget skipped the full-data cells (fractions 0.1 and 0.3 of 5,320 examples ran): an extrapolated
    crossover is compared with the 5,320 examples, not with the 1,596 of the largest cell run."""
    recs = [_rec("full", 0.1, 532, 0.85), _rec("full", 0.3, 1596, 0.87),
            _rec("scratch-compact", 0.1, 532, 1 - scratch_errors[0]),
            _rec("scratch-compact", 0.3, 1596, 1 - scratch_errors[1])]
    c = crossover(aggregate(recs), "full", "scratch-compact")
    assert c["status"] == "not-reached"
    assert c["text"].startswith("not within the sizes run (up to 1596 of your 5320 training examples)")
    assert words in c["text"]


def test_a_tie_as_printed_picks_the_cheaper_arm_and_says_so():
    expensive = {**_rec("two-stage", 1.0, 5000, acc=0.985, val=0.9831), "train_seconds": 10.0}
    cheap = {**_rec("scratch-compact", 1.0, 5000, acc=0.981, val=0.9829), "train_seconds": 2.0}
    adv = recommend([expensive, cheap])
    assert adv["winner"] == "scratch-compact"
    assert ("tied on validation with two-stage (0.983 each), the cheaper arm is chosen (two-stage took 5.0× "
            "longer to train; test 0.985)") in adv["text"]
    assert "ahead on validation" not in adv["text"]
    apart = recommend([{**expensive, "val_accuracy": 0.9861}, cheap])  # 0.986 vs 0.983: no tie
    assert apart["winner"] == "two-stage" and "tied" not in apart["text"]


def test_recommendation_selects_on_validation_not_test():
    recs = [_rec("full", 1.0, 1000, acc=0.99, val=0.90), _rec("two-stage", 1.0, 1000, acc=0.95, val=0.93)]
    adv = recommend(recs)
    assert adv["winner"] == "two-stage"
    assert any("1000 training examples" in r for r in adv["reasons"])


def test_logme_prefers_informative_features():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 400)
    informative = np.eye(3)[y] * 3 + rng.normal(size=(400, 3)) * 0.5
    informative = np.hstack([informative, rng.normal(size=(400, 13))])
    noise = rng.normal(size=(400, 16))
    assert logme(informative, y) > logme(noise, y) + 0.1


def test_report_has_recommendation_first_and_all_plots(tmp_path):
    from ajuste.report.html import build_report

    spec = _spec(strategies=["linear-probe", "full", "scratch"], fractions=[0.2, 1.0])
    run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    advice = build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert html.index("Recommendation") < html.index("Data efficiency") < html.index("Results per fraction")
    # 4 (with the best model's reliability diagram) + learning curves at each of the 2 fractions
    assert html.count("data:image/png;base64,") == 6
    for name in ("data_efficiency", "learning_curves_f1", "learning_curves_f0.2", "accuracy_vs_time",
                 "confusion_best", "reliability_best"):
        assert (tmp_path / f"{name}.png").stat().st_size > 5000
    assert (tmp_path / "best_model" / "model.safetensors").is_file()
    assert advice["winner"] in spec.strategies
    from PIL import Image

    from ajuste.training.run_eval import predict_inputs  # the exported best model predicts

    img = tmp_path / "x.png"
    Image.fromarray((np.eye(8) * 255).astype(np.uint8)).save(img)
    out = predict_inputs(tmp_path / "best_model", [str(img)])
    assert out[0]["label"] in [str(i) for i in range(10)]


def test_one_standard_error_rule_prefers_the_cheaper_of_tied_arms():
    def rec(strategy, val, seconds, n_val):
        return {**_rec(strategy, 1.0, 1000, acc=val, val=val), "train_seconds": seconds, "n_val": n_val}

    # 0.4 points apart on 270 validation examples (se ≈ 0.007): a tie, the 2× cheaper arm is advised
    adv = recommend([rec("scratch", 0.989, 111.0, 270), rec("two-stage", 0.985, 53.0, 270)])
    assert adv["winner"] == "two-stage" and "within one standard error" in adv["text"]
    # the same gap on 100,000 validation examples is real: the better arm wins
    adv = recommend([rec("scratch", 0.989, 111.0, 100_000), rec("two-stage", 0.985, 53.0, 100_000)])
    assert adv["winner"] == "scratch" and "standard error" not in adv["text"]
    # a clear lead is never traded for speed
    adv = recommend([rec("full", 0.95, 100.0, 270), rec("linear-probe", 0.80, 1.0, 270)])
    assert adv["winner"] == "full"


def test_scratch_winning_on_small_data_does_not_contradict_itself():
    recs = [_rec("scratch", 1.0, 900, acc=0.99, val=0.99), _rec("full", 1.0, 900, acc=0.90, val=0.90)]
    adv = recommend(recs)
    assert adv["winner"] == "scratch"
    assert "scratch matched the fine-tuned arms" in adv["reasons"][0]


def test_a_resumed_budget_counts_the_studys_wall_time_from_spent_json(tmp_path):
    # cells side by side overlap, so the study keeps its own wall time instead of summing the cells'
    run_study(spec=_spec(strategies=["linear-probe"], fractions=[0.1]), study_dir=tmp_path, progress=False,
              similarity=False, workers=1)
    spent = json.loads((tmp_path / "spent.json").read_text())["seconds"]
    assert spent > 0
    (tmp_path / "spent.json").write_text(json.dumps({"seconds": 7200.0}))  # as if two hours had gone by
    res = run_study(spec=_spec(strategies=["linear-probe"], fractions=[0.1, 0.3], budget_seconds=3600),
                    study_dir=tmp_path, progress=False, similarity=False, workers=1)
    assert [s["cell"] for s in res.skipped] == ["linear-probe-f0.3-s0"]


def test_a_cell_out_of_memory_is_retried_at_half_the_batch_with_accumulation_and_the_report_says_so(
        tmp_path, monkeypatch):
    """Issue 28: a cell that runs out of (GPU) memory, here after its first epoch was checkpointed, trains
    again at half the batch size with twice the accumulation (the same effective batch); the record and the
    report say so. Another error is not retried."""
    import ajuste.training.run as run_mod
    from ajuste.report.html import build_report

    real = run_mod.train_run
    calls: list[tuple[int, int]] = []

    def tight_memory(*, cfg, **kw):
        calls.append((cfg.data.batch_size, cfg.train.grad_accum))
        if cfg.data.batch_size > 32:
            def oom(rec, result):
                raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 79.10 GiB total)")
            kw["on_epoch_end"] = oom
        return real(cfg=cfg, **kw)

    monkeypatch.setattr(run_mod, "train_run", tight_memory)
    spec = _spec(strategies=["full"], fractions=[0.3], sets=[*TINY, "train.epochs=2"])
    res = run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    assert calls == [(64, 1), (32, 2)]
    rec = res.records[0]
    assert rec["oom_retry"] == {"asked_batch_size": 64, "batch_size": 32, "grad_accum": 2}
    import yaml

    ran = yaml.safe_load((tmp_path / rec["run_dir"] / "config.yaml").read_text())
    assert ran["data"]["batch_size"] == 32 and ran["train"]["grad_accum"] == 2
    assert rec["epochs"] == 2  # the retry trained from scratch, not from the larger batch's checkpoint
    build_report(tmp_path)
    html = (tmp_path / "report.html").read_text()
    assert "Retried at a smaller batch" in html and ">64<" in html and ">32<" in html

    def other_error(*, cfg, **kw):
        raise RuntimeError("CUBLAS_STATUS_EXECUTION_FAILED")

    monkeypatch.setattr(run_mod, "train_run", other_error)
    with pytest.raises(RuntimeError, match="CUBLAS"):
        run_study(spec=_spec(strategies=["full"], fractions=[0.1]), study_dir=tmp_path / "b", progress=False,
                  similarity=False, workers=1)


def test_an_arm_costs_its_frozen_passes_also_when_another_cell_computed_them(tmp_path):
    """linear-probe and two-stage's head phase train on the same cached features: the cell that runs second
    finds them computed, and its standalone cost still counts what computing them took."""
    from ajuste.training import cache

    cache.clear()  # entries of earlier tests in this process would count as computed by another run
    spec = _spec(strategies=["linear-probe", "two-stage"], fractions=[0.3])
    res = run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    first, second = res.records  # inline: one after the other, cheapest first
    assert first["strategy"] == "linear-probe" and second["strategy"] == "two-stage"
    summary = json.loads((tmp_path / first["run_dir"] / "summary.json").read_text())
    assert summary["cache_seconds"] > 0 and summary["cache_reused_seconds"] == 0
    assert first["shared_seconds"] == 0
    assert second["shared_seconds"] == pytest.approx(summary["cache_seconds"], abs=0.02)
    for r in res.records:
        s = json.loads((tmp_path / r["run_dir"] / "summary.json").read_text())
        assert r["cost_seconds"] == pytest.approx(s["train_seconds"] + s["cache_seconds"] + s["cache_reused_seconds"],
                                                  abs=0.02)
        assert r["cost_seconds"] > r["train_seconds"]


def test_advice_compares_standalone_costs_and_says_what_sharing_saved():
    probe = {**_rec("linear-probe", 1.0, 1000, acc=0.90, val=0.90), "train_seconds": 0.7, "cost_seconds": 73.0}
    full = {**_rec("full", 1.0, 1000, acc=0.95, val=0.95), "train_seconds": 146.0, "cost_seconds": 146.0,
            "shared_seconds": 72.3}
    adv = recommend([probe, full])
    assert "linear-probe reaches 95% of its accuracy 2× faster" in " ".join(adv["reasons"])  # not 209×
    assert "cells sharing frozen-layer activations saved this study 72s" in " ".join(adv["reasons"])


def test_the_handed_over_model_is_the_best_on_validation_of_all_finished_cells():
    """AG News under a budget: the full-data two-stage cell was skipped, and two-stage at 30% (val 0.891) beat
    the linear probe at full data (val 0.884), which the hand-over used to pick."""
    from ajuste.study.advice import handed_over, handed_over_text

    recs = [{**_rec("linear-probe", 1.0, 5320, acc=0.878, val=0.884), "cell": "linear-probe-f1-s0"},
            {**_rec("linear-probe", 0.3, 1596, acc=0.86, val=0.870), "cell": "linear-probe-f0.3-s0"},
            {**_rec("two-stage", 0.3, 1596, acc=0.895, val=0.891), "cell": "two-stage-f0.3-s0"}]
    adv = recommend(recs)
    assert adv["winner"] == "linear-probe" and adv["fraction"] == 1.0  # the advice at the largest fraction run
    best = handed_over(recs, adv)
    assert best["cell"] == "two-stage-f0.3-s0"
    assert handed_over_text(best, adv).startswith("two-stage trained on 1596 examples (fraction 0.3), validation "
                                                  "accuracy 0.891; handed over as the most accurate on validation")
    recs[0]["val_accuracy"] = 0.891  # a tie: the recommended arm's, with more data
    assert handed_over(recs, adv)["cell"] == "linear-probe-f1-s0"
    assert "handed over as" not in handed_over_text(handed_over(recs, adv), adv)


def test_similarity_within_a_budget_measures_fewer_examples():
    """A study's --budget caps the similarity measurement: the pilot pass sets the examples per split (never
    fewer than MIN_EXAMPLES); without a budget the default subsample stands."""
    from ajuste.config import RunConfig
    from ajuste.study.similarity import MIN_EXAMPLES, measure_similarity
    from ajuste.training.prepare import prepare_data

    cfg = RunConfig().override({"data.source": "digits", "model.name": "timm/test_efficientnet",
                                "model.pretrained": False, "data.image_size": 32, "train.threads": 1})
    data, splits = prepare_data(cfg)
    free = measure_similarity(model=cfg.model.name, data=data, splits=splits, cfg=cfg)
    assert free["n_train"] == len(splits["train"]) and "budget_seconds" not in free
    tight = measure_similarity(model=cfg.model.name, data=data, splits=splits, cfg=cfg, seconds=0.01)
    assert tight["n_train"] == MIN_EXAMPLES and tight["n_val"] == min(MIN_EXAMPLES, len(splits["val"]))
    assert tight["budget_seconds"] == 0.0 and tight["similarity"] in ("low", "medium", "high")
