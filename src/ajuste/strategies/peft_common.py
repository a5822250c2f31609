"""Shared machinery of the parameter-efficient strategies (one file each: lora, ia3, bitfit,
prompt_tuning, prefix_tuning). ``prepare`` injects the adapters (``ajuste.backbones.adapters``); the
single phase trains what ``Phase.select`` matches plus the new head; ``report`` writes the trained
tensors to adapter.safetensors and puts the targets, sizes and shares in the run summary."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ajuste.config import RunConfig
from ajuste.strategies.base import Phase, Strategy

ADAPTER_FILE = "adapter.safetensors"


class PeftStrategy(Strategy):
    method: str = ""
    # Auto values per modality (dotted keys), on top of the modality defaults.
    image_defaults: dict[str, Any] = {}
    text_defaults: dict[str, Any] = {}

    def defaults(self, modality: str) -> dict[str, Any]:
        from ajuste.backbones.adapters import check_modality

        check_modality(self.method, modality)  # fail before any model is loaded
        return dict(self.image_defaults if modality == "image" else self.text_defaults)

    def phases(self, cfg: RunConfig, n_groups: int) -> list[Phase]:
        from ajuste.backbones.adapters import SELECT

        o = cfg.optim
        return [Phase(self.method, None, cfg.train.epochs, o.lr, o.lr * o.head_lr_mult, cfg.train.patience,
                      select=SELECT[self.method])]

    def prepare(self, backbone: Any, cfg: RunConfig) -> None:
        from ajuste.backbones.adapters import apply_peft, resolve_spec

        apply_peft(backbone, resolve_spec(backbone, self.method, cfg.peft))

    def report(self, backbone: Any, run_dir: Any) -> dict[str, Any]:
        from ajuste.backbones.adapters import SELECT, adapter_state_dict, adapter_stats, patterns
        from ajuste.io import atomic_save_safetensors

        # Full module names stay in backbone.json; the summary lists them per block (``conv_pw``).
        spec = dict(backbone.peft or {"method": self.method})
        modules, ff = spec.pop("target_modules", None), spec.pop("feedforward_modules", None)
        info: dict[str, Any] = dict(spec)
        if modules is not None:
            info["n_target_modules"] = len(modules)
        if ff is not None:
            info["feedforward"] = patterns(ff)
        info.update(adapter_stats(backbone, SELECT[self.method]))
        if run_dir is not None:
            path = Path(run_dir) / ADAPTER_FILE
            atomic_save_safetensors(path, adapter_state_dict(backbone, SELECT[self.method]),
                                    metadata={"format": "pt", "ajuste": f"{self.method} adapter + head"})
            info["adapter_file"] = ADAPTER_FILE
            info["adapter_bytes"] = path.stat().st_size
        return {"peft": info}

    def search_space(self, modality: str) -> dict[str, Any]:
        """Optuna-style ranges (dotted config keys) for ``ajuste tune``."""
        return {}
