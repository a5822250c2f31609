"""``--format hf``: text runs become a Hugging Face folder (the encoder, ajuste's pooling and the linear head as a
few lines of custom code) for ``AutoModelForSequenceClassification.from_pretrained(dir, trust_remote_code=True)``;
image runs become timm's hub format for ``timm.create_model("local-dir:" + dir, pretrained=True)``. Each is
checked by loading it that way."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ajuste.errors import AjusteError
from ajuste.export.common import encode_probes, quiet, save_tokenizer
from ajuste.io import atomic_save_safetensors, atomic_write_json, atomic_write_text

# Written next to the weights of a text export. BERT's own *ForSequenceClassification puts a pooler
# (dense + tanh on the first token) before the classifier, which no weight choice turns into ajuste's
# mean or first-token pooling, so the exact model needs these few lines of custom code.
_HF_MODELING = '''"""A text classifier exported by ajuste: a Hugging Face encoder, ajuste's pooling, a linear head.

Load with AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).
"""

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


class AjusteTextConfig(PretrainedConfig):
    model_type = "ajuste_text_classifier"

    def __init__(self, encoder_config=None, pooling="mean", temperature=1.0, **kwargs):
        self.encoder_config = dict(encoder_config or {})  # the encoder's own config.json
        self.pooling = pooling  # "mean" (over non-padding tokens) or "cls" (first token)
        # temperature scaling (Guo et al. 2017) fitted by ajuste on validation: logits are divided by it, so their
        # softmax is calibrated; the arg-max (the label) is the same as without it
        self.temperature = float(temperature)
        super().__init__(**kwargs)


class AjusteForSequenceClassification(PreTrainedModel):
    config_class = AjusteTextConfig
    base_model_prefix = "encoder"

    def __init__(self, config):
        super().__init__(config)
        enc = dict(config.encoder_config)
        self.encoder = AutoModel.from_config(AutoConfig.for_model(enc.pop("model_type"), **enc))
        hidden = getattr(self.encoder.config, "hidden_size", None) or self.encoder.config.dim
        self.classifier = nn.Linear(hidden, config.num_labels)
        self.post_init()

    def _init_weights(self, module):
        pass  # every weight is in model.safetensors

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, labels=None, **kwargs):
        given = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
        hidden = self.encoder(**{k: v for k, v in given.items() if v is not None}).last_hidden_state  # (B, T, H)
        if self.config.pooling == "cls":
            pooled = hidden[:, 0]
        else:
            if attention_mask is None:
                attention_mask = torch.ones(hidden.shape[:2], device=hidden.device)
            mask = attention_mask.unsqueeze(-1).to(hidden.dtype)  # (B, T, 1)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1.0)
        logits = self.classifier(pooled) / self.config.temperature  # (B, num_labels), calibrated
        loss = None
        if labels is not None and self.config.problem_type == "regression":  # logits: values in the target's units
            loss = nn.functional.mse_loss(logits.squeeze(-1), labels.to(logits.dtype))
        elif labels is not None and self.config.problem_type == "multi_label_classification":
            loss = nn.functional.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        elif labels is not None:
            loss = nn.functional.cross_entropy(logits, labels)
        return SequenceClassifierOutput(loss=loss, logits=logits)
'''


def write(bb: Any, run: Any, stage: Path, probes: list[Any]) -> None:
    if bb.modality == "image":
        return _write_timm(bb, run, stage)
    import transformers

    atomic_write_text(stage / "modeling_ajuste.py", _HF_MODELING)
    enc = bb.net
    state = {f"encoder.{k}": v for k, v in enc.state_dict().items()}
    state.update({f"classifier.{k}": v for k, v in _head(bb.classifier.state_dict(), run.task).items()})
    atomic_save_safetensors(stage / "model.safetensors", state, metadata={"format": "pt"})
    config = {
        "architectures": ["AjusteForSequenceClassification"],
        "auto_map": {"AutoConfig": "modeling_ajuste.AjusteTextConfig",
                     "AutoModelForSequenceClassification": "modeling_ajuste.AjusteForSequenceClassification"},
        "model_type": "ajuste_text_classifier",
        "pooling": bb.pooling,
        "temperature": run.temperature,
        "encoder_config": enc.config.to_dict(),
        "id2label": {str(i): c for i, c in enumerate(run.classes)},
        "label2id": {c: i for i, c in enumerate(run.classes)},
        **_task_config(run.task),
        "dtype": "float32",
        "transformers_version": transformers.__version__,
    }
    atomic_write_json(stage / "config.json", config)
    save_tokenizer(bb, run, stage)
    return None


def check(stage: Path, bb: Any, run: Any, probes: list[Any]) -> list[torch.Tensor]:
    if bb.modality == "image":
        return _check_timm(stage, probes)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    with quiet():
        model, info = AutoModelForSequenceClassification.from_pretrained(
            stage, trust_remote_code=True, output_loading_info=True)
        tok = AutoTokenizer.from_pretrained(stage, trust_remote_code=True)
    bad = [k for k in ("missing_keys", "unexpected_keys", "mismatched_keys") if info.get(k)]
    if bad:
        raise AjusteError(f"export check failed: the Hugging Face folder loads with {bad[0].replace('_', ' ')} "
                          f"{sorted(info[bad[0]])[:3]}; the export is not usable")
    model.eval()
    outs = []
    with torch.no_grad():
        for second in (False, True):
            # The saved tokenizer on its own (no max_length): checks the truncation length travelled too.
            enc = encode_probes(tok, second=second, pair=getattr(run.preprocessing, "text_pair", False))
            outs.append(model(**enc).logits.float())
    return outs


def _timm_data_config(pre: Any) -> dict[str, Any]:
    # Arrays (digits, MedMNIST) are resized to a square ("squash"); photos are resized to base_size
    # on the shorter side and centre-cropped to image_size: crop_pct = image_size / base_size.
    square = bool(pre.square)
    return {"input_size": (3, int(pre.image_size), int(pre.image_size)), "mean": tuple(pre.mean),
            "std": tuple(pre.std), "interpolation": pre.interpolation,
            "crop_pct": 1.0 if square else float(pre.image_size) / float(pre.base_size),
            "crop_mode": "squash" if square else "center"}


def _write_timm(bb: Any, run: Any, stage: Path) -> None:
    from timm.models import save_for_hf

    model = bb.net
    head = model.get_classifier()
    kept = {k: v.detach().clone() for k, v in head.state_dict().items()}
    try:
        with torch.no_grad():  # a regression run's scale into the head's weights, for the file only
            head.load_state_dict(_head(kept, run.task))
        # model_args: a compact net's channel widths, which timm.create_model("local-dir:...") applies.
        save_for_hf(model, str(stage), model_config={"label_names": list(run.classes)}, safe_serialization=True,
                    data_config=_timm_data_config(run.preprocessing), model_args=bb.model_args or None)
    finally:
        head.load_state_dict(kept)
    cfg = json.loads((stage / "config.json").read_text())
    cfg.update(_task_config(run.task))
    # The architecture's default weights tag (e.g. "in1k") would claim weights this file does not hold.
    cfg.get("pretrained_cfg", {}).pop("tag", None)
    # timm's format holds a plain network: the run's temperature goes in the config, for users to divide by
    cfg["ajuste_calibration"] = {"temperature": run.temperature,
                                 "use": "probabilities = softmax(model(x) / temperature)"}
    atomic_write_json(stage / "config.json", cfg)


def _head(state: dict[str, torch.Tensor], task: Any) -> dict[str, torch.Tensor]:
    """The linear head's weights as exported: a regression run's head predicts the standardised target, so its
    weights and bias take the training split's sd and mean (w·sd, b·sd + mean), and the exported network answers
    in the target's units, as `predict` does. Other tasks: unchanged."""
    if task is None or task.kind != "regression":
        return state
    return {k: v * task.std + (task.mean if k.endswith("bias") else 0.0) for k, v in state.items()}


def _task_config(task: Any) -> dict[str, Any]:
    """config.json keys of a multi-label or regression run: Hugging Face's ``problem_type`` and how to read the
    outputs (the run's task.json: thresholds, the target's scale)."""
    if task is None or task.kind == "classification":
        return {}
    use = ("value = model(x), in the target's units" if task.kind == "regression" else
           "probabilities = sigmoid(model(x)); label k is present where probabilities[k] >= thresholds[k]")
    return {"problem_type": "regression" if task.kind == "regression" else "multi_label_classification",
            "ajuste_task": {**task.to_json(), "use": use}}


def _check_timm(stage: Path, probes: list[Any]) -> list[torch.Tensor]:
    import timm

    with quiet():
        model = timm.create_model(f"local-dir:{stage}", pretrained=True).eval()
    # as a user of the folder would: the logits divided by the temperature its config.json names
    t = float(json.loads((stage / "config.json").read_text()).get("ajuste_calibration", {}).get("temperature", 1.0))
    with torch.no_grad():
        return [model(p).float() / t for p in probes]
