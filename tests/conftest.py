"""Shared fixtures: tiny models (timm at 32 px, a 2-layer BERT) and tiny real data. No network."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


def shared_dataset(name: str) -> Path:
    p = SHARED / name
    if not p.exists():
        pytest.skip(f"shared data set {name} not present")
    return p


def write_sentiment_csv(path: Path, n: int) -> Path:
    """``n`` rows of text,label: three positive or negative words, "film" and the row number (pos/neg alternate)."""
    import random

    rng = random.Random(0)
    pos, neg = ["great", "lovely", "superb", "fine"], ["awful", "bad", "dreadful", "poor"]
    rows = ["text,label"]
    for i in range(n):
        label = i % 2
        words = [rng.choice(pos if label else neg) for _ in range(3)] + ["film", str(i)]
        rows.append(f"{' '.join(words)},{'pos' if label else 'neg'}")
    path.write_text("\n".join(rows) + "\n")
    return path


@pytest.fixture(scope="session")
def tiny_bert_dir(tmp_path_factory) -> Path:
    """A 2-layer, 32-wide BERT with all-MiniLM's tokenizer, randomly initialised, saved as an HF folder."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from ajuste.backbones.zoo import minilm_l6_path

    folder = tmp_path_factory.mktemp("tiny-bert")
    tok = AutoTokenizer.from_pretrained(str(minilm_l6_path()))
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                     intermediate_size=64, max_position_embeddings=128)
    torch.manual_seed(0)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder


@pytest.fixture()
def tiny_timm():
    from ajuste.backbones.factory import create_backbone

    return create_backbone("timm/test_efficientnet", num_classes=3, pretrained=False, dropout=0.1)


@pytest.fixture()
def tiny_text(tiny_bert_dir):
    from ajuste.backbones.factory import create_backbone

    return create_backbone(str(tiny_bert_dir), num_classes=3, pretrained=True, dropout=0.1)


@pytest.fixture()
def image_batch():
    import torch

    g = torch.Generator().manual_seed(0)
    return torch.randn(4, 3, 32, 32, generator=g), torch.tensor([0, 1, 2, 1])


@pytest.fixture()
def text_batch(tiny_text):
    import torch

    enc = tiny_text.tokenizer(["a fine day", "terrible, awful film", "okay I guess", "free prize, call now"],
                              padding=True, return_tensors="pt")
    return dict(enc), torch.tensor([0, 1, 2, 1])


@pytest.fixture()
def digits_small():
    """A stratified 300-example subset of the real built-in digits (fast to train on)."""
    return _digits_subset()


@pytest.fixture(scope="session")
def digits_small_shared():
    """digits_small, built once for the fixtures of wider scope (read only)."""
    return _digits_subset()


def _digits_subset():
    from ajuste.data.sources import load_data

    data = load_data("digits")
    rng = np.random.default_rng(0)
    idx = np.sort(np.concatenate([rng.choice(np.where(data.labels == c)[0], 30, replace=False)
                                  for c in range(10)]))
    return data.subset(idx)
