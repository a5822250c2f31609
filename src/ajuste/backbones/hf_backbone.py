"""Hugging Face text encoders behind the Backbone interface.

The encoder is ``AutoModel`` (no task head); pooling (mean over tokens, or the first token) and the
classifier are ours, so the same head serves cached features and end-to-end training. The encoder's
own pooler, when it has one, is unused and kept frozen (it would otherwise sit in the optimizer with
no gradient).
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ajuste.backbones.adapters import get_method
from ajuste.backbones.base import Backbone, LayerGroup, Split, call_until
from ajuste.backbones.compact import text_overrides
from ajuste.errors import AjusteError
from ajuste.lazy import quiet_transformers

# A model folder is data from wherever the user got it, and two things in it can run code on load:
# pickled weights (torch.load unpickles, and a pickle can call any function) and custom modelling code
# (config.json / tokenizer_config.json "auto_map", imported under trust_remote_code). ajuste reads
# safetensors only and never runs a model's own code; both are refused before transformers opens the folder.
_PICKLED_SUFFIXES = (".bin", ".pt", ".pth", ".ckpt", ".pkl", ".pickle")
# What from_pretrained(use_safetensors=True) reads in a folder: one file, or the index of a sharded one.
_SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
_SAFE_SUFFIXES = (".safetensors", ".safetensors.index.json")
_CONVERT_HINT = ("convert it once in an environment you trust: AutoModel.from_pretrained(folder)"
                 ".save_pretrained(folder, safe_serialization=True) writes model.safetensors")
_NO_CODE_HINT = ("use a model whose architecture ships with transformers (a BERT, RoBERTa, DeBERTa, "
                 "DistilBERT... model)")


class HFBackbone(Backbone):
    modality = "text"
    inner_attr = "encoder"

    def __init__(self, encoder: nn.Module, tokenizer: Any, *, name: str, source: str, pooling: str,
                 num_classes: int) -> None:
        super().__init__()
        self.encoder = encoder
        self.tokenizer = tokenizer
        self.name = name
        self.source = source
        self.pooling = pooling
        hidden = int(getattr(encoder.config, "hidden_size", 0) or getattr(encoder.config, "dim"))
        self._classifier = nn.Linear(hidden, num_classes)
        nn.init.normal_(self._classifier.weight, std=0.02)
        nn.init.zeros_(self._classifier.bias)
        # By identity: a PEFT wrapper renames the encoder's parameters.
        self._unused_modules = [m for n, m in encoder.named_children() if n == "pooler"]
        self._unused = {id(p) for m in self._unused_modules for p in m.parameters()}
        for p in encoder.parameters():
            if id(p) in self._unused:
                p.requires_grad_(False)

    @property
    def classifier(self) -> nn.Linear:
        return self._classifier

    def features(self, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        n_tokens = inputs["input_ids"].shape[1]
        if self.peft and get_method(self.peft["method"]).prepends_tokens:
            # peft drops token type ids for prompt learning (with a warning per call); single-segment
            # inputs have all-zero ids, the encoder's default.
            inputs = {k: v for k, v in inputs.items() if k != "token_type_ids"}
        out = self.encoder(**inputs)
        # Prompt tuning prepends V learned tokens: (B, V + T, H). Pool over the T real tokens, which
        # attend to the virtual ones; the attention mask and the CLS position refer to them.
        hidden = out.last_hidden_state[:, -n_tokens:]  # (B, T, H)
        return self._pool(hidden, inputs["attention_mask"])

    def _layer_list_prefix(self) -> tuple[str, int]:
        """The encoder's stack of transformer layers: the ModuleList holding the most parameters."""
        best, best_n, best_len = "", -1, 0
        for name, mod in self.encoder.named_modules():
            if isinstance(mod, nn.ModuleList) and len(mod) > 0:
                n = sum(p.numel() for p in mod.parameters())
                if n > best_n:
                    best, best_n, best_len = name, n, len(mod)
        return best, best_len

    def _body_groups(self) -> list[LayerGroup]:
        prefix, n_layers = self._layer_list_prefix()
        named = [(n, p) for n, p in self.encoder.named_parameters() if id(p) not in self._unused]
        if not prefix:
            return [LayerGroup("encoder", named)]
        embed = LayerGroup("embeddings")
        layers = [LayerGroup(f"layer.{i}") for i in range(n_layers)]
        seen_layer = False
        for n, p in named:
            if n.startswith(prefix + "."):
                idx = int(n[len(prefix) + 1:].split(".")[0])
                layers[idx].params.append((n, p))
                seen_layer = True
            elif not seen_layer:
                embed.params.append((n, p))
            else:
                # Parameters after the stack (a final norm, relative-position tables): top layer's group.
                layers[-1].params.append((n, p))
        return [embed, *layers]

    def _pool(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        if self.pooling == "cls":
            return hidden[:, 0]
        mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
        return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)

    def _split_body(self, g: int, groups: list[LayerGroup]) -> Split | None:
        """Cut at the input of transformer layer ``g - 1`` (group 0 is the embeddings).

        Prefix: the encoder's own forward, stopped at that layer: (B, T, H) hidden states. Suffix: the
        encoder's forward again (so it builds its attention mask its own way) with the embeddings
        returning the cached hidden states and the layers below the cut passing them through; the
        embedding lookup still runs (negligible) and the layers below the cut do not. Accepted only if
        a probe batch gives the same features both ways (an encoder whose forward does more between
        the embeddings and the layers, or whose layers return tuples, is left uncut)."""
        if self.peft or self.encoder is not self.net:
            return None
        prefix_name, n_layers = self._layer_list_prefix()
        if not prefix_name or not 1 <= g <= n_layers:
            return None
        layers = self.encoder.get_submodule(prefix_name)
        embeddings = getattr(self.encoder, "embeddings", None)
        if not isinstance(embeddings, nn.Module):
            return None
        start, below = layers[g - 1], list(layers[:g - 1])
        encoder = self.encoder

        def prefix(inputs: dict[str, torch.Tensor]) -> torch.Tensor:
            return call_until(encoder, start, lambda: encoder(**inputs))  # (B, T, H)

        def rest(acts: dict[str, torch.Tensor]) -> torch.Tensor:
            hidden, mask = acts["hidden"], acts["attention_mask"]
            with _replaced_forward(embeddings, lambda *a, **k: hidden), \
                    contextlib.ExitStack() as stack:
                for layer in below:
                    stack.enter_context(_replaced_forward(layer, _passthrough))
                out = encoder(input_ids=torch.zeros_like(mask), attention_mask=mask)
            return self._pool(out.last_hidden_state, mask)

        sp = Split(g, f"{prefix_name}.{g - 1}", [*layers[g - 1:], *self._after_layers(prefix_name)], prefix, rest,
                   ragged=True)
        return sp if self._split_matches(sp) else None

    def _after_layers(self, prefix_name: str) -> list[nn.Module]:
        """Modules of the encoder outside the embeddings and the layer stack (a final norm): suffix side."""
        top = prefix_name.split(".")[0]
        return [m for n, m in self.encoder.named_children() if n not in (top, "embeddings") and
                m not in self._unused_modules]

    @torch.no_grad()
    def _split_matches(self, sp: Split) -> bool:
        enc = self.tokenizer(["a probe sentence of a few words", "short"], padding=True, return_tensors="pt")
        inputs = dict(enc)
        was_training = self.training
        self.eval()
        try:
            want = self.features(inputs)
            got = sp.rest({"hidden": sp.prefix(inputs), "attention_mask": inputs["attention_mask"]})
        finally:
            self.train(was_training)
        return got.shape == want.shape and torch.allclose(got, want, rtol=1e-4, atol=1e-5)

    def reset_head(self, num_classes: int) -> None:
        hidden = self._classifier.in_features
        self._classifier = nn.Linear(hidden, num_classes)
        nn.init.normal_(self._classifier.weight, std=0.02)
        nn.init.zeros_(self._classifier.bias)

    def data_config(self) -> dict[str, Any]:
        return {"max_length": int(min(getattr(self.tokenizer, "model_max_length", 512) or 512, 512))}

    def describe(self) -> dict[str, Any]:
        return self._with_peft({"kind": "hf", "name": self.name, "source": self.source, "pooling": self.pooling,
                                "num_classes": self.num_classes, "dropout": self.head_dropout.p})

    def _adapter_excluded(self) -> set[int]:
        return {id(m) for top in self._unused_modules for m in top.modules()}

    def save_pretrained_parts(self, folder: Path) -> None:
        """Config + tokenizer files so a run directory rebuilds the encoder offline."""
        folder.mkdir(parents=True, exist_ok=True)
        self.net.config.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)


def _passthrough(hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
    return hidden_states


@contextlib.contextmanager
def _replaced_forward(module: nn.Module, fn: Any):
    """``module`` computes ``fn`` instead of its forward for the duration (an instance attribute shadows
    the class's method; hooks still run)."""
    module.forward = fn
    try:
        yield
    finally:
        del module.forward


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


def check_model_folder(folder: Path, *, weights: bool, what: str = "model folder") -> None:
    """Refuse a local Hugging Face folder that would make transformers run code, before it is opened.

    Reads config.json and tokenizer_config.json as plain JSON (no transformers involved): custom code
    (``auto_map``) is refused. ``weights``: pretrained weights will be loaded, so the folder must hold
    them as safetensors; pickled weights (pytorch_model.bin, *.pt...) are refused without being opened."""
    config = _read_json(folder / "config.json")
    where = f"{what} {folder}"
    _refuse_custom_code(config, f"{where}: config.json")
    _refuse_custom_code(_read_json(folder / "tokenizer_config.json"), f"{where}: tokenizer_config.json")
    if not weights:
        return
    pointer = config.get("transformers_weights")  # config.json may name the weights file transformers loads
    if isinstance(pointer, str) and not pointer.endswith(_SAFE_SUFFIXES):
        raise AjusteError(f"{where}: config.json's transformers_weights names {pointer!r}, a pickle file, and "
                          f"unpickling a checkpoint can run arbitrary code, so ajuste loads safetensors only; "
                          f"remove that key and {_CONVERT_HINT}")
    safe = (*_SAFE_WEIGHTS, pointer) if isinstance(pointer, str) else _SAFE_WEIGHTS
    if any((folder / name).is_file() for name in safe):
        return
    pickled = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name.lower().endswith(_PICKLED_SUFFIXES))
    if pickled:
        shown = ", ".join(pickled[:3]) + (f" and {len(pickled) - 3} more" if len(pickled) > 3 else "")
        raise AjusteError(f"{where} has its weights only as pickle files ({shown}), and unpickling a checkpoint "
                          f"can run arbitrary code, so ajuste loads model.safetensors only; {_CONVERT_HINT}")
    raise AjusteError(f"{where} has no model.safetensors: no pretrained weights to start from; add the weights "
                      f"(model.safetensors, or a sharded model.safetensors.index.json), or set "
                      f"model.pretrained=false to start from random weights")


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise AjusteError(f"cannot read {path} ({exc}); a Hugging Face model folder needs it to be valid JSON") \
            from None
    if not isinstance(data, dict):
        raise AjusteError(f"{path} is not a JSON object; a Hugging Face model folder needs a valid one")
    return data


def _refuse_custom_code(config: dict[str, Any], where: str) -> None:
    """``auto_map`` points transformers at Python files shipped with the model (imported and run under
    ``trust_remote_code=True``; with False, a known ``model_type`` would silently load transformers' own,
    possibly different, architecture instead). Either way it is not the model its author meant."""
    auto_map = config.get("auto_map")
    if not auto_map:
        return
    refs = auto_map.values() if isinstance(auto_map, dict) else auto_map
    flat = [r for ref in refs for r in (ref if isinstance(ref, (list, tuple)) else [ref]) if isinstance(r, str)]
    shown = ", ".join(dict.fromkeys(flat[:3])) or "custom classes"
    raise AjusteError(f"{where} asks for the model's own Python code (auto_map: {shown}), and ajuste never runs "
                      f"code that comes with a model (it would run with your permissions); {_NO_CODE_HINT}")


def _check_hub_config(config: Any, name: str, *, weights: bool) -> None:
    """The same rules for a hub model, on the config transformers parsed (``trust_remote_code=False``:
    parsing ran nothing), before any weights are fetched."""
    values = config.to_dict()
    where = f"hub model {name!r}"
    _refuse_custom_code(values, f"{where}: config.json")
    pointer = values.get("transformers_weights")
    if weights and isinstance(pointer, str) and not pointer.endswith(_SAFE_SUFFIXES):
        raise AjusteError(f"{where}: config.json's transformers_weights names {pointer!r}, a pickle file, and "
                          f"unpickling a checkpoint can run arbitrary code, so ajuste loads safetensors only; "
                          f"pick a model that ships model.safetensors")


@contextlib.contextmanager
def _no_hub_conversion():
    """With ``use_safetensors=True`` and a hub repository holding only .bin files, transformers would ask
    the hub's conversion service to convert it (a pull request on someone else's repository, then a wait
    of minutes); instead the missing model.safetensors is reported as such (see factory._hub_call)."""
    key = "DISABLE_SAFETENSORS_CONVERSION"
    old = os.environ.get(key)
    os.environ[key] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = old


def build_hf(source: str, *, name: str, num_classes: int, pretrained: bool, pooling: str = "auto",
             config_dir: Path | None = None, compact: bool = False) -> HFBackbone:
    """``source`` is a local folder or a hub id. ``config_dir`` (a run's saved parts) rebuilds the
    architecture without weights or network; the caller loads the run's weights afterwards.
    ``compact``: the source's tokenizer and architecture family at the small shape of
    ``ajuste.backbones.compact``, randomly initialised.

    Nothing that comes with a model runs: ``trust_remote_code=False`` on every load, weights from
    safetensors only, and a local folder is checked (`check_model_folder`) before transformers reads it."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer


    quiet_transformers()
    weights = pretrained and not compact and config_dir is None
    # transformers treats any existing directory as a local folder (before trying the hub), so do we.
    src = str(config_dir) if config_dir is not None else source
    local = Path(src).is_dir()
    if local:
        # A run's hf/ folder is written by ajuste (config and tokenizer, no auto_map), but run directories
        # get shared: the check costs nothing and keeps the rule "nothing in a folder runs" unconditional.
        check_model_folder(Path(src), weights=weights,
                           what="run folder" if config_dir is not None else "model folder")
    if pooling == "auto":
        pooling = default_pooling(source)
    config = AutoConfig.from_pretrained(src, trust_remote_code=False)
    if not local:
        _check_hub_config(config, name, weights=weights)
    tokenizer = AutoTokenizer.from_pretrained(src, trust_remote_code=False)
    if not local and getattr(tokenizer, "init_kwargs", {}).get("auto_map"):
        # With trust_remote_code=False transformers fell back to a built-in class: not the author's tokenizer.
        _refuse_custom_code(tokenizer.init_kwargs, f"hub model {name!r}: tokenizer_config.json")
    if compact and config_dir is None:  # a run's saved config already has the compact shape
        for key, value in text_overrides(config).items():
            setattr(config, key, value)
        encoder = AutoModel.from_config(config)
    elif weights:
        with _no_hub_conversion():
            encoder = AutoModel.from_pretrained(src, config=config, trust_remote_code=False, use_safetensors=True)
    else:
        encoder = AutoModel.from_config(config)
    return HFBackbone(encoder, tokenizer, name=name, source=source, pooling=pooling, num_classes=num_classes)
