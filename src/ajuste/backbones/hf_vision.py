"""Hugging Face image models (ViT, DeiT, DINOv2, Swin, ConvNeXt, ResNet...) behind the Backbone interface.

The network is ``AutoModel`` (no task head); pooling and the linear head are ours. Preprocessing (input size,
resize, crop, mean and std) comes from the model's own image processor (``preprocessor_config.json``), so
ajuste's image pipeline feeds the model what it was trained on.
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajuste.backbones.hf_base import HFBase
from ajuste.errors import AjusteError

# PIL resampling codes (image processors store them as ints) → ajuste's interpolation names. LANCZOS (1) and
# the rarer ones map to the closest that the image pipeline implements.
_RESAMPLE = {0: "nearest", 1: "bicubic", 2: "bilinear", 3: "bicubic", 4: "bilinear", 5: "bicubic"}
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


def is_vision_config(config: Any) -> bool:
    """An image model: a config with an input channel count (``num_channels``: ViT, Swin, ConvNeXt, ResNet,
    DINOv2...) and no vocabulary, or one of transformers' own image-classification model types (BEiT, whose
    config also has a vocabulary of visual tokens). A config that nests a text or vision config (CLIP, SigLIP,
    vision-language models) is a multimodal model, not an image backbone here."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES

    if getattr(config, "text_config", None) is not None or getattr(config, "vision_config", None) is not None:
        return False
    no_vocab = getattr(config, "vocab_size", None) is None
    classifies_images = getattr(config, "model_type", "") in MODEL_FOR_IMAGE_CLASSIFICATION_MAPPING_NAMES
    return (getattr(config, "num_channels", None) is not None and (no_vocab or classifies_images)) or \
        (classifies_images and no_vocab)


def _size_field(size: Any, key: str) -> int | None:
    value = size.get(key) if isinstance(size, dict) else getattr(size, key, None)
    return int(value) if value else None


def _interpolation(resample: Any) -> str:
    name = getattr(resample, "name", None) or getattr(resample, "value", None)
    if isinstance(name, str):  # an enum (PIL or torchvision InterpolationMode)
        return name.lower() if name.lower() in ("nearest", "bilinear", "bicubic") else "bicubic"
    try:
        return _RESAMPLE.get(int(resample), "bilinear")
    except (TypeError, ValueError):
        return "bilinear"


def image_data_config(processor: Any, config: Any) -> dict[str, Any]:
    """ajuste's data config (see ``TimmBackbone.data_config``) from an image processor.

    Input size: the crop where the processor centre-crops, else its resize target (height, or shortest
    edge). crop_pct: the processor's own (ConvNeXt, which crops only below 384 px), else crop / resize
    where it crops, else 1.0 (ViT resizes straight to the input size)."""
    size = getattr(processor, "size", None) or {}
    crops = bool(getattr(processor, "do_center_crop", False))
    crop = _size_field(getattr(processor, "crop_size", None) or {}, "height") if crops else None
    resize = _size_field(size, "height") or _size_field(size, "shortest_edge")
    input_size = crop or resize or int(getattr(config, "image_size", 224) or 224)
    if getattr(processor, "crop_pct", None) and (resize or 0) < 384:
        crop_pct = float(processor.crop_pct)
    elif crop and _size_field(size, "shortest_edge"):
        crop_pct = min(1.0, crop / float(_size_field(size, "shortest_edge")))
    else:
        crop_pct = 1.0
    normalise = getattr(processor, "do_normalize", True)
    mean = getattr(processor, "image_mean", None) if normalise else (0.0, 0.0, 0.0)
    std = getattr(processor, "image_std", None) if normalise else (1.0, 1.0, 1.0)
    return {"input_size": int(input_size),
            "mean": [float(x) for x in (mean if mean is not None else _IMAGENET_MEAN)],
            "std": [float(x) for x in (std if std is not None else _IMAGENET_STD)],
            "interpolation": _interpolation(getattr(processor, "resample", 2)),
            "crop_pct": float(crop_pct)}


def load_image_processor(src: str, *, local: bool, what: str) -> Any:
    """The model's image processor. A local folder without one is refused: guessing the normalisation would
    train on inputs the pretrained weights never saw."""
    from transformers import AutoImageProcessor

    if local and not (Path(src) / "preprocessor_config.json").is_file():
        raise AjusteError(f"{what} {src} is an image model without preprocessor_config.json (its image processor: "
                          f"input size, mean, std); save one beside it with AutoImageProcessor.from_pretrained(id)"
                          f".save_pretrained(folder)")
    return AutoImageProcessor.from_pretrained(src, trust_remote_code=False)


def feature_width(config: Any) -> int:
    """Width of the pooled features: the last stage's (ConvNeXt, ResNet: hidden_sizes), else hidden_size."""
    widths = getattr(config, "hidden_sizes", None)
    return int(widths[-1]) if widths else int(config.hidden_size)


class HFVisionBackbone(HFBase):
    modality = "image"

    def __init__(self, encoder: nn.Module, processor: Any, *, name: str, source: str, pooling: str,
                 num_classes: int) -> None:
        if pooling not in ("auto", "cls", "mean"):
            raise AjusteError(f"model.pooling={pooling} is for text models; an image model pools with cls or mean")
        # A class token (ViT, DeiT, DINOv2, BEiT) summarises the image; else the mean over positions.
        has_cls = any(n.rsplit(".", 1)[-1] == "cls_token" for n, _ in encoder.named_parameters())
        if pooling == "cls" and not has_cls:  # a convnet's map or Swin's first patch: not a summary of the image
            raise AjusteError(f"model.pooling=cls: {name} has no class token (a convnet, or a transformer that "
                              f"pools its patches); use model.pooling=mean or auto")
        if pooling == "auto":
            pooling = "cls" if has_cls else "mean"
        super().__init__(encoder, name=name, source=source, pooling=pooling, num_classes=num_classes,
                         hidden=feature_width(encoder.config))
        self.processor = processor
        # ViT-style models take other input sizes by interpolating their position embeddings (the same
        # embeddings at the native size); ajuste's pipeline picks smaller inputs for small arrays.
        params = inspect.signature(encoder.forward).parameters
        self._call = {"interpolate_pos_encoding": True} if "interpolate_pos_encoding" in params else {}
        # A convnet: a spatial convolution that is not a patch embedding (kernel = stride); as timm_backbone.
        self.is_convnet = any(isinstance(m, nn.Conv2d) and m.kernel_size != (1, 1) and m.kernel_size != m.stride
                              for m in encoder.modules())
        self._channels = int(encoder.config.num_channels)
        pooler = getattr(encoder, "pooler", None)
        self._own_pool = isinstance(pooler, nn.Module) and not self._unused_modules

    @property
    def preprocessor(self) -> Any:
        return self.processor

    def features(self, inputs: torch.Tensor) -> torch.Tensor:
        return self._pool_output(self._encode(inputs))

    def _encode(self, inputs: torch.Tensor) -> Any:
        return self.encoder(pixel_values=inputs, **self._call)

    def _rerun(self, acts: torch.Tensor) -> torch.Tensor:
        # The embeddings return the cached activations: the pixels passed are a placeholder of the batch's size.
        return self._pool_output(self._encode(acts.new_zeros(acts.shape[0], self._channels, 1, 1)))

    def _split_probe(self) -> tuple[torch.Tensor, Any]:
        size = self.data_config()["input_size"]
        g = torch.Generator().manual_seed(0)
        return torch.randn(2, self._channels, size, size, generator=g), lambda acts: acts

    def _pool_output(self, out: Any) -> torch.Tensor:
        hidden = out.last_hidden_state  # (B, T, H) tokens, or (B, C, h, w) feature maps
        if self.pooling == "cls" and hidden.ndim == 3:
            return hidden[:, 0]
        pooled = getattr(out, "pooler_output", None)
        # A convnet's pooled output carries its final norm (ConvNeXt) and Swin's its average pool: the model's
        # own mean pooling. A pooler with weights (ViT's dense + tanh) is not a mean and stays unused.
        if pooled is not None and (hidden.ndim == 4 or self._own_pool):
            return pooled.flatten(1)  # (B, C)
        return hidden.mean(dim=1) if hidden.ndim == 3 else hidden.mean(dim=(2, 3))

    def data_config(self) -> dict[str, Any]:
        return image_data_config(self.processor, self.net.config)

    def why_not_format(self, format: str) -> str | None:
        if format == "hf":
            return ("for images the hf format writes timm's hub format, and this is a Hugging Face transformers image "
                    "model; use --format onnx, torchscript or ajuste")
        return None
