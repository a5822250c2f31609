"""What a run writes to ``model.safetensors``: the tensors it trained, plus a reference to its base weights.

A linear probe of MiniLM trains 0.01% of its 22.7 M parameters; writing the whole encoder into every run made a
study of 9 runs hold 9 copies of it. Instead, as a PEFT adapter does, a run from pretrained weights stores only
the tensors that differ from what loading its model name gives (the head, adapters, the groups it fine-tuned,
BatchNorm statistics that moved), and records in the file's header which model the others come from, how many
they are and a content hash of them (BLAKE2b over names, dtypes, shapes and bytes). ``load_run`` loads the
base, checks that hash, and lays the stored tensors over it: a base that is missing or not the same weights
ends in one line. A run that changed most of its bytes (full fine-tuning, scratch) is stored in full, as before.
The model a study hands over (``best_model``) and every export are written in full (`materialise`).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import torch

from ajuste.backbones.adapters import apply_peft
from ajuste.backbones.factory import create_backbone
from ajuste.backbones.zoo import ZOO
from ajuste.errors import AjusteError
from ajuste.io import atomic_save_safetensors, atomic_write_json

BASE_KEY = "base"  # the safetensors header field that holds the reference
MIN_SHARE = 0.5  # store by reference only when at least this share of the bytes is the base's


def tensor_digest(state: dict[str, torch.Tensor], keys: list[str]) -> str:
    """BLAKE2b-128 of the named tensors: names, dtypes, shapes and bytes, in name order."""
    h = hashlib.blake2b(digest_size=16)
    for k in sorted(keys):
        t = state[k].detach().cpu().contiguous()
        h.update(f"{k}|{t.dtype}|{tuple(t.shape)}|".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


def base_name(desc: dict[str, Any]) -> str:
    """The model name that loads this backbone's pretrained weights again (a local folder by its full path)."""
    name = str(desc["name"])
    if name in ZOO or desc.get("kind") != "hf":
        return name
    source = Path(str(desc.get("source", name))).expanduser()
    return str(source.resolve()) if source.is_dir() else name


def base_backbone(desc: dict[str, Any], name: str | None = None) -> Any:
    """The backbone of ``desc`` (backbone.json) with its pretrained weights and its adapters, untrained."""
    with torch.random.fork_rng(devices=[]):  # a new head draws random numbers: not the caller's stream
        bb = create_backbone(name or base_name(desc), num_classes=int(desc["num_classes"]), pretrained=True,
                             dropout=float(desc.get("dropout", 0.0)), pooling=desc.get("pooling", "auto"))
        if desc.get("peft"):
            apply_peft(bb, desc["peft"])
    return bb


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def save(path: Path, backbone: Any, metadata: dict[str, str], *, pretrained: bool) -> dict[str, Any] | None:
    """Write ``backbone``'s weights to ``path``: by reference to the base when the run started from pretrained
    weights and most bytes are still the base's, else in full. Returns the reference (None: in full)."""
    state = {k: v.detach().cpu() for k, v in backbone.state_dict().items()}
    ref = _reference(backbone, state) if pretrained else None
    if ref is not None:
        kept = set(ref.pop("keys"))
        state = {k: v for k, v in state.items() if k not in kept}
        metadata = {**metadata, BASE_KEY: json.dumps(ref)}
    atomic_save_safetensors(path, state, metadata=metadata)
    return ref


def _reference(backbone: Any, state: dict[str, torch.Tensor]) -> dict[str, Any] | None:
    desc = backbone.describe()
    try:
        base = base_backbone(desc).state_dict()
    except AjusteError:  # the base does not load again here (a moved folder, no hub access): keep it all
        return None
    same = [k for k, v in state.items() if k in base and base[k].shape == v.shape and base[k].dtype == v.dtype
            and torch.equal(base[k].cpu(), v)]
    total = sum(_nbytes(v) for v in state.values())
    shared = sum(_nbytes(state[k]) for k in same)
    if not same or shared < MIN_SHARE * total:
        return None
    return {"model": base_name(desc), "tensors": len(same), "bytes": shared, "digest": tensor_digest(base, same),
            "keys": same}


def reference(metadata: dict[str, str]) -> dict[str, Any] | None:
    """The base reference of a weights file's header, or None for weights stored in full."""
    raw = metadata.get(BASE_KEY)
    if raw is None:
        return None
    try:
        ref = json.loads(raw)
    except json.JSONDecodeError:
        ref = None
    if not isinstance(ref, dict) or not {"model", "tensors", "digest"} <= ref.keys():
        raise AjusteError("the weights header's base reference is damaged; restore the run's model.safetensors or "
                          "retrain")
    return ref


def with_base(run_dir: Path, desc: dict[str, Any], stored: dict[str, torch.Tensor],
              ref: dict[str, Any]) -> tuple[Any, dict[str, torch.Tensor]]:
    """The base backbone and the complete state: the base's tensors that the run did not store, checked against
    the reference, under the stored ones."""
    model = ref["model"]
    try:
        base = base_backbone(desc, model)
    except AjusteError as exc:
        raise AjusteError(f"{run_dir} stores only the {len(stored)} tensors it trained; the other {ref['tensors']} "
                          f"come from {model}, which does not load here ({exc}); load it where that model is "
                          f"available, or export it in full there (`ajuste export {run_dir} --format ajuste`)") from None
    base_state = base.state_dict()
    rest = [k for k in base_state if k not in stored]
    if len(rest) != ref["tensors"] or tensor_digest(base_state, rest) != ref["digest"]:
        raise AjusteError(f"{run_dir} was trained from other weights of {model} than load here (the content hash of "
                          f"the {ref['tensors']} tensors it did not store differs): the model's files changed, or "
                          f"the hub holds a newer revision; use the weights it was trained from, or retrain")
    return base, {**{k: base_state[k] for k in rest}, **stored}


def materialise(run_dir: Path) -> bool:
    """Rewrite a run's weights in full (the model a study hands over); True when they were by reference."""
    from safetensors import safe_open

    from ajuste.training.run_eval import load_run, weights_digest

    weights = Path(run_dir) / "model.safetensors"
    with safe_open(str(weights), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    if reference(meta) is None:
        return False
    run = load_run(run_dir)
    meta.pop(BASE_KEY)
    atomic_save_safetensors(weights, run.backbone.state_dict(), metadata=meta)
    summary_path = Path(run_dir) / "summary.json"
    if isinstance(run.summary, dict):
        summary = dict(run.summary)
        summary["weights_sha256"] = weights_digest(weights)
        summary.pop("weights_base", None)
        atomic_write_json(summary_path, summary)
    return True
