"""Two `ajuste tune` worker processes share one study on a real PostgreSQL server (tests/pg_fixture.py)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from pg_fixture import postgres_url  # noqa: F401 - session fixture

from ajuste.config import describe_fields

SPACE = """
extends: none
params:
  optim.lr: {type: float, low: 1.0e-4, high: 1.0e-2, log: true}
  model.dropout: {type: float, low: 0.0, high: 0.5}
"""


def _worker_cmd(url: str, out: Path, space: Path, trials: int) -> list[str]:
    sets = ["model.pretrained=false", "data.image_size=32", "train.threads=1"]
    if "train.min_steps" in {n for n, _, _ in describe_fields()}:
        sets.append("train.min_steps=0")
    return [sys.executable, "-m", "ajuste", "tune", "digits", "--model", "timm/test_efficientnet",
            "--strategy", "full", "--fraction", "0.2", "--epochs", "2",
            *[a for s in sets for a in ("--set", s)],
            "--trials", str(trials), "--sampler", "tpe", "--pruner", "median", "--space", str(space),
            "--storage", url, "--study-name", "two-workers", "--out", str(out)]


def test_two_workers_share_one_study(postgres_url, tmp_path):  # noqa: F811
    import optuna

    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    total = 8  # the study's budget, shared by the workers
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    procs = [subprocess.Popen(_worker_cmd(postgres_url, tmp_path / f"w{i}", space, total), stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env=env) for i in range(2)]
    outputs = []
    for p in procs:
        try:
            out, _ = p.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            for q in procs:
                q.kill()
            raise
        outputs.append(out)
    print("\n".join(outputs))
    for p, out in zip(procs, outputs):
        assert p.returncode == 0, out

    from ajuste.search.storage import open_storage

    study = optuna.load_study(study_name="two-workers", storage=open_storage(postgres_url, heartbeat=False))
    trials = study.trials
    numbers = [t.number for t in trials]
    # No lost and no duplicated trials: exactly the budget, numbers 0..N-1 once each, all finished.
    assert len(trials) == total, [(t.number, t.state.name) for t in trials]
    assert sorted(numbers) == list(range(total))
    assert {t.state.name for t in trials} <= {"COMPLETE", "PRUNED"}
    workers = {t.user_attrs["worker"] for t in trials}
    assert len(workers) == 2, f"one worker ran every trial: {workers}\n{outputs}"
    # No two trials evaluated the same point (TPE with constant liar + per-worker seeds).
    assert len({tuple(sorted(t.params.items())) for t in trials}) == total
    best = study.best_trial
    assert best.state.name == "COMPLETE"
    for i in range(2):
        rec = json.loads((tmp_path / f"w{i}" / "best.json").read_text())
        assert rec["number"] == best.number and rec["value"] == best.value
        assert rec["trials"] == {s: sum(t.state.name.lower() == s for t in trials) for s in rec["trials"]}

    # The best trial can be retrained straight from the shared storage.
    from ajuste.search.runner import retrain_config

    cfg, info = retrain_config(f"{postgres_url}#two-workers")
    assert info["number"] == best.number
    assert cfg.optim.lr == pytest.approx(best.params["optim.lr"])


def test_resume_against_postgres_refuses_other_space(postgres_url, tmp_path):  # noqa: F811
    """Another worker with a different space is refused before any trial, with the difference."""
    import optuna

    from ajuste.config import RunConfig
    from ajuste.errors import AjusteError
    from ajuste.search.runner import tune
    from ajuste.search.storage import open_storage

    if "two-workers" not in optuna.get_all_study_names(open_storage(postgres_url, heartbeat=False)):
        pytest.skip("needs the study of test_two_workers_share_one_study")  # pragma: no cover - run alone
    space = tmp_path / "space.yaml"
    space.write_text(SPACE.replace("high: 0.5", "high: 0.9"))
    cfg = RunConfig().override({"data.source": "digits", "model.name": "timm/test_efficientnet",
                                "model.pretrained": False, "data.image_size": 32, "data.fraction": 0.2,
                                "strategy.name": "full", "train.epochs": 2})
    with pytest.raises(AjusteError) as exc:
        tune(cfg=cfg, out=tmp_path / "w", trials=9, space=space, storage=postgres_url, study_name="two-workers")
    assert "refusing to resume study 'two-workers'" in str(exc.value)
    assert "model.dropout: float[0, 0.5] → float[0, 0.9]" in str(exc.value)
    study = optuna.load_study(study_name="two-workers", storage=open_storage(postgres_url, heartbeat=False))
    assert len(study.trials) == 8  # untouched
