"""A strategy is one file: the strategy below is defined and registered here and nowhere else, and `train`,
`tune` and `compare` run it, with its option in --help and docs/config.md. A second one, in a package that
declares the ``ajuste.strategies`` entry point, is found without being imported by anyone."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from dataclasses import dataclass, field
from typing import Any

import pytest

from ajuste.config import RunConfig
from ajuste.errors import ConfigError
from ajuste.io import read_jsonl
from ajuste.strategies.base import Phase, Strategy, register, unregister

NAME = "head-then-top"


@dataclass
class HeadThenTopOptions:
    top_epochs: int = field(default=1, metadata={"help": "epochs of the phase that trains the top layer group "
                                                         "after the head"})

    def __post_init__(self) -> None:
        if self.top_epochs < 1:
            raise ConfigError(f"strategy.top_epochs={self.top_epochs} must be ≥ 1")


class HeadThenTop(Strategy):
    name = NAME
    summary = "the head alone, then the top layer group with it"
    options = HeadThenTopOptions
    cost_rank = 0.3
    epoch_knobs = ("strategy.top_epochs",)

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o, top = cfg.optim, self.option_values(cfg).top_epochs
        head_lr = o.lr * o.head_lr_mult
        return [Phase("head", train_groups=[-1], epochs=cfg.train.epochs, lr=o.lr, head_lr=head_lr,
                      patience=cfg.train.patience),
                Phase("top", train_groups=[n_groups - 2, -1], epochs=top, lr=o.lr, head_lr=head_lr, patience=None)]

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"strategy.top_epochs": {"type": "int", "low": 1, "high": 2}}


@pytest.fixture
def plugin():
    register(HeadThenTop)
    yield HeadThenTop
    unregister(NAME)


TINY = ["--model", "timm/test_efficientnet", "--set", "model.pretrained=false", "--set", "data.image_size=32",
        "--set", "train.threads=1", "--set", "train.min_steps=0", "--set", "data.batch_size=64"]


def _cli(capsys, *args):
    from ajuste.cli.main import main

    rc = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_runs_its_phases_with_its_option(plugin, tmp_path, capsys):
    rc, _, err = _cli(capsys, "train", "digits", *TINY, "--strategy", NAME, "--epochs", "1", "--fraction", "0.2",
                      "--set", "strategy.top_epochs=2", "--quiet", "--out", tmp_path / "run")
    assert rc == 0, err
    phases = [r["phase"] for r in read_jsonl(tmp_path / "run" / "metrics.jsonl") if "phase" in r]
    assert phases.count("head") == 1 and phases.count("top") == 2
    summary = json.loads((tmp_path / "run" / "summary.json").read_text())
    assert summary["status"] == "complete"


def test_a_bad_option_value_is_one_line(plugin, tmp_path, capsys):
    rc, _, err = _cli(capsys, "train", "digits", *TINY, "--strategy", NAME, "--set", "strategy.top_epochs=0",
                      "--out", tmp_path / "run")
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert rc != 0 and len(lines) == 1 and "strategy.top_epochs=0 must be ≥ 1" in lines[0], err
    assert not (tmp_path / "run").exists()


def test_tune_searches_its_own_space(plugin, tmp_path, capsys):
    out = tmp_path / "t"
    rc, stdout, err = _cli(capsys, "tune", "digits", *TINY, "--strategy", NAME, "--epochs", "1", "--fraction",
                           "0.2", "--trials", "2", "--sampler", "random", "--pruner", "none", "--out", out)
    assert rc == 0, err
    best = json.loads((out / "best.json").read_text())
    assert best["params"]["strategy.top_epochs"] in (1, 2)
    assert best["config"]["strategy"]["top_epochs"] == best["params"]["strategy.top_epochs"]


def test_compare_runs_it_beside_a_built_in_strategy(plugin, tmp_path, capsys):
    out = tmp_path / "study"
    rc, _, err = _cli(capsys, "compare", "digits", *TINY, "--strategies", f"{NAME},linear-probe", "--fractions",
                      "0.2", "--set", "train.epochs=1", "-j", "1", "--no-similarity", "--quiet", "--out", out)
    assert rc == 0, err
    cells = {r["cell"]: r for r in read_jsonl(out / "results.jsonl")}
    assert f"{NAME}-f0.2-s0" in cells and "linear-probe-f0.2-s0" in cells
    assert 0.0 <= cells[f"{NAME}-f0.2-s0"]["test_accuracy"] <= 1.0


def test_its_option_is_in_help_and_the_config_reference(plugin, capsys):
    from ajuste.docs.config_reference import render

    for command in ("train", "tune", "compare"):
        rc, stdout, _ = _cli(capsys, command, "--help")
        assert rc == 0 and "strategy.top_epochs" in stdout and "after the head" in stdout.replace("\n", " ")
    page = render()
    assert f"| `strategy.top_epochs` | 1 | {NAME}: epochs of the phase" in page
    assert f"| {NAME} |" in page
    rc, stdout, _ = _cli(capsys, "strategies")
    assert NAME in stdout


def test_unregistered_it_is_gone(plugin):
    unregister(NAME)
    with pytest.raises(ConfigError, match="unknown config field 'strategy.top_epochs'"):
        RunConfig().override({"strategy.top_epochs": 2})
    register(HeadThenTop)
    assert RunConfig().override({"strategy.top_epochs": 2}).strategy.top_epochs == 2


def test_two_strategies_cannot_declare_the_same_option(plugin):
    class Clash(HeadThenTop):
        name = "clash"

    with pytest.raises(TypeError, match="already declared by head-then-top"):
        register(Clash)
    from ajuste.strategies.base import STRATEGIES

    assert "clash" not in STRATEGIES


PLUGIN_MODULE = '''
from dataclasses import dataclass, field

from ajuste.strategies.base import Phase, Strategy, register


@dataclass
class Options:
    head_share: float = field(default=0.5, metadata={"help": "share of the epochs spent on the head"})


@register
class HeadShare(Strategy):
    name = "head-share"
    summary = "an installed package's strategy"
    options = Options

    def phases(self, cfg, n_groups):
        o = cfg.optim
        return [Phase("head", train_groups=[-1], epochs=cfg.train.epochs, lr=o.lr, head_lr=o.lr * o.head_lr_mult,
                      patience=cfg.train.patience)]
'''


def test_an_installed_package_adds_a_strategy_through_its_entry_point(tmp_path):
    (tmp_path / "ajuste_head_share.py").write_text(PLUGIN_MODULE, encoding="utf-8")
    dist = tmp_path / "ajuste_head_share-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: ajuste-head-share\nVersion: 0.1\n", encoding="utf-8")
    (dist / "entry_points.txt").write_text("[ajuste.strategies]\nhead-share = ajuste_head_share\n",
                                           encoding="utf-8")
    code = ("from ajuste.config import RunConfig\n"
            "from ajuste.strategies.base import get_strategy\n"
            "cfg = RunConfig().override({'strategy.name': 'head-share', 'strategy.head_share': 0.25})\n"
            "cfg = cfg.override({'optim.lr': 1e-3, 'optim.head_lr_mult': 10.0, 'train.epochs': 2})\n"
            "phases = get_strategy('head-share').phases(cfg, 4)\n"
            "print(get_strategy('head-share').summary, cfg.strategy.head_share, phases[0].epochs)\n")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "an installed package's strategy 0.25 2"
