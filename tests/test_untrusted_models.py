"""Untrusted model folders (issue 33, item 8): nothing that comes with a model runs on load.

Pickled weights (torch.load unpickles; a pickle can call any function) and custom modelling code
(``auto_map`` → trust_remote_code) are refused in one line before transformers opens the folder;
safetensors folders of architectures that ship with transformers load and train as before. Tiny
2-layer BERTs from the ``tiny_bert_dir`` fixture, a fake hub cache for hub ids; no network.
"""

from __future__ import annotations

import csv
import json
import runpy
import shutil
from pathlib import Path

import pytest
import torch

from ajuste.backbones.factory import _clip, create_backbone
from ajuste.errors import AjusteError
from test_cli import one_error_line, run_cli

MARKER_CODE = """from pathlib import Path
Path({marker!r}).write_text("custom code ran")


class EvilConfig:
    pass


class EvilModel:
    pass
"""


# --------------------------------------------------------------------------------------------- helpers


def _copy_without_weights(src: Path, dst: Path) -> Path:
    """config + tokenizer files of ``src`` (no model.safetensors)."""
    dst.mkdir(parents=True)
    for f in src.iterdir():
        if f.is_file() and not f.name.endswith(".safetensors"):
            shutil.copy2(f, dst / f.name)
    return dst


def _random_state(folder: Path) -> dict[str, torch.Tensor]:
    from transformers import BertConfig, BertModel

    torch.manual_seed(1)
    return BertModel(BertConfig.from_pretrained(folder)).state_dict()


def _edit_json(path: Path, **changes) -> None:
    data = json.loads(path.read_text())
    data.update(changes)
    path.write_text(json.dumps(data))


def _single_line(message: str) -> str:
    assert message and "\n" not in message and "\r" not in message, repr(message)
    return message


_cli, _one_error_line = run_cli, one_error_line  # the CLI helpers every CLI test shares


# -------------------------------------------------------------------------------------------- fixtures


@pytest.fixture()
def no_unpickling(monkeypatch):
    """Any torch.load (the unpickler transformers uses for .bin/.pt weights) fails the test."""
    calls = []

    def refuse(*args, **kwargs):
        calls.append(args)
        raise AssertionError(f"torch.load was called on {args[:1]}: a pickle was opened")

    monkeypatch.setattr(torch, "load", refuse)
    return calls


@pytest.fixture()
def no_remote_code(monkeypatch):
    """transformers' importer of a model's own Python files fails the test."""
    import transformers.dynamic_module_utils as dyn

    def refuse(*args, **kwargs):
        raise AssertionError("transformers was asked to import a model's custom code")

    monkeypatch.setattr(dyn, "get_class_from_dynamic_module", refuse)


@pytest.fixture()
def pickle_only_dir(tiny_bert_dir, tmp_path) -> Path:
    """The tiny BERT with its weights as pytorch_model.bin only (what older checkpoints ship)."""
    folder = _copy_without_weights(tiny_bert_dir, tmp_path / "pickle-only")
    torch.save(_random_state(folder), folder / "pytorch_model.bin")
    return folder


@pytest.fixture()
def custom_code_dir(tiny_bert_dir, tmp_path) -> tuple[Path, Path]:
    """The tiny BERT (safetensors weights) whose config.json asks for modeling_evil.py; importing that
    file would create the marker file. Returns (folder, marker)."""
    folder = tmp_path / "custom-code"
    shutil.copytree(tiny_bert_dir, folder)
    marker = tmp_path / "custom-code-ran"
    (folder / "modeling_evil.py").write_text(MARKER_CODE.format(marker=str(marker)))
    _edit_json(folder / "config.json", auto_map={"AutoConfig": "modeling_evil.EvilConfig",
                                                 "AutoModel": "modeling_evil.EvilModel"})
    return folder, marker


@pytest.fixture()
def text_csv(tmp_path) -> Path:
    path = tmp_path / "reviews.csv"
    with open(path, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["text", "label"])
        for i in range(12):
            w.writerow([f"great film, loved it {i}", "pos"])
            w.writerow([f"awful film, hated it {i}", "neg"])
    return path


@pytest.fixture()
def hub_cache(tmp_path, monkeypatch):
    """A fake, offline Hugging Face hub cache: ``add(repo_id, src_folder)`` caches a folder as that repo."""
    import huggingface_hub.constants as hub_constants

    cache = tmp_path / "hub-cache"
    monkeypatch.setattr(hub_constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)

    def add(repo_id: str, src: Path) -> Path:
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        sha = "0123456789abcdef0123456789abcdef01234567"
        (repo / "refs").mkdir(parents=True)
        (repo / "refs" / "main").write_text(sha)
        snapshot = repo / "snapshots" / sha
        shutil.copytree(src, snapshot)
        return snapshot

    return add


# ------------------------------------------------------------------------------------- pickled weights


@pytest.mark.parametrize("weights_file", ["pytorch_model.bin", "model.pt", "last.ckpt"])
def test_pickle_only_folder_is_refused_without_unpickling(tiny_bert_dir, tmp_path, no_unpickling, weights_file):
    folder = _copy_without_weights(tiny_bert_dir, tmp_path / "pickled")
    # torch.save before the sentinel would matter; the sentinel only watches loading.
    torch.save(_random_state(folder), folder / weights_file)
    with pytest.raises(AjusteError) as info:
        create_backbone(str(folder), num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert str(folder) in msg and weights_file in msg
    assert "arbitrary code" in msg and "safe_serialization=True" in msg and "model.safetensors" in msg
    assert no_unpickling == []


def test_the_unpickling_sentinel_does_fire(pickle_only_dir, no_unpickling):
    """Control for the test above: transformers itself, given the pickle, would call torch.load."""
    from transformers import AutoModel

    with pytest.raises(AssertionError, match="torch.load was called"):
        AutoModel.from_pretrained(pickle_only_dir, use_safetensors=False)
    assert no_unpickling


def test_pickle_only_folder_still_builds_from_scratch_without_opening_the_pickle(pickle_only_dir, no_unpickling):
    """pretrained=False reads no weights at all: the architecture comes from config.json, random init."""
    bb = create_backbone(str(pickle_only_dir), num_classes=2, pretrained=False)
    assert bb.modality == "text" and no_unpickling == []


def test_a_config_pointing_transformers_at_a_pickle_is_refused(tiny_bert_dir, tmp_path, no_unpickling):
    """config.json's transformers_weights makes transformers load the named file even with
    use_safetensors=True; "adapter_model.bin" is the one pickle name it accepts there."""
    folder = tmp_path / "pointer"
    shutil.copytree(tiny_bert_dir, folder)
    torch.save(_random_state(folder), folder / "adapter_model.bin")
    _edit_json(folder / "config.json", transformers_weights="adapter_model.bin")
    with pytest.raises(AjusteError, match="transformers_weights names 'adapter_model.bin', a pickle file") as info:
        create_backbone(str(folder), num_classes=2, pretrained=True)
    _single_line(str(info.value))
    assert no_unpickling == []


def test_folder_without_weights_says_so_when_pretrained_weights_are_wanted(tiny_bert_dir, tmp_path):
    folder = _copy_without_weights(tiny_bert_dir, tmp_path / "no-weights")
    with pytest.raises(AjusteError) as info:
        create_backbone(str(folder), num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert f"model folder {folder} has no model.safetensors" in msg and "model.pretrained=false" in msg
    assert "pickle" not in msg


# ----------------------------------------------------------------------------------------- custom code


def test_auto_map_in_config_is_refused_and_nothing_is_imported(custom_code_dir, no_remote_code):
    folder, marker = custom_code_dir
    with pytest.raises(AjusteError) as info:
        create_backbone(str(folder), num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert f"model folder {folder}: config.json asks for the model's own Python code" in msg
    assert "modeling_evil.EvilConfig" in msg and "ships with transformers" in msg
    assert not marker.exists()
    runpy.run_path(str(folder / "modeling_evil.py"))  # control: importing the file does create the marker
    assert marker.exists()


def test_auto_map_with_a_custom_model_type_is_refused_too(custom_code_dir, no_remote_code):
    """An unknown model_type is the case where transformers would need the custom code outright."""
    folder, marker = custom_code_dir
    _edit_json(folder / "config.json", model_type="evil")
    with pytest.raises(AjusteError, match="asks for the model's own Python code"):
        create_backbone(str(folder), num_classes=2, pretrained=False)
    assert not marker.exists()


def test_auto_map_in_tokenizer_config_is_refused(tiny_bert_dir, tmp_path, no_remote_code):
    folder = tmp_path / "custom-tokenizer"
    shutil.copytree(tiny_bert_dir, folder)
    _edit_json(folder / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    with pytest.raises(AjusteError) as info:
        create_backbone(str(folder), num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert "tokenizer_config.json asks for the model's own Python code (auto_map: tokenization_evil.EvilTokenizer)" \
        in msg


def test_unreadable_config_is_one_line(tiny_bert_dir, tmp_path):
    folder = tmp_path / "broken"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "config.json").write_text("{not json")
    with pytest.raises(AjusteError, match="config.json .*valid JSON"):
        create_backbone(str(folder), num_classes=2, pretrained=True)


# ------------------------------------------------------------------------------------ safe folders work


def test_safetensors_folder_loads_its_weights_and_trains(pickle_only_dir, tmp_path):
    """The advice of the refusal, followed: the pickle folder converted in a trusted place loads with the
    very weights the pickle held, and a training step reaches the encoder."""
    from transformers import AutoModel

    with pytest.raises(AjusteError):
        create_backbone(str(pickle_only_dir), num_classes=2, pretrained=True)
    AutoModel.from_pretrained(pickle_only_dir, use_safetensors=False).save_pretrained(
        pickle_only_dir, safe_serialization=True)
    assert (pickle_only_dir / "model.safetensors").is_file()

    bb = create_backbone(str(pickle_only_dir), num_classes=2, pretrained=True)
    want = torch.load(pickle_only_dir / "pytorch_model.bin", weights_only=True)
    got = bb.encoder.state_dict()
    name = "encoder.layer.1.attention.self.query.weight"
    assert torch.equal(got[name], want[name])  # pretrained weights, not a fresh random init

    enc = bb.tokenizer(["a fine day", "an awful film"], padding=True, return_tensors="pt")
    loss = torch.nn.functional.cross_entropy(bb(dict(enc)), torch.tensor([0, 1]))
    loss.backward()
    assert bb.encoder.get_parameter(name).grad is not None


def test_train_then_evaluate_a_safe_folder_through_the_cli(tiny_bert_dir, text_csv, tmp_path):
    """A clean folder trains, and the run's hf/ folder (written by ajuste) passes the same checks on load."""
    out = tmp_path / "run"
    rc, stdout, stderr = _cli(["train", text_csv, "--model", tiny_bert_dir, "-s", "linear-probe",
                               "--set", "train.epochs=1", "-q", "--out", out])
    assert rc == 0, stdout + stderr
    assert (out / "hf" / "config.json").is_file()
    rc, stdout, stderr = _cli(["evaluate", out, "--json"])
    assert rc == 0, stdout + stderr
    assert json.loads(stdout)["n"] > 0


# ------------------------------------------------------------------------------------------------- CLI


def test_cli_refuses_a_pickle_only_folder_in_one_line(pickle_only_dir, text_csv, tmp_path, no_unpickling):
    rc, _, stderr = _cli(["train", text_csv, "--model", pickle_only_dir, "-s", "linear-probe",
                          "--set", "train.epochs=1", "-q", "--out", tmp_path / "run"])
    line = _one_error_line(stderr)
    assert rc == 2
    assert "pytorch_model.bin" in line and "arbitrary code" in line and "safe_serialization=True" in line
    assert no_unpickling == []


def test_cli_refuses_custom_code_in_one_line(custom_code_dir, text_csv, tmp_path, no_remote_code):
    folder, marker = custom_code_dir
    rc, _, stderr = _cli(["train", text_csv, "--model", folder, "-s", "linear-probe",
                          "--set", "train.epochs=1", "-q", "--out", tmp_path / "run"])
    line = _one_error_line(stderr)
    assert rc == 2
    assert "own Python code" in line and "ships with transformers" in line
    assert not marker.exists()


# ------------------------------------------------------------------------------------------------ hub ids


def test_hub_model_with_only_pickled_weights_is_one_clear_line(pickle_only_dir, hub_cache, no_unpickling):
    hub_cache("acme/pickled", pickle_only_dir)
    with pytest.raises(AjusteError) as info:
        create_backbone("hf:acme/pickled", num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert "model 'hf:acme/pickled' has no model.safetensors on the hub" in msg and "arbitrary code" in msg
    assert "need internet" not in msg
    assert no_unpickling == []


def test_hub_model_with_safetensors_loads(tiny_bert_dir, hub_cache):
    hub_cache("acme/safe", tiny_bert_dir)
    bb = create_backbone("hf:acme/safe", num_classes=2, pretrained=True)
    assert bb.modality == "text"


@pytest.mark.parametrize("model_type", ["bert", "evil"])
def test_hub_model_asking_for_custom_code_is_refused(custom_code_dir, hub_cache, no_remote_code, model_type):
    folder, marker = custom_code_dir
    _edit_json(folder / "config.json", model_type=model_type)
    hub_cache("acme/custom", folder)
    with pytest.raises(AjusteError) as info:
        create_backbone("hf:acme/custom", num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert "own Python code" in msg and "ships with transformers" in msg and "need internet" not in msg
    assert not marker.exists()


def test_hub_tokenizer_asking_for_custom_code_is_refused(tiny_bert_dir, tmp_path, hub_cache, no_remote_code):
    """transformers, told trust_remote_code=False, falls back to its own BertTokenizer: not the author's."""
    folder = tmp_path / "custom-tokenizer"
    shutil.copytree(tiny_bert_dir, folder)
    _edit_json(folder / "tokenizer_config.json", auto_map={"AutoTokenizer": ["tokenization_evil.EvilTokenizer", None]})
    hub_cache("acme/custom-tokenizer", folder)
    with pytest.raises(AjusteError) as info:
        create_backbone("hf:acme/custom-tokenizer", num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert "hub model 'hf:acme/custom-tokenizer': tokenizer_config.json asks for the model's own Python code" in msg


def test_hub_offline_message_is_kept_and_not_cut_mid_word(hub_cache):
    with pytest.raises(AjusteError) as info:
        create_backbone("hf:acme/not-cached", num_classes=2, pretrained=True)
    msg = _single_line(str(info.value))
    assert "hub models need internet" in msg and "couldn't find them in the cached files" in msg


def test_clip_cuts_at_a_word_boundary():
    text = "We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them " * 3
    clipped = _clip(text, 160)
    assert len(clipped) <= 160 and clipped.endswith("…")
    kept = clipped[:-1]
    assert text.startswith(kept) and not text[len(kept)].isalnum() and kept[-1].isalnum()  # at a word's end
    assert _clip("short message", 160) == "short message"
