"""Decoder-only language models (GPT-2, Llama, Qwen, Mistral...) as text classifiers.

A causal model's token t sees tokens ≤ t only, so the one summary of the whole text is the hidden state of the
last real token (what transformers' own ``*ForSequenceClassification`` heads of these families use); mean or
first-token pooling would average or read states that never saw the end of the text. The last real token is
found from the attention mask, so right and left padding give the same features, and positions are counted
over real tokens only (a left-padded text starts at position 0, as it would unpadded).
"""

from __future__ import annotations

from typing import Any

import torch

from ajuste.errors import AjusteError

# What marks a config as decoder-only, in order:
# 1. config.is_encoder_decoder: T5, BART, Whisper... are not (their AutoModel needs decoder inputs).
# 2. config.is_decoder, or an ``architectures`` entry ending in ForCausalLM / LMHeadModel (GPT2LMHeadModel):
#    what the checkpoint's author saved it as.
# 3. A randomly initialised or bare config has neither: its model_type is one transformers loads for causal
#    language modelling (AutoModelForCausalLM) but not for masked language modelling. That table is
#    transformers' own, so new families count without a list here; BERT and RoBERTa, which have a causal-LM
#    variant too, are in both and stay encoders.
_CAUSAL_SUFFIXES = ("ForCausalLM", "LMHeadModel")


def is_decoder_only(config: Any) -> bool:
    if getattr(config, "is_encoder_decoder", False):
        return False
    if getattr(config, "is_decoder", False):
        return True
    if any(str(a).endswith(_CAUSAL_SUFFIXES) for a in (getattr(config, "architectures", None) or [])):
        return True
    from transformers.models.auto.modeling_auto import (
        MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
        MODEL_FOR_MASKED_LM_MAPPING_NAMES,
    )

    kind = getattr(config, "model_type", "")
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES


def ensure_pad_token(tokenizer: Any, name: str) -> None:
    """Batches are padded with the tokenizer's pad token; GPT-2 and Llama tokenizers have none. The end-of-text
    token stands in (what their sequence-classification heads assume): the attention mask hides padding, so
    its value never reaches the features."""
    if tokenizer.pad_token is not None:
        return
    stand_in = tokenizer.eos_token or tokenizer.unk_token
    if stand_in is None:
        raise AjusteError(f"the tokenizer of {name} has no padding, end-of-text or unknown token to pad batches "
                          f"with; add a pad_token to its tokenizer_config.json")
    tokenizer.pad_token = stand_in


def last_token(hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """The hidden state of each row's last real token: (B, T, H) → (B, H). The largest position whose mask is 1,
    so it holds for right padding (real tokens first) and left padding (real tokens last) alike."""
    t = hidden.shape[1]
    mask = attention_mask[:, -t:]  # prompt tuning: hidden holds the T real tokens only
    pos = torch.arange(t, device=hidden.device).expand_as(mask)  # (B, T)
    idx = (pos * mask.to(pos.dtype)).argmax(dim=1)  # (B,)
    return hidden[torch.arange(hidden.shape[0], device=hidden.device), idx]


def positions(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids counting real tokens only: (B, T). Padding gets position 0 (masked out anyway)."""
    return (attention_mask.long().cumsum(dim=1) - 1).clamp(min=0) * attention_mask.long()
