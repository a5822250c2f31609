"""Hugging Face models behind the Backbone interface, through one loader: ``hf:<hub id>`` or a local folder.

Text encoders (BERT, RoBERTa, MiniLM...) and decoder-only language models (GPT-2, Llama, Qwen...) are
``HFBackbone``; image models (ViT, ConvNeXt...: ``hf_vision``) are told apart by their config, never by their
name. The network is ``AutoModel`` (no task head); pooling (mean over tokens, the first token, or for a
decoder the last real token: ``hf_decoder``) and the classifier are ours, so the same head serves cached
features and end-to-end training.

Nothing that comes with a model runs (``hf_safety``): ``trust_remote_code=False`` on every load, weights from
safetensors only, and a local folder is checked before transformers reads it.
"""

from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajuste.backbones.adapters import get_method
from ajuste.backbones.compact import text_overrides
from ajuste.backbones.hf_base import HFBase
from ajuste.backbones.hf_decoder import ensure_pad_token, is_decoder_only, last_token, positions
from ajuste.backbones.hf_safety import (
    _check_hub_config,
    _no_hub_conversion,
    _refuse_custom_code,
    check_model_folder,
)
from ajuste.backbones.hf_vision import HFVisionBackbone, is_vision_config, load_image_processor
from ajuste.lazy import quiet_transformers

__all__ = ["HFBackbone", "HFVisionBackbone", "build_hf", "check_model_folder", "default_pooling", "hf_is_vision"]


class HFBackbone(HFBase):
    modality = "text"

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, name: str, source: str, pooling: str,
                 num_classes: int) -> None:
        hidden = int(getattr(encoder.config, "hidden_size", 0) or getattr(encoder.config, "dim"))
        super().__init__(encoder, name=name, source=source, pooling=pooling, num_classes=num_classes, hidden=hidden)
        self.tokenizer = tokenizer
        # A decoder's positions count real tokens, so a left-padded text reads as it would unpadded (hf_decoder).
        self._count_positions = pooling == "last" and \
            "position_ids" in inspect.signature(encoder.forward).parameters

    @property
    def preprocessor(self) -> Any:
        return self.tokenizer

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        n_tokens = inputs["input_ids"].shape[1]
        if self.peft and get_method(self.peft["method"]).prepends_tokens:
            # peft drops token type ids for prompt learning (with a warning per call); single-segment
            # inputs have all-zero ids, the encoder's default.
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        elif self._count_positions:
            inputs = {**inputs, "position_ids": positions(inputs["attention_mask"])}  # (B, T)
        out = self.encoder(**inputs)
        # Prompt tuning prepends V learned tokens: (B, V + T, H). Pool over the T real tokens, which
        # attend to the virtual ones; the attention mask and the CLS position refer to them.
        hidden = out.last_hidden_state[:, -n_tokens:]  # (B, T, H)
        return self._pool(hidden, inputs["attention_mask"])

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        if self.pooling == "last":
            return last_token(hidden, attention_mask)
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def _encode(self, inputs: dict[str, torch.Tensor]) -> Any:
        return self.encoder(**inputs)

    def _rerun(self, acts: dict[str, torch.Tensor]) -> torch.Tensor:
        # The embeddings return the cached hidden states; the encoder builds its attention mask its own way.
        mask = acts["attention_mask"]
        out = self.encoder(input_ids=torch.zeros_like(mask), attention_mask=mask)
        return self._pool(out.last_hidden_state, mask)

    def _split_probe(self) -> tuple[dict[str, torch.Tensor], Any]:
        inputs = dict(self.tokenizer(["a probe sentence of a few words", "short"], padding=True, return_tensors="pt"))
        return inputs, lambda hidden: {"hidden": hidden, "attention_mask": inputs["attention_mask"]}

    def data_config(self) -> dict[str, Any]:
        return {"max_length": int(min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512))}

    def why_not_format(self, format: str) -> str | None:
        if format == "hf" and self.pooling == "last":
            return ("the hf format's exported code pools by mean or first token, not a decoder's last token; "
                    "use --format onnx, torchscript or ajuste")
        return None


def default_pooling(path_or_id: str) -> str:
    """sentence-transformers models are trained with a pooling module we can read; else CLS."""
    p = Path(path_or_id)
    pool_cfg = p / "1_Pooling" / "config.json"
    if pool_cfg.is_file():
        cfg = json.loads(pool_cfg.read_text())
        return "cls" if cfg.get("pooling_mode_cls_token") else "mean"
    if (p / "modules.json").is_file() or "sentence-transformers" in str(path_or_id):
        return "mean"
    return "cls"


def _open_config(src: str, name: str, *, local: bool, weights: bool, what: str) -> Any:
    """The model's config, after the folder check (a local folder) or before any weights are fetched (hub)."""
    from transformers import AutoConfig

    if local:
        # A run's hf/ folder is written by ajuste (config and tokenizer, no auto_map), but run directories
        # get shared: the check costs nothing and keeps the rule "nothing in a folder runs" unconditional.
        check_model_folder(Path(src), weights=weights, what=what)
    config = AutoConfig.from_pretrained(src, trust_remote_code=False)
    if not local:
        _check_hub_config(config, name, weights=weights)
    return config


def _open_tokenizer(src: str, name: str, *, local: bool) -> Any:
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    if not local and getattr(tokenizer, "init_kwargs", {}).get("auto_map"):
        # With trust_remote_code=False transformers fell back to a built-in class: not the author's tokenizer.
        _refuse_custom_code(tokenizer.init_kwargs, f"hub model {name!r}: tokenizer_config.json")
    return tokenizer


def _network(src: str, config: Any, *, weights: bool) -> nn.Module:
    from transformers import AutoModel

    if not weights:
        return AutoModel.from_config(config)
    with _no_hub_conversion():
        return AutoModel.from_pretrained(src, config=config, trust_remote_code=False, use_safetensors=True)


def hf_is_vision(source: str) -> bool:
    """Whether ``source`` (a local folder or hub id) is an image model, from its config alone."""
    quiet_transformers()
    local = Path(source).is_dir()
    return is_vision_config(_open_config(source, source, local=local, weights=False, what="model folder"))


def build_hf(source: str, *, name: str, num_classes: int, pretrained: bool, pooling: str = "auto",
             config_dir: Path | None = None, compact: bool = False) -> HFBase:
    """``source`` is a local folder or a hub id: a text encoder, a decoder-only language model or an image
    model, told apart by its config. ``config_dir`` (a run's saved parts) rebuilds the architecture without
    weights or network; the caller loads the run's weights afterwards. ``compact`` (text): the source's
    tokenizer and architecture family at the small shape of ``ajuste.backbones.compact``, randomly initialised.

    Nothing that comes with a model runs: ``trust_remote_code=False`` on every load, weights from
    safetensors only, and a local folder is checked (`check_model_folder`) before transformers reads it."""
    quiet_transformers()
    weights = pretrained and not compact and config_dir is None
    # transformers treats any existing directory as a local folder (before trying the hub), so do we.
    src = str(config_dir) if config_dir is not None else source
    local = Path(src).is_dir()
    what = "run folder" if config_dir is not None else "model folder"
    config = _open_config(src, name, local=local, weights=weights, what=what)
    if is_vision_config(config):
        processor = load_image_processor(src, local=local, what=what)
        return HFVisionBackbone(_network(src, config, weights=weights), processor, name=name, source=source,
                                pooling=pooling, num_classes=num_classes)
    tokenizer = _open_tokenizer(src, name, local=local)
    decoder = is_decoder_only(config)
    if decoder:
        ensure_pad_token(tokenizer, name)
    if pooling == "auto":
        pooling = "last" if decoder else default_pooling(source)
    if compact and config_dir is None:  # a run's saved config already has the compact shape
        for key, value in text_overrides(config).items():
            setattr(config, key, value)
    encoder = _network(src, config, weights=weights)
    return HFBackbone(encoder, tokenizer, name=name, source=source, pooling=pooling, num_classes=num_classes)
