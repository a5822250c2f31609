from __future__ import annotations

import pytest

from ajuste.config import RunConfig, describe_fields, load_config
from ajuste.errors import ConfigError


def test_dotted_overrides_are_typed():
    cfg = RunConfig().override(["optim.lr=3e-4", "data.batch_size=16", "train.cache_features=false",
                                "model.name=minilm-l6"])
    assert cfg.optim.lr == 3e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.data.batch_size == 16
    assert cfg.train.cache_features is False
    assert cfg.model.name == "minilm-l6"


@pytest.mark.parametrize("assignment,needle", [
    ("optim.lrr=1", "optim.lrr"),
    ("optimm.lr=1", "optimm"),
    ("data.batch_size=abc", "data.batch_size"),
    ("optim.lr=-1", "optim.lr"),
    ("data.augment=heavy", "data.augment"),
    ("optim.name=adam", "optim.name"),
    ("no_equals_sign", "KEY=VALUE"),
])
def test_bad_override_names_the_field(assignment, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        RunConfig().override([assignment])


def test_unknown_field_suggests_close_match():
    with pytest.raises(ConfigError, match="did you mean lr"):
        RunConfig().override(["optim.lrr=1"])


def test_yaml_file_then_overrides(tmp_path):
    p = tmp_path / "run.yaml"
    p.write_text("optim:\n  lr: 0.01\nstrategy:\n  name: full\n")
    cfg = load_config(p, ["optim.lr=0.02"])
    assert cfg.strategy.name == "full" and cfg.optim.lr == 0.02


def test_yaml_errors_say_where(tmp_path):
    p = tmp_path / "bad.yaml"
    p.write_text("optim:\n  lr: [1,\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(p)
    p.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match="train.epocs"):
        load_config(p)


def test_round_trip_and_help_metadata():
    cfg = RunConfig().override(["optim.lr=1e-3"])
    assert RunConfig.from_dict(cfg.to_dict()) == cfg
    fields = describe_fields()
    assert all(help_text for _, help_text, _ in fields)
    assert "optim.lr" in {name for name, _, _ in fields}
