"""What makes a Hugging Face model folder or hub id safe to open: nothing that comes with a model runs.

A model folder is data from wherever the user got it; these checks read its JSON files as plain JSON before
transformers opens it (see ``check_model_folder``), and apply the same rules to a hub model's parsed config.
"""

from __future__ import annotations

import contextlib
import json
import os
from pathlib import Path
from typing import Any

from ajuste.errors import AjusteError

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
                 "DistilBERT, GPT-2, Llama, ViT, ConvNeXt... model)")
# The JSON files of a folder that can name custom code (auto_map): model, tokenizer, image processor.
_CODE_FILES = ("config.json", "tokenizer_config.json", "preprocessor_config.json")


def check_model_folder(folder: Path, *, weights: bool, what: str = "model folder") -> None:
    """Refuse a local Hugging Face folder that would make transformers run code, before it is opened.

    Reads config.json, tokenizer_config.json and preprocessor_config.json (an image model's processor) as
    plain JSON (no transformers involved): custom code (``auto_map``) is refused. ``weights``: pretrained weights will be loaded, so the folder must hold
    them as safetensors; pickled weights (pytorch_model.bin, *.pt...) are refused without being opened."""
    config = _read_json(folder / "config.json")
    where = f"{what} {folder}"
    for file in _CODE_FILES:
        _refuse_custom_code(config if file == "config.json" else _read_json(folder / file), f"{where}: {file}")
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
