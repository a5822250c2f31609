"""`ajuste tune`: search spaces, samplers/pruners by name, the objective, budget and resume, outputs, bad input.

Training tests use timm/test_efficientnet at 32 px, untrained, on 20 % of digits, 1–2 epochs per trial.
"""

from __future__ import annotations

import json
import socket
import threading
import time
from pathlib import Path

import pytest

from ajuste.config import RunConfig, describe_fields
from ajuste.errors import AjusteError, ConfigError
from ajuste.search.space import Param, SearchSpace, default_space, load_space

STRATEGIES = ["linear-probe", "partial", "full", "two-stage", "gradual", "discriminative", "scratch",
              "scratch-compact"]
# One torch thread: on a shared 2-core machine, two spinning OpenMP threads per process slow everything down.
TINY = ["--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set", "data.image_size=32",
        "--fraction", "0.2", "--set", "train.threads=1"]


def _no_min_steps() -> dict:
    # train.min_steps stretches epochs on small data; trials here must stay 1–2 epochs.
    names = {n for n, _, _ in describe_fields()}
    return {"train.min_steps": 0} if "train.min_steps" in names else {}


def _tiny_sets() -> list[str]:
    return [a for k, v in _no_min_steps().items() for a in ("--set", f"{k}={v}")]


@pytest.fixture(scope="module", autouse=True)
def _restore_torch_threads():
    import torch

    n = torch.get_num_threads()
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def tiny_cfg() -> RunConfig:
    return RunConfig().override({"data.source": "digits", "model.name": "timm/test_efficientnet",
                                 "model.pretrained": False, "data.image_size": 32, "data.fraction": 0.2,
                                 "strategy.name": "full", "train.epochs": 2, "train.threads": 1,
                                 **_no_min_steps()})


@pytest.fixture(scope="module")
def digits(tiny_cfg):
    from ajuste.training.run import prepare_data

    return prepare_data(tiny_cfg.override({"data.fraction": 1.0}))


def _space_file(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "space.yaml"
    p.write_text(text)
    return p


SMALL_SPACE = """
extends: none
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true, grid: [1.0e-3, 1.0e-2]}
  model.dropout: {type: float, low: 0.0, high: 0.5, grid: [0.0, 0.3]}
"""


def _tune(tmp_path, tiny_cfg, digits, **kw):
    from ajuste.search.runner import tune

    data, splits = digits
    args = dict(cfg=tiny_cfg, out=tmp_path / "tune", trials=3, sampler="random", pruner="none",
                space=_space_file(tmp_path, SMALL_SPACE), data=data, splits=splits, report=False)
    args.update(kw)
    return tune(**args)


def _study(res):
    import optuna

    return optuna.load_study(study_name=res.study_name, storage=f"sqlite:///{res.out / 'study.db'}")


# -- spaces ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_default_space_per_strategy(strategy):
    from ajuste.strategies.base import get_strategy

    space = default_space(get_strategy(strategy), modality="image", default_lr=1e-4, n_body_groups=6)
    for name in ("optim.lr", "optim.weight_decay", "model.dropout", "data.batch_size", "optim.warmup",
                 "optim.label_smoothing"):
        assert name in space
    lr = space.params["optim.lr"]
    assert lr.log and lr.low < 1e-4 < lr.high
    assert ("strategy.unfreeze" in space) == (strategy == "partial")
    assert ("optim.layer_decay" in space) == (strategy in ("discriminative", "gradual"))
    if strategy == "partial":
        assert space.params["strategy.unfreeze"].high == 4
    # From scratch there are no pretrained weights to stay close to: the decay range reaches higher.
    assert space.params["optim.weight_decay"].high == (0.3 if strategy.startswith("scratch") else 0.1)
    space.check(RunConfig().override({"strategy.name": strategy}), n_body_groups=6)


def test_strategy_search_space_hook_is_merged():
    import optuna

    class Lora:  # what a PEFT strategy may look like: any of these return shapes is accepted
        name = "lora"

        def search_space(self, modality):
            assert modality == "text"
            return {"optim.lr": {"type": "float", "low": 1e-4, "high": 1e-2, "log": True},
                    "strategy.head_epochs": [1, 2, 3],
                    "optim.layer_decay": optuna.distributions.FloatDistribution(0.6, 1.0),
                    "model.dropout": None}

    space = default_space(Lora(), modality="text", default_lr=5e-5)
    assert space.params["optim.lr"].low == 1e-4  # the strategy's own range wins
    assert space.params["strategy.head_epochs"].choices == (1, 2, 3)
    assert space.params["optim.layer_decay"].high == 1.0
    assert "model.dropout" not in space
    assert space.params["data.batch_size"].choices == (8, 16, 32)  # text defaults kept

    class NoArgs:
        name = "x"

        def search_space(self):
            return SearchSpace([Param("optim.warmup", "float", 0.0, 0.3)])

    assert default_space(NoArgs(), modality="image", default_lr=1e-3).params["optim.warmup"].high == 0.3


def test_yaml_space_layers(tmp_path):
    base = SearchSpace.from_mapping({"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                                     "model.dropout": {"low": 0.0, "high": 0.5}})
    flat = load_space(_space_file(tmp_path, "optim.lr: {low: 1.0e-4, high: 1.0e-2, log: true}\n"
                                            "data.batch_size: [16, 32]\nmodel.dropout: null\n"), base)
    assert list(flat.params) == ["optim.lr", "data.batch_size"]
    assert flat.params["optim.lr"].low == 1e-4 and flat.params["data.batch_size"].kind == "categorical"
    fresh = load_space(
        _space_file(tmp_path, "extends: none\nparams:\n  strategy.unfreeze: {type: int, low: 1, high: 3}\n"), base)
    assert list(fresh.params) == ["strategy.unfreeze"] and fresh.params["strategy.unfreeze"].kind == "int"
    # YAML 1.1 reads 1e-5 (no dot) as a string: still the number meant
    assert load_space(_space_file(tmp_path, "optim.lr: {type: float, low: 1e-5, high: 1e-3, log: true}\n"),
                      base).params["optim.lr"].low == 1e-5


@pytest.mark.parametrize("text, message", [
    ("extends: none\nparams: {}\n", "search space is empty"),
    ("optim.lr: {type: float, low: 0.01, high: 0.001}\n", "low (0.01) must be < high (0.001)"),
    ("optim.lr: {type: float, low: 0.001, high: 0.001}\n", "must be < high"),
    ("optim.lr: {type: float, low: 0, high: 0.1, log: true}\n", "log range needs low > 0"),
    ("optim.lr: {type: float, low: 0.001, high: 0.1, lg: true}\n", "unknown key(s) lg"),
    ("optim.lrr: {type: float, low: 0.001, high: 0.1}\n", "did you mean optim.lr"),
    ("data.fraction: [0.1, 0.5]\n", "cannot be searched"),
    ("optim.label_smoothing: {type: float, low: 0.0, high: 0.8}\n", "optim.label_smoothing = 0.8 is not a valid"),
    ("data.batch_size: {type: categorical, choices: []}\n", "non-empty `choices`"),
    ("strategy.unfreeze: {type: int, low: 1, high: 9}\n", "has 6 layer groups"),
    ("- a\n- b\n", "expected a mapping"),
])
def test_bad_space(tmp_path, text, message):
    base = SearchSpace.from_mapping({"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True}})
    with pytest.raises(ConfigError) as exc:
        space = load_space(_space_file(tmp_path, text), base)
        space.check(RunConfig(), n_body_groups=6)
    assert message in str(exc.value)
    assert "\n" not in str(exc.value)


def test_grid_needs_explicit_values():
    space = SearchSpace.from_mapping({"optim.lr": {"type": "float", "low": 1e-5, "high": 1e-3, "log": True},
                                      "model.dropout": {"type": "float", "low": 0.0, "high": 0.5},
                                      "strategy.unfreeze": {"type": "int", "low": 1, "high": 3},
                                      "data.batch_size": [16, 32]})
    with pytest.raises(ConfigError, match=r"--sampler grid needs a finite grid, but optim.lr .* model.dropout"):
        space.grid()
    ok = space.updated({"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True, "grid": [1e-5, 1e-4]},
                        "model.dropout": {"low": 0.0, "high": 0.5, "step": 0.25}})
    assert ok.grid() == {"optim.lr": [1e-5, 1e-4], "model.dropout": [0.0, 0.25, 0.5],
                         "strategy.unfreeze": [1, 2, 3], "data.batch_size": [16, 32]}
    assert ok.grid_size() == 36


def test_space_diff_is_one_line():
    a = SearchSpace.from_mapping({"optim.lr": {"low": 1e-5, "high": 1e-3, "log": True},
                                  "model.dropout": {"low": 0.0, "high": 0.5}})
    b = SearchSpace.from_mapping({"optim.lr": {"low": 1e-5, "high": 1e-2, "log": True}, "data.batch_size": [16, 32]})
    assert a.diff(b) == "optim.lr: log-float[1e-05, 0.001] → log-float[1e-05, 0.01]; -model.dropout; " \
                        "+data.batch_size {16, 32}"
    assert a.diff(a) == ""


# -- samplers, pruners, durations, storage ----------------------------------------------------------------


def test_samplers_and_pruners_by_name():
    from ajuste.search.samplers import PRUNERS, SAMPLERS, make_pruner, make_sampler

    for name in SAMPLERS:
        assert make_sampler(name, seed=0, budget=20, grid={"optim.lr": [1e-3]}) is not None
    for name in PRUNERS:
        assert make_pruner(name, max_epochs=9) is not None
    assert type(make_pruner("auto", max_epochs=9)).__name__ == "SuccessiveHalvingPruner"
    assert type(make_pruner("hyperband", max_epochs=9)).__name__ == "HyperbandPruner"
    with pytest.raises(ConfigError, match="unknown sampler 'bayes': valid samplers are tpe, random, grid, gp, "
                                          "cmaes, nsga2"):
        make_sampler("bayes", seed=0, budget=5)
    with pytest.raises(ConfigError, match="unknown pruner 'asha': valid pruners are auto, sha, hyperband, median, none"):
        make_pruner("asha")


def test_parse_duration():
    from ajuste.search.runner import parse_duration

    assert parse_duration("90") == 90 and parse_duration("90s") == 90 and parse_duration("30m") == 1800
    assert parse_duration("1h30m") == 5400 and parse_duration(None) is None
    with pytest.raises(ConfigError, match="expected a duration"):
        parse_duration("soon")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_unreachable_postgres_fails_fast_and_hides_password():
    from ajuste.search.storage import check_reachable

    t0 = time.perf_counter()
    with pytest.raises(AjusteError) as exc:
        check_reachable(f"postgresql://me:s3cret@127.0.0.1:{_free_port()}/db")
    assert time.perf_counter() - t0 < 5
    assert "cannot reach storage postgresql://me:***@127.0.0.1" in str(exc.value)
    assert "s3cret" not in str(exc.value)


def test_silent_postgres_server_times_out():
    """A port that accepts connections but never answers: the connect timeout ends the wait."""
    from ajuste.search.storage import check_reachable

    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(4)
    port = srv.getsockname()[1]
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                pass

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    try:
        t0 = time.perf_counter()
        with pytest.raises(AjusteError, match="cannot reach storage .*timeout"):
            check_reachable(f"postgresql://me@127.0.0.1:{port}/db?connect_timeout=2")
        assert time.perf_counter() - t0 < 8
    finally:
        stop.set()
        t.join()
        for c in held:
            c.close()
        srv.close()


def test_bad_storage_urls(tmp_path):
    from ajuste.search.storage import check_reachable

    with pytest.raises(AjusteError, match="folder .* does not exist"):
        check_reachable(f"sqlite:///{tmp_path}/missing/study.db")
    with pytest.raises(AjusteError, match="unsupported database 'redis'"):
        check_reachable("redis://localhost/0")
    with pytest.raises(AjusteError, match="in-memory"):
        check_reachable("sqlite:///:memory:")


def _open_at_the_barrier(url, barrier, results):
    from ajuste.search.storage import open_storage

    barrier.wait()
    try:
        open_storage(url, heartbeat=False).get_all_studies()
        results.put("ok")
    except AjusteError as exc:
        results.put(str(exc))


def test_workers_starting_together_on_a_new_sqlite_file_all_open_it(tmp_path):
    """Four processes released at once create the schema of one new file: none may fail with the schema
    race that CI once hit (UNIQUE constraint failed: alembic_version.version_num)."""
    import multiprocessing as mp

    import optuna  # noqa: F401 - imported before fork so the children start at the same instant

    ctx = mp.get_context("fork")
    for round_ in range(3):
        url = f"sqlite:///{tmp_path}/race{round_}.db"
        barrier, results = ctx.Barrier(4), ctx.Queue()
        procs = [ctx.Process(target=_open_at_the_barrier, args=(url, barrier, results)) for _ in range(4)]
        for p in procs:
            p.start()
        for p in procs:
            p.join(60)
        assert sorted(results.get(timeout=5) for _ in procs) == ["ok"] * 4


def test_a_lost_schema_race_is_retried_other_errors_are_not(monkeypatch):
    import optuna
    import sqlalchemy.exc

    from ajuste.search.storage import open_storage

    real, calls = optuna.storages.RDBStorage, []

    def flaky(url, **kw):
        calls.append(url)
        if len(calls) == 1:
            raise sqlalchemy.exc.IntegrityError("INSERT INTO alembic_version", {},
                                                Exception("UNIQUE constraint failed: alembic_version.version_num"))
        return real(url, **kw)

    monkeypatch.setattr(optuna.storages, "RDBStorage", flaky)
    open_storage("sqlite://", heartbeat=False)
    assert len(calls) == 2

    def broken(url, **kw):
        calls.append(url)
        raise sqlalchemy.exc.OperationalError("SELECT", {}, Exception("file is not a database"))

    calls.clear()
    monkeypatch.setattr(optuna.storages, "RDBStorage", broken)
    with pytest.raises(AjusteError, match="cannot open storage .*not a database"):
        open_storage("sqlite://", heartbeat=False)
    assert len(calls) == 1


# -- the objective ------------------------------------------------------------------------------------------


class _FakeTrial:
    def __init__(self, prune_at=None):
        self.reports, self.prune_at = [], prune_at

    def report(self, value, step):
        self.reports.append((step, value))

    def should_prune(self):
        return self.prune_at is not None and len(self.reports) > self.prune_at


def _rec(epoch, val_loss, val_acc):
    from ajuste.training.loop import EpochRecord

    return EpochRecord(epoch, "all", 1.0, val_loss, val_acc, 1e-3, 0.1, False)


def test_objective_is_best_epoch_not_last_nor_max():
    from ajuste.search.objective import EpochReporter

    trial = _FakeTrial()
    rep = EpochReporter(trial, "val_accuracy")
    # epoch 1 has the lowest val loss (the weights fit keeps); epoch 2 has the highest accuracy and is last
    for rec in (_rec(0, 1.0, 0.5), _rec(1, 0.8, 0.6), _rec(2, 0.9, 0.9)):
        rep(rec, None)
    assert rep.value == 0.6
    assert trial.reports == [(0, 0.5), (1, 0.6), (2, 0.6)]
    loss = EpochReporter(_FakeTrial(), "val_loss")
    for rec in (_rec(0, 1.0, 0.5), _rec(1, 0.8, 0.6), _rec(2, 0.9, 0.9)):
        loss(rec, None)
    assert loss.value == 0.8


def test_pruner_decision_stops_fit_via_cancelfit():
    from ajuste.search.objective import EpochReporter
    from ajuste.training.loop import CancelFit

    rep = EpochReporter(_FakeTrial(prune_at=1), "val_accuracy")
    rep(_rec(0, 1.0, 0.5), None)
    with pytest.raises(CancelFit, match="pruned"):
        rep(_rec(1, 0.9, 0.6), None)
    assert rep.pruned_at == 1


# -- searches on a tiny model ---------------------------------------------------------------------------


@pytest.mark.parametrize("sampler", ["grid", "random", "tpe", "gp", "cmaes", "nsga2"])
def test_each_sampler_runs(tmp_path, tiny_cfg, digits, sampler):
    res = _tune(tmp_path, tiny_cfg.override({"train.epochs": 1}), digits, sampler=sampler, trials=3)
    study = _study(res)
    assert [t.state.name for t in study.trials] == ["COMPLETE"] * 3
    assert res.ran_here == 3 and res.best is not None and 0 <= res.best["value"] <= 1
    if sampler == "grid":  # no grid point twice
        assert len({tuple(t.params.values()) for t in study.trials}) == 3
    for t in study.trials:  # final value = last report = val accuracy of the kept epoch
        assert t.value == t.user_attrs["val_accuracy"] == t.intermediate_values[max(t.intermediate_values)]
        assert "test_accuracy" not in t.user_attrs  # the test split plays no part in selection


def test_a_weight_averaged_trial_reports_its_phase_then_the_average(tmp_path, tiny_cfg, digits):
    """Two-stage on images keeps the mean of the end-to-end phase's last epochs, validated after the last
    epoch: during that phase the pruner must see the phase's epochs, not the head phase's best frozen in
    place, and the last report must still be the trial's value."""
    cfg = tiny_cfg.override({"strategy.name": "two-stage", "strategy.head_epochs": 2, "train.epochs": 4,
                             "strategy.stage2_average": 0.5})
    res = _tune(tmp_path, cfg, digits, trials=2)
    for t in _study(res).trials:
        assert t.state.name == "COMPLETE"
        reports = [t.intermediate_values[s] for s in sorted(t.intermediate_values)]
        assert t.value == reports[-1] == t.user_attrs["val_accuracy"]
        head = max(reports[:2])  # (a random-init backbone: training it end to end beats its frozen features)
        assert any(r > head for r in reports[2:t.user_attrs["epochs"]]), reports
        n = t.user_attrs["epochs"]
        assert reports[:n] == sorted(reports[:n])  # the objective so far never drops while epochs run
        assert len(reports) in (n, n + 1)  # + the average's score when it differs from the last epoch's


@pytest.mark.parametrize("pruner", ["hyperband", "sha", "median"])
def test_each_pruner_runs(tmp_path, tiny_cfg, digits, pruner):
    res = _tune(tmp_path, tiny_cfg, digits, pruner=pruner, trials=4)
    study = _study(res)
    assert len(study.trials) == 4
    assert {t.state.name for t in study.trials} <= {"COMPLETE", "PRUNED"}
    for t in study.trials:
        assert len(t.intermediate_values) == t.user_attrs.get("epochs", len(t.intermediate_values))


def test_pruned_trial_stops_early_and_is_recorded(tmp_path, tiny_cfg, digits, monkeypatch):
    import optuna

    import ajuste.search.samplers as samplers

    class PruneAfterFirstEpoch(optuna.pruners.BasePruner):
        def prune(self, study, trial):
            return trial.number > 0 and len(trial.intermediate_values) >= 1

    monkeypatch.setattr(samplers, "make_pruner", lambda name, **kw: PruneAfterFirstEpoch())
    res = _tune(tmp_path, tiny_cfg.override({"train.epochs": 3}), digits, pruner="median", trials=3)
    study = _study(res)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "PRUNED", "PRUNED"]
    assert len(study.trials[0].intermediate_values) == 3
    assert [len(t.intermediate_values) for t in study.trials[1:]] == [1, 1]
    assert res.best["number"] == 0


def test_trial_models_are_released(tmp_path, tiny_cfg, digits, monkeypatch):
    """Each trial's model is gone once the trial ends (optuna #1178/#4934: memory growing over trials)."""
    import gc

    from ajuste.search import objective as objective_mod

    refs = []
    real_call = objective_mod.Objective.__call__

    def spy(self, trial):
        try:
            return real_call(self, trial)
        finally:
            refs.append(self.last_model_ref)

    monkeypatch.setattr(objective_mod.Objective, "__call__", spy)
    _tune(tmp_path, tiny_cfg.override({"train.epochs": 1}), digits, trials=3)
    gc.collect()
    assert len(refs) == 3 and all(r is not None and r() is None for r in refs)


def test_resume_continues_to_the_budget(tmp_path, tiny_cfg, digits):
    cfg = tiny_cfg.override({"train.epochs": 1})
    first = _tune(tmp_path, cfg, digits, trials=2)
    assert first.ran_here == 2
    again = _tune(tmp_path, cfg, digits, trials=3)
    assert again.ran_here == 1 and again.counts == {"complete": 3}
    done = _tune(tmp_path, cfg, digits, trials=3)
    assert done.ran_here == 0 and done.stopped_by == "budget reached"
    assert sorted(t.number for t in _study(done).trials) == [0, 1, 2]


def test_timeout_starts_no_new_trial(tmp_path, tiny_cfg, digits, monkeypatch):
    import itertools
    import time

    import ajuste.search.trial_loop as trial_loop

    class Clock:
        """The trial loop's `time`, with a monotonic clock that moves 1 s a read: two real readings in a row can be
        less than the 1 µs timeout apart, and then a trial started."""
        ticks = itertools.count()

        def monotonic(self) -> float:
            return float(next(self.ticks))

        def __getattr__(self, name):
            return getattr(time, name)

    monkeypatch.setattr(trial_loop, "time", Clock())
    res = _tune(tmp_path, tiny_cfg, digits, trials=5, timeout=1e-6)
    assert res.stopped_by == "timeout" and res.ran_here == 0 and res.best is None


def test_resume_refuses_a_different_space_or_config(tmp_path, tiny_cfg, digits):
    cfg = tiny_cfg.override({"train.epochs": 1})
    _tune(tmp_path, cfg, digits, trials=1)
    other = tmp_path / "other"
    other.mkdir()
    wider = _space_file(other, SMALL_SPACE.replace("high: 1.0e-2, log", "high: 1.0e-1, log"))
    with pytest.raises(AjusteError) as exc:
        _tune(tmp_path, cfg, digits, trials=2, space=wider)
    assert "refusing to resume study" in str(exc.value)
    assert "optim.lr: log-float[0.0001, 0.01] grid {0.001, 0.01} → log-float[0.0001, 0.1]" in str(exc.value)
    with pytest.raises(AjusteError, match=r"different fixed settings \(optim.momentum: 0.9 → 0.5\)"):
        _tune(tmp_path, cfg.override({"optim.momentum": 0.5}), digits, trials=2)
    with pytest.raises(AjusteError, match="optimises val_accuracy, not val_loss"):
        _tune(tmp_path, cfg, digits, trials=2, metric="val_loss")


def test_interrupted_trial_is_requeued_and_rerun(tmp_path, tiny_cfg, digits, monkeypatch):
    import ajuste.training.run as run_mod

    real = run_mod.train_run
    calls = {"n": 0}

    def flaky(**kw):
        calls["n"] += 1
        if calls["n"] == 2:
            raise KeyboardInterrupt
        return real(**kw)

    monkeypatch.setattr(run_mod, "train_run", flaky)
    cfg = tiny_cfg.override({"train.epochs": 1})
    with pytest.raises(KeyboardInterrupt):
        _tune(tmp_path, cfg, digits, trials=3)
    res = _tune(tmp_path, cfg, digits, trials=3)
    trials = _study(res).trials
    states = [t.state.name for t in trials]
    assert states.count("COMPLETE") == 3 and states.count("FAIL") == 1  # the interrupted one, not counted
    failed = next(t for t in trials if t.state.name == "FAIL")
    retry = next(t for t in trials if t.system_attrs.get("failed_trial") == failed.number)
    assert retry.state.name == "COMPLETE" and retry.params == failed.params
    assert res.ran_here == 2


def test_a_trial_orphaned_before_its_worker_was_recorded_is_failed_not_waited_for(tmp_path, tiny_cfg, digits):
    """A worker SIGKILLed between study.ask() and recording itself leaves a RUNNING trial with no worker and
    no heartbeat: Optuna's stale check never fails it, and the re-run used to wait for it forever."""
    cfg = tiny_cfg.override({"train.epochs": 1})
    first = _tune(tmp_path, cfg, digits, trials=1)
    study = _study(first)
    orphan = study.ask()  # what the killed worker left: RUNNING, nothing else
    res = _tune(tmp_path, cfg, digits, trials=3, timeout=300)
    assert res.stopped_by == "budget reached"
    trials = {t.number: t for t in _study(res).trials}
    assert trials[orphan.number].state.name == "FAIL" and trials[orphan.number].user_attrs["worker_died"]
    assert [t.state.name for t in trials.values()].count("COMPLETE") == 3
    assert res.ran_here == 2


def test_failing_trials_stop_the_study_with_the_error(tmp_path, tiny_cfg, digits, monkeypatch):
    import ajuste.training.run as run_mod

    def broken(**kw):
        raise RuntimeError("boom in the data pipeline")

    monkeypatch.setattr(run_mod, "train_run", broken)
    with pytest.raises(AjusteError, match="3 trials in a row failed; last: RuntimeError: boom in the data pipeline"):
        _tune(tmp_path, tiny_cfg, digits, trials=10)


def test_diverged_trial_is_pruned_not_failed(tmp_path, tiny_cfg, digits, monkeypatch):
    import ajuste.training.run as run_mod
    from ajuste.errors import TrainingDiverged

    def diverge(**kw):
        raise TrainingDiverged("loss became NaN/inf at epoch 1 (LR 1e+00)")

    monkeypatch.setattr(run_mod, "train_run", diverge)
    res = _tune(tmp_path, tiny_cfg, digits, trials=2)
    trials = _study(res).trials
    assert [t.state.name for t in trials] == ["PRUNED", "PRUNED"]
    assert "NaN" in trials[0].user_attrs["diverged"]


# -- the command line -------------------------------------------------------------------------------------


def _cli(capsys, *args):
    from ajuste.cli.main import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), err
    return lines[0]


def test_cli_tune_checks_the_storage_before_reading_the_data(tmp_path, capsys, monkeypatch):
    """`model.name: auto` reads the data to pick a backbone (the study is named after it): an unreachable
    --storage must fail first, in one line, without that wait."""
    import ajuste.training.run as run

    def no_read(*args, **kw):
        raise AssertionError("the data was read before the storage was checked")

    monkeypatch.setattr(run, "resolve_model_early", no_read)
    rc, _, err = _cli(capsys, "tune", "digits", "--storage", f"postgresql://me@127.0.0.1:{_free_port()}/db",
                      "--out", tmp_path / "t")
    assert rc != 0 and "cannot reach storage postgresql://me@127.0.0.1" in _one_error_line(err)
    assert not (tmp_path / "t").exists()


def test_cli_tune_outputs_and_retrain(tmp_path, capsys):
    out = tmp_path / "t"
    space = _space_file(tmp_path, SMALL_SPACE)
    rc, stdout, err = _cli(capsys, "tune", "digits", *TINY, *_tiny_sets(), "--strategy", "linear-probe",
                           "--epochs", "2", "--trials", "2", "--sampler", "tpe", "--space", space, "--out", out)
    assert rc == 0, err
    assert "best trial #" in stdout and f"ajuste train --from-study {out}" in stdout
    best = json.loads((out / "best.json").read_text())
    assert best["metric"] == "val_accuracy" and set(best["params"]) == {"optim.lr", "model.dropout"}
    assert best["config"]["optim"]["lr"] == best["params"]["optim.lr"]
    rows = (out / "trials.csv").read_text().splitlines()
    assert len(rows) == 3 and rows[0].startswith("number,state,value,optim.lr,model.dropout")
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") >= 2 and "optuna-dashboard" in html
    assert (out / "plots" / "history.png").stat().st_size > 1000
    tune_info = json.loads((out / "tune.json").read_text())
    assert tune_info["storage"].endswith("study.db") and tune_info["sampler"] == "tpe"
    assert tune_info["pruner"] == "sha"  # --pruner auto, the default: successive halving

    rc, stdout, err = _cli(capsys, "train", "--from-study", out, "--epochs", "1", "--out", tmp_path / "best", "-q")
    assert rc == 0, err
    import yaml

    cfg = yaml.safe_load((tmp_path / "best" / "config.yaml").read_text())
    assert cfg["optim"]["lr"] == pytest.approx(best["params"]["optim.lr"])
    assert cfg["model"]["dropout"] == pytest.approx(best["params"]["model.dropout"])
    assert cfg["train"]["epochs"] == 1 and cfg["strategy"]["name"] == "linear-probe"
    assert (tmp_path / "best" / "summary.json").is_file()

    # resuming with another space: one line, with the diff
    wider = _space_file(tmp_path / "t", "optim.warmup: {type: float, low: 0.0, high: 0.3}\n")
    rc, _, err = _cli(capsys, "tune", "digits", *TINY, *_tiny_sets(), "--strategy", "linear-probe", "--epochs", "2",
                      "--trials", "3", "--space", wider, "--out", out)
    line = _one_error_line(err)
    assert rc == 2 and "refusing to resume study" in line and "+optim.warmup float[0, 0.3]" in line


@pytest.mark.parametrize("args, message", [
    (["--sampler", "bayes"], "unknown sampler 'bayes': valid samplers are tpe, random, grid, gp, cmaes, nsga2"),
    (["--pruner", "asha"], "unknown pruner 'asha': valid pruners are auto, sha, hyperband, median, none"),
    (["--sampler", "grid"], "--sampler grid needs a finite grid, but optim.lr"),
    (["--space", "EMPTY"], "the search space is empty"),
    (["--space", "INVERTED"], "low (0.1) must be < high (0.01)"),
    (["--storage", "postgresql://me:pw@127.0.0.1:PORT/db"], "cannot reach storage postgresql://me:***@127.0.0.1"),
    (["--timeout", "soon"], "--timeout 'soon'"),
    (["--metric", "f1"], "unknown --metric 'f1'"),
])
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    spaces = {"EMPTY": "extends: none\n", "INVERTED": "optim.lr: {type: float, low: 0.1, high: 0.01}\n"}
    args = [_space_file(tmp_path, spaces[a]) if a in spaces else a.replace("PORT", str(_free_port()))
            for a in args]
    t0 = time.perf_counter()
    rc, _, err = _cli(capsys, "tune", "digits", *TINY, *_tiny_sets(), "--strategy", "full", "--out",
                      tmp_path / "o", *args)
    assert rc == 2
    assert message in _one_error_line(err)
    assert time.perf_counter() - t0 < 30


@pytest.mark.parametrize("holds, message", [
    ({"config.yaml": "model: {}\n", "summary.json": "{}"}, "holds a training run"),
    ({"study.json": "{}", "report.html": "<html></html>"}, "holds a study of `ajuste compare`"),
    ({"notes.txt": "mine"}, "is not an `ajuste tune` directory"),
])
def test_out_that_holds_something_else_is_refused_untouched(tmp_path, capsys, holds, message):
    out = tmp_path / "o"
    out.mkdir()
    for name, text in holds.items():
        (out / name).write_text(text)
    rc, _, err = _cli(capsys, "tune", "digits", *TINY, *_tiny_sets(), "--strategy", "full", "--trials", "1",
                      "--out", out)
    assert rc == 2 and message in _one_error_line(err)
    assert sorted(p.name for p in out.iterdir()) == sorted(holds)
    assert all((out / name).read_text() == text for name, text in holds.items())


def test_text_model_default_space(tmp_path, tiny_bert_dir):
    """A text study: the modality's default space (batch sizes 8/16/32, LR around the text default)."""
    from ajuste.search.runner import tune

    rows = ["text,label"] + [f"\"{w} message number {i}\",{lab}" for i in range(40)
                             for w, lab in (("free prize call now", "spam"), ("see you at lunch", "ham"))]
    (tmp_path / "sms.csv").write_text("\n".join(rows) + "\n")
    cfg = RunConfig().override({"data.source": str(tmp_path / "sms.csv"), "model.name": str(tiny_bert_dir),
                                "strategy.name": "full", "train.epochs": 1, "train.threads": 1,
                                "data.max_length": 16, **_no_min_steps()})
    res = tune(cfg=cfg, out=tmp_path / "t", trials=2, sampler="random", pruner="none", report=False)
    info = json.loads((tmp_path / "t" / "tune.json").read_text())
    assert info["space"]["data.batch_size"]["choices"] == [8, 16, 32]
    assert info["space"]["optim.lr"]["low"] == pytest.approx(5e-6)
    assert res.counts == {"complete": 2} and 0 <= res.best["value"] <= 1


def test_every_registered_strategy_has_a_valid_default_space():
    """Including strategies added later (PEFT) through their search_space() hook."""
    from ajuste.strategies.base import list_strategies

    for s in list_strategies():
        for modality in ("image", "text"):
            space = default_space(s, modality=modality, default_lr=1e-4, n_body_groups=6)
            cfg = RunConfig().override({"strategy.name": s.name})
            if s.name == "classical":  # it tunes its own regularisation: tune refuses it (tests/test_classical.py)
                with pytest.raises(ConfigError, match="nothing to search"):
                    space.check(cfg, n_body_groups=6)
                continue
            space.check(cfg, n_body_groups=6)
            assert "optim.lr" in space


def test_jobs_0_runs_one_worker_per_gpu_sharing_the_study(tmp_path, monkeypatch, capsys):
    """`tune -j 0` on a machine with (here: said to have) 2 GPUs: two worker processes, one GPU each, share the
    study's budget; their trial lines are labelled with the GPU; the parent writes the outputs once."""
    import optuna

    from ajuste.cli.main import main
    from ajuste.study import workers

    monkeypatch.setattr(workers, "gpu_count", lambda: 2)  # the workers themselves, without CUDA, use the CPU
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    out = tmp_path / "search"
    rc = main(["tune", "digits", *TINY, *_tiny_sets(), "--strategy", "full", "--epochs", "1", "--trials", "4",
               "--pruner", "none", "-j", "0", "--out", str(out)])
    text = capsys.readouterr().out
    assert rc in (0, None), text
    assert "2 workers share the study: gpu 0, gpu 1" in text
    ran = {label: text.count(f"[{label}] trial") for label in ("gpu 0", "gpu 1")}
    assert sum(ran.values()) == 4 and all(ran.values()), text  # both GPUs ran trials, four in all
    study = optuna.load_study(study_name=json.loads((out / "tune.json").read_text())["study"],
                              storage=f"sqlite:///{out / 'study.db'}")
    assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
    assert len({t.user_attrs["worker"] for t in study.trials}) == 2
    assert json.loads((out / "best.json").read_text())["number"] == study.best_trial.number
    assert text.count("best trial #") == 1  # one summary, the parent's
