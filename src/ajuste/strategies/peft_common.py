"""Shared machinery of the parameter-efficient strategies (one file each: lora, ia3, bitfit,
prompt_tuning, prefix_tuning). ``prepare`` injects the adapters (``ajuste.backbones.adapters``); the
single phase trains what ``Phase.select`` matches plus the new head; ``report`` writes the trained
tensors to adapter.safetensors and puts the targets, sizes and shares in the run summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajuste.backbones.adapters import (
    PeftMethod,
    adapter_state_dict,
    adapter_stats,
    apply_peft,
    check_modality,
    get_method,
    patterns,
    resolve_spec,
)
from ajuste.config import RunConfig
from ajuste.io import atomic_save_safetensors
from ajuste.strategies.base import Phase, Strategy

ADAPTER_FILE = "adapter.safetensors"


class VirtualTokens(PeftMethod):
    """Prompt and prefix tuning: ``peft.num_virtual_tokens`` learned tokens, given to a text encoder."""

    select = r"(^|\.)prompt_encoder\."
    modalities = ("text",)
    why_not = "it prepends learned tokens to a text encoder's input"
    why_no_merge = "learned tokens are extra inputs"
    prepends_tokens = True

    def resolve(self, backbone: Any, pcfg: Any) -> dict[str, Any]:
        return {"method": self.name, "num_virtual_tokens": int(pcfg.num_virtual_tokens)}


class PeftStrategy(Strategy):
    method: str = ""
    # Auto values per modality (dotted keys), on top of the modality defaults.
    image_defaults: dict[str, Any] = {}
    text_defaults: dict[str, Any] = {}

    @property
    def peft_method(self) -> PeftMethod:
        return get_method(self.method)

    def defaults(self, modality: str) -> dict[str, Any]:
        check_modality(self.method, modality)  # fail before any model is loaded
        return dict(self.image_defaults if modality == "image" else self.text_defaults)

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        o = cfg.optim
        return [Phase(self.method, train_groups=None, epochs=cfg.train.epochs, lr=o.lr, head_lr=o.lr * o.head_lr_mult,
                      patience=cfg.train.patience, select=self.peft_method.select)]

    def prepare(self, backbone: Any, cfg: RunConfig) -> None:
        apply_peft(backbone, resolve_spec(backbone, self.method, cfg.peft))

    def report(self, backbone: Any, run_dir: Any) -> dict[str, Any]:
        # Full module names stay in backbone.json; the summary lists them per block (``conv_pw``).
        spec = dict(backbone.peft or {"method": self.method})
        modules, ff = spec.pop("target_modules", None), spec.pop("feedforward_modules", None)
        info: dict[str, Any] = dict(spec)
        if modules is not None:
            info["n_target_modules"] = len(modules)
        if ff is not None:
            info["feedforward"] = patterns(ff)
        info.update(adapter_stats(backbone, self.peft_method.select))
        if run_dir is not None:
            path = Path(run_dir) / ADAPTER_FILE
            atomic_save_safetensors(path, adapter_state_dict(backbone, self.peft_method.select),
                                    metadata={"format": "pt", "ajuste": f"{self.method} adapter + head"})
            info["adapter_file"] = ADAPTER_FILE
            info["adapter_bytes"] = path.stat().st_size
        return {"peft": info}

