"""Every kind of hub model through the one ``hf:<id>`` / folder path: image models (ViT, ConvNeXt) and decoder-only
language models (GPT-2, Llama), beside the text encoders of the other tests. Tiny randomly initialised configs,
saved as Hugging Face folders (safetensors) and loaded through the real loading code; no network."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import write_sentiment_csv

from ajuste.backbones.factory import create_backbone
from ajuste.backbones.hf_decoder import is_decoder_only
from ajuste.config import RunConfig
from ajuste.errors import AjusteError
from ajuste.strategies.base import get_strategy, resolve_config
from ajuste.training.param_groups import build_param_groups

TEXTS = ["great lovely film", "awful bad dreadful film", "superb fine film", "poor film indeed", "a b c d e f"]
EOT = "<|endoftext|>"


def _bpe_tokenizer(**kw):
    """A byte-level BPE tokenizer trained here on a few words (GPT-2's kind), with no pad token."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import GPT2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(TEXTS * 20 + [str(i) for i in range(100)], trainers.BpeTrainer(
        vocab_size=300, special_tokens=[EOT], initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return GPT2TokenizerFast(tokenizer_object=tok, bos_token=EOT, eos_token=EOT, unk_token=EOT,
                             model_max_length=64, **kw)


@pytest.fixture(scope="session")
def gpt2_dir(tmp_path_factory) -> Path:
    from transformers import GPT2Config, GPT2Model

    folder = tmp_path_factory.mktemp("tiny-gpt2")
    tok = _bpe_tokenizer()
    eot = tok.convert_tokens_to_ids(EOT)
    torch.manual_seed(0)
    GPT2Model(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=2, n_head=2, bos_token_id=eot,
                         eos_token_id=eot)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def llama_dir(tmp_path_factory) -> Path:
    """A Llama-style decoder whose tokenizer pads on the left (as many chat models' do)."""
    from transformers import LlamaConfig, LlamaModel

    folder = tmp_path_factory.mktemp("tiny-llama")
    tok = _bpe_tokenizer(padding_side="left")
    eot = tok.convert_tokens_to_ids(EOT)
    torch.manual_seed(0)
    LlamaModel(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                           num_attention_heads=2, num_key_value_heads=1, max_position_embeddings=64,
                           bos_token_id=eot, eos_token_id=eot)).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def vit_dir(tmp_path_factory) -> Path:
    from transformers import ViTConfig, ViTImageProcessor, ViTModel

    folder = tmp_path_factory.mktemp("tiny-vit")
    torch.manual_seed(0)
    ViTModel(ViTConfig(image_size=32, patch_size=8, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                       intermediate_size=64)).save_pretrained(folder)
    ViTImageProcessor(size={"height": 32, "width": 32}, image_mean=[0.4, 0.45, 0.5], image_std=[0.2, 0.25, 0.3],
                      resample=3).save_pretrained(folder)
    return folder


@pytest.fixture(scope="session")
def convnext_dir(tmp_path_factory) -> Path:
    from transformers import ConvNextConfig, ConvNextImageProcessor, ConvNextModel

    folder = tmp_path_factory.mktemp("tiny-convnext")
    torch.manual_seed(0)
    ConvNextModel(ConvNextConfig(num_channels=3, hidden_sizes=[8, 16], depths=[1, 1], num_stages=2,
                                 image_size=32)).save_pretrained(folder)
    ConvNextImageProcessor(size={"shortest_edge": 32}, crop_pct=0.875).save_pretrained(folder)
    return folder


MODELS = ["vit_dir", "convnext_dir", "gpt2_dir", "llama_dir"]


def _bb(request, fixture: str, num_classes: int = 3):
    return create_backbone(str(request.getfixturevalue(fixture)), num_classes=num_classes, pretrained=True)


def _batch(bb):
    if bb.modality == "image":
        g = torch.Generator().manual_seed(0)
        return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 1])
    return dict(bb.tokenizer(TEXTS[:4], padding=True, return_tensors="pt")), torch.tensor([0, 1, 2, 1])


# --- what the config says the model is ----------------------------------------------------------------------


@pytest.mark.parametrize("fixture,modality,pooling,kind", [
    ("vit_dir", "image", "cls", "HFVisionBackbone"), ("convnext_dir", "image", "mean", "HFVisionBackbone"),
    ("gpt2_dir", "text", "last", "HFBackbone"), ("llama_dir", "text", "last", "HFBackbone")])
def test_the_config_decides_the_kind(fixture, modality, pooling, kind, request):
    bb = _bb(request, fixture)
    assert (type(bb).__name__, bb.modality, bb.pooling) == (kind, modality, pooling)
    if modality == "text":
        assert bb.tokenizer.pad_token == EOT  # GPT-2/Llama tokenizers have none: end-of-text stands in
    assert bb.is_convnet == (fixture == "convnext_dir")
    inputs, _ = _batch(bb)
    assert bb(inputs).shape == (4, 3)


def test_decoder_only_rule():
    from transformers import BertConfig, GPT2Config, LlamaConfig, Qwen2Config, RobertaConfig, T5Config

    assert all(is_decoder_only(c()) for c in (GPT2Config, LlamaConfig, Qwen2Config))
    assert not any(is_decoder_only(c()) for c in (BertConfig, RobertaConfig, T5Config))
    assert is_decoder_only(BertConfig(architectures=["BertLMHeadModel"]))  # saved as a causal LM


def test_image_rule():
    from transformers import BeitConfig, BertConfig, CLIPConfig, ConvNextConfig, GPT2Config, ViTConfig

    from ajuste.backbones.hf_vision import is_vision_config

    assert all(is_vision_config(c()) for c in (ViTConfig, ConvNextConfig, BeitConfig))  # BEiT has a vocabulary too
    assert not any(is_vision_config(c()) for c in (BertConfig, GPT2Config, CLIPConfig))  # CLIP: multimodal


def test_image_preprocessing_comes_from_the_image_processor(request):
    vit = _bb(request, "vit_dir").data_config()
    assert vit == {"input_size": 32, "mean": pytest.approx([0.4, 0.45, 0.5]), "std": pytest.approx([0.2, 0.25, 0.3]),
                   "interpolation": "bicubic", "crop_pct": 1.0}
    conv = _bb(request, "convnext_dir").data_config()
    saved = json.loads((request.getfixturevalue("convnext_dir") / "preprocessor_config.json").read_text())
    assert conv["input_size"] == 32 and conv["crop_pct"] == 0.875  # resize to 32 / 0.875, centre-crop 32
    assert (conv["mean"], conv["std"]) == (pytest.approx(saved["image_mean"]), pytest.approx(saved["image_std"]))


def test_vit_takes_other_input_sizes(request):
    bb = _bb(request, "vit_dir")  # ajuste picks 48 px for 8x8 digits: position embeddings are interpolated
    assert bb(torch.randn(2, 3, 48, 48)).shape == (2, 3)


# --- last-token pooling ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("fixture", ["gpt2_dir", "llama_dir"])
def test_last_token_pooling_is_the_same_padded_left_or_right(fixture, request):
    bb = _bb(request, fixture).eval()
    tok = bb.tokenizer
    texts = ["great", "awful bad dreadful film indeed"]
    with torch.no_grad():
        alone = torch.cat([bb.features(dict(tok([t], return_tensors="pt"))) for t in texts])
        for side in ("left", "right"):
            tok.padding_side = side
            enc = dict(tok(texts, padding=True, return_tensors="pt"))
            assert (enc["attention_mask"][0] == 0).any()  # the short text is padded
            torch.testing.assert_close(bb.features(enc), alone, rtol=1e-4, atol=1e-5)


# --- LoRA targets and layer groups from the structure ----------------------------------------------------------


def test_lora_targets_by_module_type(request):
    from transformers.pytorch_utils import Conv1D

    gpt2 = _bb(request, "gpt2_dir")
    targets = gpt2.lora_targets(8)
    assert targets == ["h.0.attn.c_attn", "h.1.attn.c_attn"]  # the fused query/key/value projection
    assert all(isinstance(gpt2.net.get_submodule(t), Conv1D) for t in targets)
    conv = _bb(request, "convnext_dir")  # no attention: every linear layer inside the stages, not the stem
    targets = conv.lora_targets(4)
    assert targets and all(t.startswith("encoder.stages.") for t in targets)
    assert all(isinstance(conv.net.get_submodule(t), torch.nn.Linear) for t in targets)
    llama = _bb(request, "llama_dir")
    assert {t.rsplit(".", 1)[-1] for t in llama.lora_targets(8)} == {"q_proj", "v_proj"}


@pytest.mark.parametrize("fixture,leaves", [
    ("gpt2_dir", {"c_attn", "c_proj", "c_fc"}), ("vit_dir", {"q_proj", "k_proj", "v_proj", "o_proj", "fc1", "fc2"}),
    ("llama_dir", {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"})])
def test_all_linear_targets_are_the_layer_stacks_linear_layers(fixture, leaves, request):
    from ajuste.strategies.lora import LoraMethod

    bb = _bb(request, fixture)
    cfg = resolve_config(RunConfig().override({"strategy.name": "lora", "peft.targets": "all-linear"}), bb.modality)
    spec = LoraMethod().resolve(bb, cfg.peft)
    stack = {"gpt2_dir": "h.", "vit_dir": "layers.", "llama_dir": "layers."}[fixture]
    assert all(t.startswith(stack) for t in spec["target_modules"])  # no embeddings, patch stem or pooler
    assert {t.rsplit(".", 1)[-1] for t in spec["target_modules"]} == leaves


@pytest.mark.parametrize("fixture", MODELS)
@pytest.mark.parametrize("strategy", ["linear-probe", "partial", "full", "two-stage", "gradual", "discriminative"])
def test_every_phase_trains_exactly_its_groups(strategy, fixture, request):
    bb = _bb(request, fixture)
    assert [g.name for g in bb.layer_groups()] == ["embeddings", "layer.0", "layer.1", "head"]
    cfg = resolve_config(RunConfig().override({"strategy.name": strategy, "strategy.unfreeze": 1}), bb.modality)
    strat = get_strategy(strategy)
    strat.prepare(bb, cfg)
    groups = bb.layer_groups()
    inputs, y = _batch(bb)
    for phase in strat.phases(cfg, len(groups)):
        bb.set_trainable(phase.train_groups)
        bb.zero_grad(set_to_none=True)
        bb.train()
        F.cross_entropy(bb(inputs), y).backward()
        chosen = set(range(len(groups))) if phase.train_groups is None else {i % len(groups) for i in phase.train_groups}
        for gi, g in enumerate(groups):
            for name, p in g.params:
                assert (p.grad is not None) == (gi in chosen), f"{strategy}/{phase.name}: {name}"
        pg = build_param_groups(groups, trainable=phase.train_groups, lr=1e-3, head_lr=1e-2, weight_decay=0.01)
        assert {id(p) for g in pg for p in g["params"]} == {id(p) for p in bb.parameters() if p.requires_grad}


# --- runs: train, reload, predict -------------------------------------------------------------------------------


@pytest.fixture()
def text_csv(tmp_path):
    return write_sentiment_csv(tmp_path / "tiny.csv", 60)


def _logits(backbone, pipeline):
    from ajuste.training.loop import predict_logits

    return predict_logits(backbone, pipeline.loader("test", batch_size=64), amp=None)[0]


def _run(strategy: str, model: Path, out: Path, **data):
    from ajuste.training.run import train_run

    over = {"model.name": str(model), "strategy.name": strategy, "train.epochs": 1, "train.min_steps": 0,
            "data.batch_size": 32, "strategy.head_epochs": 1} if strategy == "two-stage" else \
        {"model.name": str(model), "strategy.name": strategy, "train.epochs": 1, "train.min_steps": 0,
         "data.batch_size": 32}
    if "source" in data:
        over["data.source"] = str(data.pop("source"))
    else:
        over["data.image_size"] = 32
    return train_run(cfg=RunConfig().override(over), out=out, progress=False, **data)


STRATEGIES = ["linear-probe", "partial", "full", "two-stage", "lora"]


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_vit_run_trains_reloads_and_predicts(strategy, vit_dir, digits_small, tmp_path):
    from PIL import Image

    from ajuste.training.run_eval import load_run, predict_inputs

    res = _run(strategy, vit_dir, tmp_path / "run", data=digits_small)
    pre = json.loads((tmp_path / "run" / "preprocessing.json").read_text())
    assert pre["mean"] == pytest.approx([0.4, 0.45, 0.5]) and pre["interpolation"] == "bicubic"
    assert (tmp_path / "run" / "hf" / "preprocessor_config.json").is_file()
    expected = _logits(res.backbone, res.pipeline)
    loaded = load_run(tmp_path / "run")
    assert type(loaded.backbone).__name__ == "HFVisionBackbone"
    torch.testing.assert_close(_logits(loaded.backbone, res.pipeline), expected, rtol=1e-4, atol=1e-4)
    files = []
    for k in range(2):
        files.append(tmp_path / f"img{k}.png")
        Image.fromarray(np.full((16, 16, 3), 60 * k + 20, dtype=np.uint8)).save(files[-1])
    rows = predict_inputs(tmp_path / "run", [str(f) for f in files])
    assert len(rows) == 2 and all(r["label"] in res.pipeline.data.classes for r in rows)


@pytest.mark.parametrize("strategy", STRATEGIES)
def test_gpt2_run_trains_reloads_and_predicts(strategy, gpt2_dir, text_csv, tmp_path):
    from ajuste.training.run_eval import load_run, predict_inputs

    res = _run(strategy, gpt2_dir, tmp_path / "run", source=text_csv)
    desc = json.loads((tmp_path / "run" / "backbone.json").read_text())
    assert desc["pooling"] == "last"
    if strategy == "lora":
        assert desc["peft"]["targets"] == ["attn.c_attn"]
    expected = _logits(res.backbone, res.pipeline)
    loaded = load_run(tmp_path / "run")
    assert loaded.backbone.tokenizer.pad_token == EOT
    torch.testing.assert_close(_logits(loaded.backbone, res.pipeline), expected, rtol=1e-4, atol=1e-4)
    rows = predict_inputs(tmp_path / "run", ["great lovely film", "awful dreadful film"])
    assert [r["label"] in ("neg", "pos") for r in rows] == [True, True]


def test_decoder_export_to_hf_format_is_refused_in_one_line(gpt2_dir, text_csv, tmp_path):
    from ajuste.export import export_run

    _run("linear-probe", gpt2_dir, tmp_path / "run", source=text_csv)
    with pytest.raises(AjusteError, match="last token"):
        export_run(run_dir=tmp_path / "run", out=tmp_path / "hf", format="hf")


# --- bad input and the offline rule --------------------------------------------------------------------------------


def test_image_folder_without_image_processor_is_refused(vit_dir, tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    for f in ("config.json", "model.safetensors"):
        (folder / f).write_bytes((vit_dir / f).read_bytes())
    with pytest.raises(AjusteError, match="preprocessor_config.json"):
        create_backbone(str(folder), num_classes=2)


def test_image_processor_with_custom_code_is_refused(vit_dir, tmp_path):
    folder = tmp_path / "vit"
    folder.mkdir()
    for f in ("config.json", "model.safetensors", "preprocessor_config.json"):
        (folder / f).write_bytes((vit_dir / f).read_bytes())
    cfg = json.loads((folder / "preprocessor_config.json").read_text())
    cfg["auto_map"] = {"AutoImageProcessor": "processing_evil.EvilProcessor"}
    (folder / "preprocessor_config.json").write_text(json.dumps(cfg))
    with pytest.raises(AjusteError, match="never runs code"):
        create_backbone(str(folder), num_classes=2)


def test_text_pooling_on_an_image_model_is_one_line(vit_dir):
    with pytest.raises(AjusteError, match="pooling=last"):
        create_backbone(str(vit_dir), num_classes=2, pooling="last")


def test_cls_pooling_on_a_model_without_a_class_token_is_one_line(convnext_dir, vit_dir):
    with pytest.raises(AjusteError, match="pooling=cls: .* has no class token"):
        create_backbone(str(convnext_dir), num_classes=2, pooling="cls")
    assert create_backbone(str(vit_dir), num_classes=2, pooling="cls").pooling == "cls"


def test_offline_hub_id_says_so():
    with pytest.raises(AjusteError, match="need internet"):
        create_backbone("hf:no-such-org/tiny-vit-for-tests", num_classes=2)


def test_compact_of_an_image_model_is_the_compact_image_network(vit_dir):
    bb = create_backbone(str(vit_dir), num_classes=2, compact=True)
    assert bb.modality == "image" and bb.name.startswith("compact")


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
@pytest.mark.parametrize("model", ["vit_dir", "gpt2_dir"])
def test_export_matches_the_run(model, fmt, request, digits_small, text_csv, tmp_path):
    pytest.importorskip("onnx") if fmt == "onnx" else None
    from ajuste.export import export_run

    folder = request.getfixturevalue(model)
    data = {"source": text_csv} if model == "gpt2_dir" else {"data": digits_small}
    _run("linear-probe", folder, tmp_path / "run", **data)
    out = export_run(run_dir=tmp_path / "run", out=tmp_path / fmt, format=fmt)
    assert out.max_abs_diff < 1e-3


@pytest.mark.parametrize("fixture", ["vit_dir", "convnext_dir"])
def test_image_models_split_for_the_frozen_prefix_cache(fixture, request):
    bb = _bb(request, fixture).eval()
    x = torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        want = bb.features(x)
        for g in range(1, len(bb.layer_groups())):  # each layer of the stack, and the head
            assert bb.split(g) is not None, g
            torch.testing.assert_close(bb.forward_suffix(bb.forward_prefix(x, g), g), want, rtol=1e-4, atol=1e-5)
