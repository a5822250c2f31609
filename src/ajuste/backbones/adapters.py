"""Parameter-efficient fine-tuning of our backbones through the ``peft`` library (imported lazily).

The backbone's pretrained network (the timm model, or the Hugging Face encoder) is wrapped in place by
``peft.get_peft_model``. Our pooling and Linear head stay outside the wrapper, so the head always trains
and is saved with the model (peft's own task wrappers lose a new head on reload: peft #577/#876/#1070).
``backbone.peft`` holds the resolved spec (method, hyperparameters, the exact target modules); it goes to
backbone.json, and ``apply_peft`` on a rebuilt architecture recreates the same wrapper, so a run's
model.safetensors loads strictly.

BitFit needs no wrapper: it only selects which existing parameters train (the biases).
"""

from __future__ import annotations

import fnmatch
import re
import warnings
from typing import TYPE_CHECKING, Any

from ajuste.errors import ConfigError
from ajuste.registry import Registry, load_plugins

if TYPE_CHECKING:  # torch is imported where a model is looked at: listing the strategies (--help) needs none
    from torch import nn


class PeftMethod:
    """One parameter-efficient method, as ajuste uses it. Its strategy module (``ajuste.strategies.lora``…)
    defines a subclass and registers it with ``register_method``, beside the strategy that trains it.

    ``select`` is a regex over backbone parameter names: what trains besides the head. peft names its adapter
    weights ``<module>.lora_A.<adapter>.weight``, ``<module>.ia3_l.<adapter>``, ``prompt_encoder.*``.
    """

    name: str = ""
    select: str = ""
    mergeable: bool = False  # folds into the weights it modifies: a plain network afterwards
    wraps: bool = True  # injects modules through peft; False: selects existing parameters (BitFit)
    modalities: tuple[str, ...] = ("image", "text")
    why_not: str = ""  # for a modality it does not support: the reason, in a few words
    why_no_merge: str = "it does not change existing weights"  # when not mergeable
    prepends_tokens: bool = False  # learned tokens before a text encoder's input (prompt and prefix tuning)

    def resolve(self, backbone: Any, pcfg: Any) -> dict[str, Any]:
        """The concrete spec for this backbone (targets resolved to module names), from ``cfg.peft``: it goes
        to backbone.json, and ``build`` recreates the same adapters from it."""
        return {"method": self.name}

    def build(self, spec: dict[str, Any], task: Any) -> Any:
        """The peft config that injects ``spec`` (peft is imported by the caller; ``task``: peft's task type)."""
        raise NotImplementedError


PEFT_METHODS: Registry[PeftMethod] = Registry("PEFT method")


def register_method(cls: type[PeftMethod]) -> type[PeftMethod]:
    PEFT_METHODS.register(cls.name, cls())
    return cls


def get_method(name: str) -> PeftMethod:
    load_plugins()
    return PEFT_METHODS.get(name)


def mergeable_methods() -> list[str]:
    load_plugins()
    return [n for n in PEFT_METHODS.list() if PEFT_METHODS.get(n).mergeable]


# Attention projections by leaf name, most common naming first: (query, key, value) or one fused module.
_QKV_NAMES = [("query", "key", "value"), ("q_proj", "k_proj", "v_proj"), ("q_lin", "k_lin", "v_lin"),
              ("q", "k", "v"), ("query_key_value",), ("qkv",), ("Wqkv",), ("c_attn",), ("in_proj",)]


# --- structure ----------------------------------------------------------------------------------


def adapter_candidates(net: nn.Module, excluded: set[int]) -> dict[str, nn.Module]:
    """Linear layers and ungrouped convolutions of ``net`` (names as peft sees them), minus ``excluded``.
    Grouped/depthwise convolutions are left out: a low-rank update of a per-channel filter saves nothing."""
    from torch import nn

    out: dict[str, nn.Module] = {}
    for name, m in net.named_modules():
        if id(m) in excluded or not name:
            continue
        if isinstance(m, (nn.Conv1d, nn.Conv2d)) and m.groups != 1:
            continue
        if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d)) or type(m).__name__ == "Conv1D":  # GPT-2's transposed linear
            out[name] = m
    return out


def pattern_of(name: str) -> str:
    """A module's name inside its repeated block: ``encoder.layer.3.attention.self.query`` →
    ``attention.self.query``, ``blocks.2.1.conv_pw`` → ``conv_pw``; unrepeated modules keep their name."""
    return re.sub(r"^.*\.\d+\.", "", name)


def patterns(names: list[str]) -> list[str]:
    return list(dict.fromkeys(pattern_of(n) for n in names))


def layer_dims(m: nn.Module) -> tuple[int, int]:
    from torch import nn

    if isinstance(m, nn.Linear):
        return m.in_features, m.out_features
    if isinstance(m, (nn.Conv1d, nn.Conv2d)):
        return m.in_channels, m.out_channels
    w = getattr(m, "weight", None)  # transformers Conv1D: weight (in, out)
    return (int(w.shape[0]), int(w.shape[1])) if w is not None and w.ndim == 2 else (0, 0)


def _leaf(name: str) -> str:
    return name.rsplit(".", 1)[-1]


def _attention(cands: dict[str, nn.Module], roles: str) -> list[str]:
    """Attention projections for ``roles`` ("qv" or "kv") by the first naming scheme the model uses;
    a fused projection serves every role."""
    from torch import nn

    linear = [n for n, m in cands.items() if not isinstance(m, (nn.Conv1d, nn.Conv2d))]
    leaves = {_leaf(n) for n in linear}
    index = {"q": 0, "k": 1, "v": 2}
    for scheme in _QKV_NAMES:
        if all(s in leaves for s in scheme):
            wanted = set(scheme) if len(scheme) == 1 else {scheme[index[r]] for r in roles}
            return [n for n in linear if _leaf(n) in wanted]
    return []


def _is_gate(name: str, net_modules: dict[str, nn.Module]) -> bool:
    """Inside a squeeze-and-excitation gate: a tiny channel-attention MLP, not a feature transform."""
    parent = name.rsplit(".", 1)[0] if "." in name else ""
    cls = type(net_modules.get(parent)).__name__ if parent in net_modules else ""
    return _leaf(parent) == "se" or "Squeeze" in cls or cls.startswith(("SE", "EffectiveSE"))


def _pointwise(cands: dict[str, nn.Module]) -> list[str]:
    """1x1 convolutions (expand / project / head convs of MobileNet-style and ResNet blocks)."""
    from torch import nn

    return [n for n, m in cands.items() if isinstance(m, nn.Conv2d) and m.kernel_size == (1, 1)]


def _ffn_down(cands: dict[str, nn.Module]) -> list[str]:
    """Feed-forward down projections: the linear layers with the widest input that narrow it."""
    from torch import nn

    linear = {n: layer_dims(m) for n, m in cands.items() if not isinstance(m, (nn.Conv1d, nn.Conv2d))}
    if not linear:
        return []
    widest = max(i for i, _ in linear.values())
    return [n for n, (i, o) in linear.items() if i == widest and o < i]


def _fits(cands: dict[str, nn.Module], names: list[str], r: int) -> list[str]:
    return [n for n in names if min(layer_dims(cands[n])) >= r]


def stack_linear(cands: dict[str, nn.Module], stack: str) -> list[str]:
    """By module type: the nn.Linear and transformers Conv1D (GPT-2's transposed linear) candidates inside the
    layer stack named ``stack`` (embeddings, patch/stem convolutions and a pooler stay out)."""
    from torch import nn

    return [n for n, m in cands.items() if n.startswith(stack + ".") and not isinstance(m, (nn.Conv1d, nn.Conv2d))]


def auto_lora_targets(cands: dict[str, nn.Module], r: int, *,
                      net_modules: dict[str, nn.Module] | None = None, stack: str = "") -> list[str]:
    """Attention query/value projections (transformers) where the naming scheme says which they are; else,
    given the network's layer stack (``stack``: a Hugging Face model's), every linear layer inside it; else the
    1x1 convolutions outside SE gates (convnets); else every candidate. Layers narrower than ``r`` are skipped."""
    chosen = _attention(cands, "qv")
    if not chosen and stack:
        chosen = stack_linear(cands, stack)
    if not chosen:
        mods = net_modules or {}
        chosen = [n for n in _pointwise(cands) if not _is_gate(n, mods)] or list(cands)
    fitting = _fits(cands, chosen, r)
    if chosen and not fitting:
        room = max(min(layer_dims(cands[n])) for n in chosen)
        raise ConfigError(f"peft.r={r} is larger than every auto-selected layer ({', '.join(patterns(chosen)[:4])}"
                          f"; the largest allows r ≤ {room}): use peft.r ≤ {room}")
    return fitting


def auto_ia3_targets(cands: dict[str, nn.Module], *, net_modules: dict[str, nn.Module] | None = None
                     ) -> tuple[list[str], list[str]]:
    """IA3 (Liu et al. 2022): rescale keys, values and the feed-forward down projection's input; for
    convnets, the 1x1 convolutions, with the channel-reducing (project) ones rescaled on their input."""
    attn = _attention(cands, "kv")
    if attn:
        ff = _ffn_down(cands)
        return attn + [n for n in ff if n not in attn], ff
    mods = net_modules or {}
    convs = [n for n in _pointwise(cands) if not _is_gate(n, mods)] or list(cands)
    ff = [n for n in convs if layer_dims(cands[n])[0] > layer_dims(cands[n])[1]]
    return convs, ff


def match_targets(user: list[str], cands: dict[str, nn.Module], *, model: str) -> list[str]:
    """Module names matching the user's patterns: an exact name, a dotted suffix (``query``,
    ``attention.self.query``), a glob (``*.conv_p*``) or a regex. A pattern matching nothing is an error."""
    chosen: list[str] = []
    for pat in user:
        try:
            rx = re.compile(pat)
        except re.error:
            rx = None
        hits = [n for n in cands if n == pat or n.endswith("." + pat) or fnmatch.fnmatchcase(n, pat)
                or (rx is not None and rx.fullmatch(n))]
        if not hits:
            known = patterns(list(cands))
            shown = ", ".join(known[:10]) + (f" (+{len(known) - 10} more)" if len(known) > 10 else "")
            raise ConfigError(f"peft.targets: {pat!r} matches no linear/conv module of {model}; "
                              f"modules that can take an adapter: {shown}")
        chosen += [n for n in hits if n not in chosen]
    return chosen


# --- spec, injection, merge ---------------------------------------------------------------------


def resolve_spec(backbone: Any, method: str, pcfg: Any) -> dict[str, Any]:
    """The concrete adapter spec for this backbone: ``cfg.peft`` with targets resolved to module names."""
    check_modality(method, backbone.modality)
    return get_method(method).resolve(backbone, pcfg)


def user_targets(backbone: Any, pcfg: Any) -> tuple[dict[str, nn.Module], list[str] | None]:
    """The backbone's adapter candidates, and the modules the user named in ``peft.targets`` (None: auto)."""
    cands = backbone.adapter_candidates()
    user = pcfg.target_list()
    if user is None:
        return cands, None
    if [u.lower() for u in user] == ["all-linear"]:  # by module type (peft's keyword of the same name)
        return cands, backbone.linear_targets()
    return cands, match_targets(user, cands, model=getattr(backbone, "name", type(backbone).__name__))


def check_modality(method: str, modality: str) -> None:
    m = get_method(method)
    if modality not in m.modalities:
        others = [n for n in PEFT_METHODS.list() if modality in PEFT_METHODS.get(n).modalities]
        raise ConfigError(f"{method} is not supported for {modality} models: {m.why_not}; use "
                          f"{', '.join(others[:-1])} or {others[-1]}" if others else
                          f"{method} is not supported for {modality} models: {m.why_not}")


def apply_peft(backbone: Any, spec: dict[str, Any]) -> None:
    """Inject the adapters of ``spec`` (from ``resolve_spec`` or a backbone.json) into ``backbone``."""
    method = get_method(spec["method"])
    if backbone.peft is not None:
        raise ConfigError(f"this backbone already has {backbone.peft['method']} adapters")
    if not method.wraps:
        backbone.peft = dict(spec)
        return
    import peft

    # Text encoders get peft's feature-extraction wrapper: it is the one that prepends prompts/prefixes
    # (for LoRA/IA3 it just forwards). Image models get the plain wrapper.
    task = peft.TaskType.FEATURE_EXTRACTION if backbone.modality == "text" else None
    config = method.build(spec, task)
    inner = getattr(backbone, backbone.inner_attr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        wrapped = peft.get_peft_model(inner, config)
    setattr(backbone, backbone.inner_attr, wrapped)
    backbone.peft = dict(spec)


def merge_adapters(backbone: Any) -> None:
    """Fold LoRA/IA3 adapters into the weights they modify and drop the wrapper: a plain backbone."""
    spec = backbone.peft
    if spec is None:
        return
    method = get_method(spec["method"])
    if not method.wraps:  # nothing was injected: the trained parameters are ordinary weights
        backbone.peft = None
        return
    if not method.mergeable:
        raise ConfigError(f"{method.name} adapters cannot be merged into the weights ({method.why_no_merge}); only {' and '.join(mergeable_methods())} merge; export without --merge keeps "
                          f"the adapter")
    inner = getattr(backbone, backbone.inner_attr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        setattr(backbone, backbone.inner_attr, inner.merge_and_unload())
    backbone.peft = None


def adapter_stats(backbone: Any, select: str) -> dict[str, Any]:
    """Adapter (trained, excluding the head) and head parameter counts, and the adapter's share of
    the backbone without its head."""
    selected = backbone.trainable_selection(None, select=select)
    head_ids = {id(p) for _, p in backbone.layer_groups()[-1].params}
    adapter = sum(p.numel() for p in selected if id(p) not in head_ids)
    head = sum(p.numel() for p in selected if id(p) in head_ids)
    body_total = backbone.total_parameters() - head
    return {"adapter_params": int(adapter), "head_params": int(head),
            "adapter_share": adapter / body_total if body_total else 0.0}


def adapter_state_dict(backbone: Any, select: str) -> dict[str, Any]:
    """The trained tensors only (adapter + head), by backbone parameter name."""
    ids = {id(p) for p in backbone.trainable_selection(None, select=select)}
    return {n: p.detach() for n, p in backbone.named_parameters() if id(p) in ids}
