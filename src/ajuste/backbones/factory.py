"""Resolve a model name to a Backbone: offline zoo, timm names, Hugging Face ids or folders."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any

from ajuste.backbones import classical, zoo
from ajuste.backbones.adapters import apply_peft
from ajuste.backbones.base import Backbone
from ajuste.backbones.compact import IMAGE_ARCH, IMAGE_ARGS, compact_name
from ajuste.backbones.hf_backbone import build_hf, hf_is_vision
from ajuste.backbones.timm_backbone import build_timm
from ajuste.backbones.zoo import ZOO
from ajuste.errors import AjusteError

HF_PREFIXES = ("hf:", "hf/")
TIMM_PREFIXES = ("timm:", "timm/")


def _strip(name: str, prefixes: tuple[str, ...]) -> str | None:
    for p in prefixes:
        if name.startswith(p):
            return name[len(p):]
    return None


def create_backbone(name: str, *, num_classes: int, pretrained: bool = True, dropout: float = 0.0,
                    pooling: str = "auto", compact: bool = False) -> Backbone:
    """Build a backbone with a fresh ``num_classes`` head.

    Names: a zoo entry (``ajuste models``), ``timm/<arch>`` or a bare timm architecture, a local
    Hugging Face folder, or ``hf:<hub id>`` / ``<org>/<model>`` (a text encoder, a decoder-only language
    model or an image model: ``ajuste.backbones.hf_backbone``). Hub downloads need internet.
    ``compact``: instead, the small random network of the name's modality (``ajuste.backbones.compact``;
    text keeps the name's tokenizer and architecture family).
    """
    bb: Backbone
    if name in ZOO:
        bb = _from_zoo(name, num_classes=num_classes, pretrained=pretrained, pooling=pooling, compact=compact)
    elif (arch := _strip(name, TIMM_PREFIXES)) is not None or _is_timm_arch(name):
        arch = arch or name
        _check_timm_arch(arch, name)
        if compact:
            bb = _compact_image(num_classes)
        else:
            bb = _hub_call(name, lambda: _build_timm(arch, name=name, num_classes=num_classes,
                                                     pretrained=pretrained))
    elif Path(name).expanduser().is_dir():
        path = str(Path(name).expanduser())
        if not (Path(path) / "config.json").is_file():
            raise AjusteError(f"model folder {name} has no config.json: expected a Hugging Face model folder")
        bb = _build_hf(path, name=name, num_classes=num_classes, pretrained=pretrained, pooling=pooling,
                       compact=compact)
    elif name.startswith((".", "/", "~")):
        raise AjusteError(f"model folder {name} does not exist; give a Hugging Face model folder, or one of "
                          f"{', '.join(_zoo_names())} (`ajuste models`)")
    elif (hub_id := _strip(name, HF_PREFIXES)) is not None or name.count("/") == 1:
        hub_id = hub_id or name
        bb = _hub_call(name, lambda: _build_hf(hub_id, name=name, num_classes=num_classes,
                                               pretrained=pretrained, pooling=pooling, compact=compact))
    else:
        raise AjusteError(f"unknown model {name!r}: {_model_hint(name)}")
    bb.set_dropout(dropout)
    return bb


def _build_timm(arch: str, **kw: Any) -> Backbone:
    return build_timm(arch, **kw)


def _build_hf(source: str, *, compact: bool = False, **kw: Any) -> Backbone:
    if compact and hf_is_vision(source):  # an image model's compact network is the image one
        return _compact_image(kw["num_classes"])
    if compact:
        kw.update(name=compact_name(kw["name"], "text"), pretrained=False)
    return build_hf(source, compact=compact, **kw)


def _compact_image(num_classes: int) -> Backbone:
    return _build_timm(IMAGE_ARCH, name=compact_name(IMAGE_ARCH, "image"), num_classes=num_classes,
                       pretrained=False, model_args=IMAGE_ARGS)


def _from_zoo(name: str, *, num_classes: int, pretrained: bool, pooling: str, compact: bool = False) -> Backbone:
    entry = zoo.ZOO[name]
    if entry.kind == "timm":
        if compact:
            return _compact_image(num_classes)
        state = zoo.efficientnet_lite_state_dict(entry.lite or 0) if pretrained else None
        return _build_timm(entry.arch, name=name, num_classes=num_classes, pretrained=False, state_dict=state)
    path = str(zoo.minilm_l6_path())
    return _build_hf(path, name=name, num_classes=num_classes, pretrained=pretrained, pooling=pooling,
                     compact=compact)


def _is_timm_arch(name: str) -> bool:
    if "/" in name or Path(name).exists():
        return False
    import timm

    return name in timm.list_models()


def _check_timm_arch(arch: str, name: str) -> None:
    """A misspelt timm name is a typo to point out, not a download failure ("hub models need internet")."""
    import timm

    if ":" in arch or timm.is_model(arch):  # "hf-hub:org/repo" ids are resolved by timm itself
        return
    close = difflib.get_close_matches(arch, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {', '.join('timm/' + c for c in close)}?" if close else "`timm.list_models()` lists them"
    raise AjusteError(f"unknown timm model {name!r}: {hint}")


def _hub_call(name: str, fn: Any) -> Backbone:
    try:
        return fn()
    except AjusteError:
        raise
    except (OSError, RuntimeError, ValueError) as exc:
        text = " ".join(str(exc).split())
        # build_hf loads with trust_remote_code=False and use_safetensors=True: these two refusals come
        # from transformers and are not about the network, so they must not read as "needs internet".
        if "trust_remote_code" in text or "contains custom code" in text:
            raise AjusteError(
                f"model {name!r} needs its own Python code from the hub (trust_remote_code), and ajuste never runs "
                f"code that comes with a model (it would run with your permissions); use a model whose "
                f"architecture ships with transformers (a BERT, RoBERTa, GPT-2, Llama, ViT, ConvNeXt... model)"
            ) from None
        if "cannot be loaded with `safetensors`" in text:
            raise AjusteError(
                f"model {name!r} has no model.safetensors on the hub (its weights are pickle files such as "
                f"pytorch_model.bin), and unpickling a checkpoint can run arbitrary code, so ajuste loads "
                f"safetensors only; pick a model that ships safetensors, or convert it once in an environment you "
                f"trust (AutoModel.from_pretrained(id).save_pretrained(folder, safe_serialization=True)) and give "
                f"that folder"
            ) from None
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise AjusteError(
            f"could not load model {name!r} ({_clip(first, 160)}); hub models need internet — offline, use "
            f"{', '.join(_zoo_names())} or a local folder"
        ) from None


def _clip(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters at a word boundary, with "…" when cut: a quoted
    library message stays readable (no half word, no dangling quote of a URL cut in two)."""
    text = text.strip()
    if len(text) <= limit:
        return text
    cut = text[:limit - 1]
    if " " in cut:
        cut = cut[:cut.rindex(" ")]
    return cut.rstrip(" ,;:.(-") + "…"


def _zoo_names() -> list[str]:
    return list(ZOO)


def _model_hint(name: str) -> str:
    close = difflib.get_close_matches(name, _zoo_names(), n=3, cutoff=0.4)
    try:
        import timm

        close += [f"timm/{m}" for m in difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)]
    except ImportError:  # pragma: no cover
        pass
    if close:
        return f"did you mean {', '.join(close)}? (`ajuste models` lists the offline ones)"
    return f"offline models are {', '.join(_zoo_names())}; also timm/<arch>, hf:<org>/<model> or a local folder"


def rebuild_backbone(desc: dict[str, Any], run_dir: Path) -> Backbone:
    """Architecture (no weights, no network) from a run directory's ``backbone.json``."""
    if desc["kind"] == "timm":
        bb = _build_timm(desc["arch"], name=desc["name"], num_classes=desc["num_classes"], pretrained=False,
                         model_args=desc.get("model_args"))
    elif desc["kind"] == "hf":
        bb = _build_hf(desc["source"], name=desc["name"], num_classes=desc["num_classes"], pretrained=False,
                       pooling=desc["pooling"], config_dir=run_dir / "hf")
    elif desc["kind"] == "classical":
        bb = classical.rebuild(desc)
    else:
        raise AjusteError(f"{run_dir}/backbone.json: unknown backbone kind {desc['kind']!r}")
    bb.set_dropout(desc.get("dropout", 0.0))
    if desc.get("peft"):
        apply_peft(bb, desc["peft"])
    return bb
