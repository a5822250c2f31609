"""The budget planner (ajuste.study.planner): a full-data model first, successive halving over the arms across
the fractions, more seeds of two close arms, then the rest of the curve; the most useful cell runs with the time
left as its limit; costs learned from the cells run. Then one small real compare on digits under a tight budget."""

from __future__ import annotations

import json

import pytest

from ajuste.study.planner import CostModel, Planner, kept, within_noise
from ajuste.study.runner import plan_cells
from ajuste.study.scores import validation_noise
from ajuste.study.spec import Cell, StudySpec

ARMS = ["two-stage", "scratch-compact", "linear-probe"]  # listed out of cost order on purpose
N_VAL = 400


def _spec(**kw) -> StudySpec:
    base = dict(source="digits", model="m", strategies=list(ARMS), fractions=[0.1, 0.3, 1.0], seeds=1,
                budget_seconds=1000.0)
    base.update(kw)
    return StudySpec(**base)


class FakeCost(CostModel):
    """Every cell costs ``per_epoch`` × its planned epochs (10), whatever its size; ``overhead`` outside the fit."""

    def __init__(self, per_epoch: float = 1.0, overhead: float = 0.0, unknown: bool = False) -> None:
        super().__init__()
        self.per_epoch, self.unknown, self.overheads = per_epoch, unknown, [overhead]

    def estimate(self, strategy: str, n_train: int, epochs: int) -> float | None:
        return None if self.unknown else self.per_epoch * epochs

    def measured(self, strategy: str) -> bool:
        return not self.unknown and strategy not in self.guessed

    guessed: tuple[str, ...] = ()


def _rec(strategy: str, fraction: float, val: float, seed: int = 0, **kw) -> dict:
    return {"cell": Cell(strategy, fraction, seed).key, "strategy": strategy, "fraction": fraction, "seed": seed,
            "val_accuracy": val, **kw}


class Sim:
    """A planner over synthetic records: ``run`` takes the next choice and 'finishes' it with its val."""

    def __init__(self, spec: StudySpec, cost: CostModel, left: float = 1e6, trained: float = 0.0) -> None:
        self.records: list[dict] = []
        self.left = left
        self.planner = Planner(spec, size=lambda c: (100, 10), records=self.records, cost=cost, n_val=N_VAL,
                               left=lambda: self.left, trained=lambda c: trained)

    def run(self, vals: dict[str, float]) -> list[str]:
        """Run cells one at a time until none is left; each one's val from ``vals`` (by cell key, then by
        strategy). Returns the keys in the order they ran."""
        order = []
        while (choice := self.planner.next(set())) is not None:
            c = choice.cell
            order.append(c.key)
            self.records.append(_rec(c.strategy, c.fraction, vals.get(c.key, vals.get(c.strategy)), c.seed))
        return order


def test_the_cheapest_arm_at_full_data_runs_first_only_under_a_budget():
    sim = Sim(_spec(), FakeCost(unknown=True))
    first = sim.planner.next(set())
    assert first.cell.key == "linear-probe-f1-s0" and first.estimate is None  # nothing measured: it runs anyway
    # nothing measured yet and one cell running: the others wait for its measurement
    assert sim.planner.next({"linear-probe-f1-s0"}) is None
    # without a budget the order is the fixed cheapest-first one, as before
    assert [c.key for c in plan_cells(_spec(budget_seconds=None), set())][:2] == ["linear-probe-f0.1-s0",
                                                                                 "scratch-compact-f0.1-s0"]


def test_successive_halving_runs_the_arms_that_could_still_win_before_the_rest_of_the_curve():
    vals = {"linear-probe-f1-s0": 0.90, "linear-probe-f0.1-s0": 0.80, "two-stage-f0.1-s0": 0.82,
            "scratch-compact-f0.1-s0": 0.50, "linear-probe-f0.3-s0": 0.84, "two-stage-f0.3-s0": 0.93,
            "two-stage-f1-s0": 0.97, "scratch-compact": 0.70}
    order = Sim(_spec(), FakeCost()).run(vals)
    assert order[0] == "linear-probe-f1-s0"
    assert order[1:4] == ["linear-probe-f0.1-s0", "scratch-compact-f0.1-s0", "two-stage-f0.1-s0"]
    # scratch-compact is far behind at 10% (0.50 vs 0.82 on 400 examples): not run at 30% until the curve is
    # filled in; the two others go on, the better one first; at 30% only two-stage could still win
    assert order[4:7] == ["two-stage-f0.3-s0", "linear-probe-f0.3-s0", "two-stage-f1-s0"]
    # two-stage 0.97 vs linear-probe 0.90 at full data is no tie: no extra seeds; the curve of scratch-compact,
    # outside noise of the best at 10%, is not run under a budget, and the skipped cells say so
    assert order[7:] == []
    sim = Sim(_spec(), FakeCost())
    sim.run(vals)
    reasons = {r["cell"]: r["reason"] for r in sim.planner.skipped()}
    assert set(reasons) == {"scratch-compact-f0.3-s0", "scratch-compact-f1-s0"}
    assert all("outside noise of the best arm at fraction 0.1" in r for r in reasons.values())


def test_a_free_worker_does_not_take_a_far_behind_arm_while_the_leader_still_runs():
    """sst2 under a 333 s budget: with two-stage's 10% cell still running, the free worker took scratch-compact at
    30% (0.65 vs linear-probe's 0.81 at 10%) and spent 120 s there."""
    sim = Sim(_spec(fractions=[0.1, 0.3, 1.0]), FakeCost())
    sim.records += [_rec("linear-probe", 1.0, 0.81), _rec("linear-probe", 0.1, 0.805),
                    _rec("scratch-compact", 0.1, 0.651), _rec("linear-probe", 0.3, 0.808)]
    choice = sim.planner.next({"two-stage-f0.1-s0"})
    assert choice is None or not choice.cell.key.startswith("scratch-compact")


def test_with_several_workers_an_arm_goes_on_only_when_the_finished_cells_rank_it_in_their_better_half():
    sim = Sim(_spec(), FakeCost())
    sim.records += [_rec("linear-probe", 1.0, 0.9), _rec("scratch-compact", 0.1, 0.10)]
    busy = {"two-stage-f0.1-s0", "linear-probe-f0.1-s0"}

    def promoted():
        return [c.key for c, why in sim.planner.candidates(busy) if why.startswith("could still be the best")]

    assert promoted() == []  # one finished of three: nothing promoted yet (a free worker fills in the curve)
    sim.records.append(_rec("linear-probe", 0.1, 0.20))
    busy.discard("linear-probe-f0.1-s0")
    # two of three: the better one goes on, not the worst of the three (0.10) with it
    assert promoted() == ["linear-probe-f0.3-s0"]
    assert sim.planner.next(busy).cell.key == "linear-probe-f0.3-s0"
    sim.records.append(_rec("two-stage", 0.1, 0.30))
    busy.discard("two-stage-f0.1-s0")
    assert promoted() == ["two-stage-f0.3-s0", "linear-probe-f0.3-s0"]  # all three in: the better half


def test_two_arms_within_noise_at_full_data_get_more_seeds_paired_up_to_three():
    vals = {"linear-probe": 0.90, "two-stage": 0.905, "scratch-compact": 0.40,
            "scratch-compact-f0.1-s0": 0.40}
    order = Sim(_spec(), FakeCost()).run(vals)
    extra = [k for k in order if not k.endswith("-s0")]
    assert extra == ["two-stage-f1-s1", "linear-probe-f1-s1", "two-stage-f1-s2", "linear-probe-f1-s2"]
    # ... and the arm far behind at 10% gets no larger cell
    assert not any(k.startswith("scratch-compact-f0.3") or k.startswith("scratch-compact-f1") for k in order)
    # the study's own --seeds raise the cap
    order = Sim(_spec(seeds=4), FakeCost()).run(vals)
    assert "two-stage-f1-s3" in order


def test_arms_clearly_apart_at_full_data_get_no_extra_seed():
    order = Sim(_spec(), FakeCost()).run({"linear-probe": 0.80, "two-stage": 0.95, "scratch-compact": 0.90})
    assert all(k.endswith("-s0") for k in order)
    # the two arms outside noise of two-stage at 10% (400 validation examples) get no cell from the fill: halving
    # still takes scratch-compact (the better half) to 30%, where it is cut; linear-probe has its anchor at 100%
    assert sorted(order) == sorted(["linear-probe-f1-s0", "linear-probe-f0.1-s0", "scratch-compact-f0.1-s0",
                                    "two-stage-f0.1-s0", "two-stage-f0.3-s0", "scratch-compact-f0.3-s0",
                                    "two-stage-f1-s0"])


def test_the_most_useful_cell_runs_with_the_time_left_as_its_limit_rather_than_being_skipped():
    spec = _spec(strategies=["linear-probe", "two-stage"], fractions=[1.0])
    sim = Sim(spec, FakeCost(per_epoch=30.0, overhead=5.0), left=100.0, trained=12.0)
    sim.records.append(_rec("linear-probe", 1.0, 0.9))
    choice = sim.planner.next(set())
    assert choice.cell.key == "two-stage-f1-s0" and choice.estimate == 300.0  # would not fit whole
    # its limit: the time left less what a cell takes outside its fit, plus what an earlier session trained
    assert choice.max_seconds == pytest.approx(12.0 + 100.0 - 5.0)
    sim.left = 30.0  # not even one epoch (30 s + 5 s outside the fit) fits: nothing runs, the study ends
    assert sim.planner.next(set()) is None
    skipped = sim.planner.skipped()
    assert skipped == [{"cell": "two-stage-f1-s0", "estimate_seconds": 300.0, "left_seconds": 30.0,
                        "reason": "no time left"}]


def test_a_cell_of_which_no_epoch_fits_gives_way_to_a_cheaper_one():
    class BySize(FakeCost):
        def estimate(self, strategy, n_train, epochs):
            return (10.0 if strategy == "linear-probe" else 50.0) * epochs

    sim = Sim(_spec(strategies=["linear-probe", "two-stage"]), BySize(), left=25.0)
    sim.records += [_rec("linear-probe", 1.0, 0.9), _rec("linear-probe", 0.1, 0.80), _rec("two-stage", 0.1, 0.85)]
    # both could still win at 30%, two-stage first; but its first epoch (50 s) does not fit in 25 s
    assert [c.key for c, _ in sim.planner.candidates(set())][:2] == ["two-stage-f0.3-s0", "linear-probe-f0.3-s0"]
    assert sim.planner.next(set()).cell.key == "linear-probe-f0.3-s0"


def test_an_arm_never_measured_runs_its_first_cell_while_any_time_is_left():
    """Its estimate is a guess through the cost ranks: running its smallest cell (within the time left) is how
    its cost is learned; a measured arm whose epoch does not fit is passed over."""
    cost = FakeCost(per_epoch=50.0, overhead=5.0)
    cost.guessed = ("two-stage",)
    sim = Sim(_spec(strategies=["linear-probe", "two-stage"], fractions=[0.1]), cost, left=20.0)
    sim.records.append(_rec("linear-probe", 0.1, 0.8))
    choice = sim.planner.next(set())
    assert choice.cell.key == "two-stage-f0.1-s0" and choice.max_seconds == pytest.approx(15.0)
    cost.guessed = ()
    assert sim.planner.next(set()) is None
    sim.left = 4.0  # less than a cell takes outside its fit: not even a first measurement
    cost.guessed = ("two-stage",)
    assert sim.planner.next(set()) is None


def test_skipped_cells_say_why():
    sim = Sim(_spec(), FakeCost(), left=1e6)
    for key, v in {"linear-probe-f1-s0": 0.9, "linear-probe-f0.1-s0": 0.8, "two-stage-f0.1-s0": 0.82,
                   "scratch-compact-f0.1-s0": 0.5}.items():
        strategy, f = key.rsplit("-f", 1)
        sim.records.append(_rec(strategy, float(f.split("-s")[0]), v))
    sim.left = 0.0
    reasons = {s["cell"]: s["reason"] for s in sim.planner.skipped()}
    assert reasons["scratch-compact-f0.3-s0"].startswith("outside noise of the best arm at fraction 0.1")
    assert reasons["scratch-compact-f1-s0"].startswith("outside noise of the best arm at fraction 0.1")
    assert reasons["two-stage-f0.3-s0"] == "no time left"
    assert reasons["linear-probe-f0.3-s0"] == "no time left"  # within noise of the best at 10%: it could win


def test_kept_is_the_better_half_or_within_noise_whichever_keeps_more():
    r = {s: {"val": v, "std": 0.0, "seeds": 1} for s, v in
         {"a": 0.90, "b": 0.89, "c": 0.88, "d": 0.70, "e": 0.60, "f": 0.50}.items()}
    assert kept(r, 400) == ["a", "b", "c"]  # half of six
    assert kept(r, 20) == ["a", "b", "c", "d"]  # 20 validation examples: 0.70 is within noise of 0.90
    # while some arms still run at that fraction (several workers): the better half of those finished, rounded
    # down, as ASHA does; the noise margin waits for the rest
    assert kept(r, 20, complete=False) == ["a", "b", "c"]
    assert kept({"a": r["a"]}, 400, complete=False) == []
    assert within_noise(r["a"], r["b"], 400) and not within_noise(r["a"], r["d"], 400)
    spread = {"val": 0.85, "std": 0.10, "seeds": 3}  # a wide spread over seeds widens the margin
    assert within_noise(r["a"], spread, 10_000) and not within_noise(r["a"], r["c"], 10_000)


def test_the_noise_of_an_error_is_in_the_targets_units():
    """RMSE is recorded negated, in the target's units: its noise scales with it (RMSE/√(2n)), where the
    binomial formula of a share would give one example's worth whatever the units."""
    rmse = {s: {"val": v, "std": 0.0, "seeds": 1, "metric": "rmse"} for s, v in {"a": -10.0, "b": -10.5}.items()}
    assert within_noise(rmse["a"], rmse["b"], 270)  # ±0.43 each on 270 examples: half a unit is noise
    assert not within_noise(rmse["a"], rmse["b"], 100_000)
    small = {s: {**r, "val": r["val"] / 100} for s, r in rmse.items()}  # the same in units 100× larger
    assert within_noise(small["a"], small["b"], 270)
    assert validation_noise(-2.0, 200, metric="rmse") == pytest.approx(0.1)
    assert validation_noise(-1.0, 100, metric="mae") == pytest.approx(0.0756, abs=1e-4)
    assert validation_noise(0.9, 200, metric="r2") == pytest.approx(0.01)
    assert validation_noise(0.9, 100) == pytest.approx(0.03)  # a share: binomial
    assert validation_noise(-2.0, 200, 1.0, 4, metric="rmse") == pytest.approx(0.5)  # the seeds' spread wins


def test_the_cost_model_learns_wall_seconds_with_a_fixed_part_and_scales_to_arms_not_run():
    cost = CostModel()
    assert cost.estimate("two-stage", 100, 10) is None
    base = {"strategy": "two-stage", "train_seconds": 1.0, "cost_seconds": 1.0, "shared_seconds": 0.0}
    cost.observe_record({**base, "n_train": 100, "wall_seconds": 30.0}, 10)  # 20 s fixed + 0.01 s/example-epoch
    assert cost.estimate("two-stage", 1000, 10) == pytest.approx(300.0)  # through the origin: pessimistic above
    cost.observe_record({**base, "n_train": 300, "wall_seconds": 50.0}, 10)
    assert cost.estimate("two-stage", 1000, 10) == pytest.approx(120.0)  # 20 + 0.01 × 10,000
    assert cost.overhead() == pytest.approx(39.0)  # the median of the cells' wall less their fit (29, 49)
    # an arm not run yet: the measured rate scaled by the cost ranks (scratch-compact 0.6 vs two-stage 1.0)
    from ajuste.study.cells import cost_rank

    ratio = cost_rank("scratch-compact") / cost_rank("two-stage")
    assert cost.estimate("scratch-compact", 1000, 10) == pytest.approx(20.0 + 0.01 * ratio * 10_000)
    # a cell stopped early by its time limit under-states its arm's cost: used only while nothing else is known
    cost.observe_record({**base, "strategy": "full", "n_train": 100, "wall_seconds": 1.0, "stopped_early": True},
                        10)
    assert cost.estimate("full", 100, 10) == pytest.approx(1.0)
    cost.observe_record({**base, "strategy": "full", "n_train": 100, "wall_seconds": 40.0}, 10)
    assert cost.estimate("full", 100, 10) == pytest.approx(40.0)


# --- one small real compare ------------------------------------------------------------------------------

TINY = ["model.pretrained=false", "data.image_size=32", "train.epochs=2", "strategy.head_epochs=1",
        "data.batch_size=64", "train.min_steps=0"]


def test_a_budget_too_small_for_all_cells_still_hands_over_a_full_data_model(tmp_path):
    """digits with a tiny network: the budget fits a few cells, not nine. The full-data linear probe runs
    first, so a full-data model exists and is handed over (or one better on validation); the study stops near
    its budget, says which cells it did not run and why, and marks any cell its time limit cut short."""
    from ajuste.report.html import build_report
    from ajuste.study.runner import run_study

    budget = 5.0  # a few tiny cells on a quiet machine, one on a loaded one: never all nine
    spec = StudySpec(source="digits", model="timm/test_efficientnet", strategies=["two-stage", "scratch",
                     "linear-probe"], fractions=[0.1, 0.3, 1.0], seeds=1, budget_seconds=budget, sets=list(TINY))
    res = run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    assert res.records[0]["cell"] == "linear-probe-f1-s0" and res.records[0]["fraction"] == 1.0
    ran = {r["cell"] for r in res.records}
    assert res.skipped and not ran & {s["cell"] for s in res.skipped}
    assert {s["cell"] for s in res.skipped} | ran >= {c.key for c in spec.cells()}
    spent = json.loads((tmp_path / "spent.json").read_text())["seconds"]
    # one cell at a time, each started only while time was left: only the last one can cross the budget
    assert spent - res.records[-1]["wall_seconds"] < budget, (spent, res.records[-1])
    for r in res.records:  # every cell ran under a limit of the time then left
        cfg = (tmp_path / r["run_dir"] / "config.yaml").read_text()
        assert "max_seconds: " in cfg and "max_seconds: null" not in cfg
    advice = build_report(tmp_path)
    assert (tmp_path / "best_model" / "model.safetensors").is_file()
    best = next(r for r in res.records if r["cell"] == advice["best_cell"])
    assert best["val_accuracy"] >= res.records[0]["val_accuracy"]
    html = (tmp_path / "report.html").read_text()
    assert "Skipped by the time budget" in html

    # A cell stopped early is shown as such everywhere, never as finished normally.
    recs = [json.loads(x) for x in (tmp_path / "results.jsonl").read_text().splitlines()]
    recs[0].update(stopped_early=True, stopped_by="time limit")
    (tmp_path / "results.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))
    advice = build_report(tmp_path, export=False)
    html = (tmp_path / "report.html").read_text()
    md = (tmp_path / "results.md").read_text()
    # "(stopped early)", or "(stopped early (1 of 2 seeds))" when the time also fitted an extra seed of it
    assert "linear-probe (stopped early" in html and "stopped early (time limit)" in html
    assert "| linear-probe (stopped early" in md
    assert any("stopped early by the budget's time limit" in x and "linear-probe-f1-s0" in x
               for x in advice["reasons"])
    if advice["best_cell"] == "linear-probe-f1-s0":
        assert "stopped early" in advice["best_model"]


def test_a_budgeted_study_resumes_a_cell_killed_midway_under_the_new_time_left(tmp_path, monkeypatch):
    """A cell's limit is the time left when it starts, so a resumed study gives its unfinished cell another one:
    the run resumes (the limit is not part of what a resume compares) instead of being refused, and the budget
    counts the study's earlier time from spent.json."""
    import yaml

    import ajuste.training.run as run_mod
    from ajuste.study.runner import run_study
    from ajuste.training.run_dir import epochs_done

    spec = StudySpec(source="digits", model="timm/test_efficientnet", strategies=["linear-probe"],
                     fractions=[1.0], seeds=1, budget_seconds=600.0, sets=list(TINY))
    anchor = tmp_path / "runs" / "linear-probe-f1-s0"
    real = run_mod.train_run

    def stopped_after_one_epoch(*, cfg, **kw):
        def stop(rec, result):
            raise KeyboardInterrupt
        return real(cfg=cfg, **{**kw, "on_epoch_end": stop})

    monkeypatch.setattr(run_mod, "train_run", stopped_after_one_epoch)
    with pytest.raises(KeyboardInterrupt):  # the study stopped during its first cell
        run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    monkeypatch.undo()
    assert epochs_done(anchor) == 1
    first = yaml.safe_load((anchor / "config.yaml").read_text())["train"]["max_seconds"]
    held = sum(json.loads(x)["seconds"] for x in (anchor / "metrics.jsonl").read_text().splitlines())
    (tmp_path / "spent.json").write_text(json.dumps({"seconds": 100.0}))  # as if it had run 100 s
    res = run_study(spec=spec, study_dir=tmp_path, progress=False, similarity=False, workers=1)
    # resumed under its new limit (a config compared with the limit in it would have been refused)
    assert [r["cell"] for r in res.records] == ["linear-probe-f1-s0"] and not res.records[0]["stopped_early"]
    limit = yaml.safe_load((anchor / "config.yaml").read_text())["train"]["max_seconds"]
    # the time left then (600 less the 100 s spent before), plus the epoch the run already holds (its limit counts
    # it; a loaded machine makes it longer)
    assert first > 550 and limit <= 500.0 + held + 0.5
    assert json.loads((tmp_path / "spent.json").read_text())["seconds"] > 100.0


def test_the_classical_floor_runs_first_and_once_and_takes_no_part_in_halving_or_seeds():
    spec = _spec(strategies=["classical", *ARMS], seeds=3)
    assert [c.key for c in spec.cells() if c.strategy == "classical"] == \
        ["classical-f0.1-s0", "classical-f0.3-s0", "classical-f1-s0"]  # deterministic: one seed
    # At 10% the floor leads and two-stage is third of four: among the deep arms alone it is in the better half.
    vals = {"classical": 0.97, "scratch-compact-f0.1-s0": 0.93, "two-stage-f0.1-s0": 0.87,
            "linear-probe-f0.1-s0": 0.60, "linear-probe": 0.70, "two-stage": 0.99, "scratch-compact": 0.95}
    order = Sim(spec, FakeCost()).run(vals)
    assert order[:2] == ["classical-f1-s0", "linear-probe-f1-s0"]
    assert "two-stage-f0.3-s0" in order  # kept by halving
    assert "linear-probe-f0.3-s0" not in order  # 0.60 vs 0.93 at 10%: outside noise, no larger cell
    assert not [k for k in order if k.startswith("classical") and not k.endswith("-s0")]
