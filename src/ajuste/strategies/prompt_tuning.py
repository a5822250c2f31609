"""Prompt tuning (Lester et al. 2021) through peft: ``peft.num_virtual_tokens`` learned embeddings are
prepended to every input of a frozen text encoder; only they and the head train. Text models only."""

from __future__ import annotations

from typing import Any

from ajuste.backbones.adapters import register_method
from ajuste.strategies.base import register
from ajuste.strategies.peft_common import PeftStrategy, VirtualTokens


@register_method
class PromptTuningMethod(VirtualTokens):
    name = "prompt-tuning"

    def build(self, spec: dict[str, Any], task: Any) -> Any:
        import peft

        # Start from the embeddings of random vocabulary tokens: N(0, 1) prompts are far off the scale
        # of a pretrained embedding table and train slowly.
        return peft.PromptTuningConfig(task_type=task, num_virtual_tokens=spec["num_virtual_tokens"],
                                       prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB)


@register
class PromptTuning(PeftStrategy):
    name = "prompt-tuning"
    method = "prompt-tuning"
    cost_rank = 0.7
    summary = "learned virtual tokens prepended to the input (peft.num_virtual_tokens) + the head; text only"
    text_defaults = {"optim.lr": 3e-2, "optim.head_lr_mult": 0.03, "optim.weight_decay": 0.0}

    def search_space(self, modality: str, n_body_groups: int | None = None) -> dict[str, Any]:
        return {"peft.num_virtual_tokens": {"type": "categorical", "choices": [5, 10, 20, 50]},
                "optim.lr": {"type": "float", "low": 3e-3, "high": 1e-1, "log": True}}
