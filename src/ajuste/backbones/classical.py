"""Classical features under a linear head: the floor every deep arm of a study is measured against.

Two feature extractors, each a ``Backbone`` whose only trainable part is the linear head, so a classical run
is saved, loaded, evaluated, predicted with and exported like any other (no pickle anywhere: the vocabulary
and settings are JSON in backbone.json, the numbers are tensors in model.safetensors):

- text: TF-IDF of word 1–2-grams and of character 2–5-grams within word boundaries, each block L2-normalised
  (scikit-learn's ``TfidfVectorizer`` with ``sublinear_tf``), as in the strong linear baselines of text
  classification (Wang & Manning 2012, "Baselines and bigrams"; Joulin et al. 2016, fastText). The
  vectorizers are fitted on the training split; their analyzers are rebuilt from the saved settings, so
  the "tokenizer" here maps a text to the ids and counts of its known n-grams and ``features`` turns them
  into the TF-IDF vector in torch. A text pair (NLI, paraphrase) shares one vocabulary, fitted on both sides,
  and is four blocks: the TF-IDF of the first text u, of the second v, their product u∘v (the n-grams they
  share, weighted; its sum per block is their cosine) and |u−v| (the n-grams of one side only), the
  combination of InferSent (Conneau et al. 2017). A linear model on u and v alone cannot tell "same" from
  "different" when either side alone says nothing; u∘v and |u−v| make overlap a linear feature.
- images: a histogram of oriented gradients (Dalal & Triggs 2005; shape and texture), colour histograms
  (Swain & Ballard 1991; colour distribution) and a tiny 8×8 thumbnail (Torralba et al. 2008; coarse
  layout), standardised. These are what image classification used before learned features; a random-
  feature model would be a weaker and less recognisable floor.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ajuste.backbones.base import Backbone, LayerGroup
from ajuste.errors import AjusteError

TEXT_FAMILY = "tfidf"
IMAGE_FAMILY = "hog"
# Character n-grams inside word boundaries; word unigrams and bigrams. min_df=2 drops the n-grams seen in one
# training text only (typos, ids): they cannot generalise and would only grow the head.
WORD = {"analyzer": "word", "ngram_range": [1, 2], "min_df": 2, "lowercase": True}
CHAR = {"analyzer": "char_wb", "ngram_range": [2, 5], "min_df": 2, "lowercase": True}

HOG_CELLS = 8  # the image is cut into 8×8 cells whatever its size: the feature length is fixed
HOG_BINS = 9  # unsigned orientations, 20° each (Dalal & Triggs)
COLOUR_BINS = 16  # per channel
JOINT_BINS = 4  # per channel of the joint RGB histogram (4³ = 64 colours)
THUMB = 8


def _vectorizer(settings: dict[str, Any], max_features: int | None = None) -> Any:
    from sklearn.feature_extraction.text import TfidfVectorizer

    return TfidfVectorizer(analyzer=settings["analyzer"], ngram_range=tuple(settings["ngram_range"]),
                           min_df=settings["min_df"], lowercase=settings["lowercase"], sublinear_tf=True,
                           max_features=max_features, dtype=np.float32)


class BagTokenizer:
    """Text → ids and counts of the n-grams the vectorizers know (``attention_mask`` carries the counts).

    Ids start at 1 (0 pads a batch); the word block comes first, then the character block. A bag of n-grams
    has no order, so nothing is truncated: ``max_length`` is accepted and ignored, and the whole text counts,
    as it did when the vectorizers were fitted. Given a ``text_pair`` (as a Hugging Face tokenizer is), the
    second texts' ids follow the first's vocabulary: id ``size + i`` is term ``i`` of the second text."""

    pad_token_id = 0

    def __init__(self, blocks: list[tuple[dict[str, Any], list[str]]]) -> None:
        self.analyzers = []
        self.vocab: list[dict[str, int]] = []
        start = 1
        for settings, terms in blocks:
            self.analyzers.append(_vectorizer(settings).build_analyzer())
            self.vocab.append({t: start + i for i, t in enumerate(terms)})
            start += len(terms)
        self.size = start - 1  # terms in all blocks

    def encode(self, text: str) -> tuple[list[int], list[int]]:
        counts: dict[int, int] = {}
        for analyze, vocab in zip(self.analyzers, self.vocab):
            for gram in analyze(text):
                i = vocab.get(gram)
                if i is not None:
                    counts[i] = counts.get(i, 0) + 1
        if not counts:
            return [0], [0]  # nothing known: one padding entry, an all-zero vector
        ids = sorted(counts)
        return ids, [counts[i] for i in ids]

    def _encode_pair(self, first: str, second: str) -> tuple[list[int], list[int]]:
        (ia, ca), (ib, cb) = self.encode(first), self.encode(second)
        kept = [(i, c) for i, c in zip(ia, ca) if i] + [(self.size + i, c) for i, c in zip(ib, cb) if i]
        return ([i for i, _ in kept], [c for _, c in kept]) if kept else ([0], [0])

    def __call__(self, texts: Any, text_pair: Any = None, *, padding: bool = False,
                 return_tensors: str | None = None, **_: Any) -> dict[str, Any]:
        """Lists of ids and counts per text (or per pair, with ``text_pair``); ``padding=True`` pads them to the
        longest (id 0, count 0), and ``return_tensors="pt"`` returns (B, L) tensors, as a Hugging Face
        tokenizer does."""
        texts = [texts] if isinstance(texts, str) else list(texts)
        if text_pair is not None:
            seconds = [text_pair] if isinstance(text_pair, str) else list(text_pair)
            pairs = [self._encode_pair(str(a), str(b)) for a, b in zip(texts, seconds)]
        else:
            pairs = [self.encode(str(t)) for t in texts]
        out: dict[str, Any] = {"input_ids": [p[0] for p in pairs], "attention_mask": [p[1] for p in pairs]}
        if padding or return_tensors:
            width = max(len(ids) for ids in out["input_ids"])
            out = {k: [row + [0] * (width - len(row)) for row in rows] for k, rows in out.items()}
        if return_tensors == "pt":
            out = {k: torch.tensor(rows, dtype=torch.long) for k, rows in out.items()}
        return out


class _Classical(Backbone):
    """What both extractors share: no trainable body, a linear head on fixed features."""

    family = ""

    def __init__(self, num_features: int, num_classes: int) -> None:
        super().__init__()
        self.head = nn.Linear(num_features, num_classes)

    @property
    def classifier(self) -> nn.Linear:
        return self.head

    @property
    def net(self) -> nn.Module:
        return self

    def _body_groups(self) -> list[LayerGroup]:
        return []

    def reset_head(self, num_classes: int) -> None:
        self.head = nn.Linear(self.head.in_features, num_classes)

    def reinitialize(self, *, seed: int | None = None) -> None:
        """Nothing pretrained to forget: the features are fixed functions of the input."""

    def set_linear(self, coef: np.ndarray, intercept: np.ndarray) -> None:
        """The head from a fitted linear model: ``coef`` (classes, features), ``intercept`` (classes,)."""
        with torch.no_grad():
            self.head.weight.copy_(torch.as_tensor(np.asarray(coef), dtype=self.head.weight.dtype))
            self.head.bias.copy_(torch.as_tensor(np.asarray(intercept), dtype=self.head.bias.dtype))


class TfidfBackbone(_Classical):
    modality = "text"
    family = TEXT_FAMILY

    def __init__(self, blocks: list[tuple[dict[str, Any], list[str]]], num_classes: int, *,
                 name: str = "tf-idf", pair: bool = False) -> None:
        sizes = [len(terms) for _, terms in blocks]
        super().__init__(sum(sizes) * (4 if pair else 1), num_classes)  # a pair: u, v, u∘v, |u−v|
        self.name = name
        self.pair = pair
        self.blocks = blocks
        self.tokenizer = BagTokenizer(blocks)
        self.register_buffer("idf", torch.ones(sum(sizes)))
        # block b covers the feature columns [bounds[b], bounds[b+1])
        self.bounds = [0, *np.cumsum(sizes).tolist()]
        self.vectorizers: list[Any] = []  # the fitted scikit-learn vectorizers (training only; not saved)

    @classmethod
    def fit(cls, texts: list[Any], num_classes: int, *, max_features: int) -> "TfidfBackbone":
        """Vectorizers fitted on ``texts`` (the training split), each keeping its ``max_features`` most
        frequent n-grams; for text pairs, one vocabulary fitted on both sides."""
        pair = bool(texts) and isinstance(texts[0], tuple)
        corpus = [t for p in texts for t in p] if pair else texts
        fitted, blocks = [], []
        for settings in (WORD, CHAR):
            vec = _vectorizer(settings, max_features)
            try:
                vec.fit(corpus)
            except ValueError:  # no n-gram in two texts or more (tiny data): this block is left out
                continue
            terms = [""] * len(vec.vocabulary_)
            for term, col in vec.vocabulary_.items():
                terms[col] = term
            fitted.append(vec)
            blocks.append((settings, terms))
        if not blocks:
            raise AjusteError("the classical arm found no word or character n-gram in two training texts or more; "
                              "the texts are too few or too short for TF-IDF")
        bb = cls(blocks, num_classes, pair=pair)
        with torch.no_grad():
            bb.idf.copy_(torch.from_numpy(np.concatenate([v.idf_ for v in fitted]).astype(np.float32)))
        bb.vectorizers = fitted
        return bb

    def matrix(self, texts: list[Any]) -> Any:
        """The training-time TF-IDF matrix (scipy sparse, one row per text or pair) from the fitted vectorizers;
        a pair's row is [u, v, u∘v, |u−v|] as in ``features``."""
        import scipy.sparse as sp

        if not self.pair:
            return sp.hstack([v.transform(texts) for v in self.vectorizers], format="csr")
        u, v = (sp.hstack([vec.transform([t[k] for t in texts]) for vec in self.vectorizers], format="csr")
                for k in (0, 1))
        return sp.hstack([u, v, u.multiply(v), abs(u - v)], format="csr")

    def _tfidf(self, tf: torch.Tensor) -> torch.Tensor:
        """(B, terms) counts → TF-IDF, each block L2-normalised, as scikit-learn's vectorizers give it."""
        tf = torch.where(tf > 0, 1.0 + torch.log(tf.clamp_min(1.0)), torch.zeros_like(tf))  # sublinear tf
        x = tf * self.idf
        return torch.cat([F.normalize(x[:, a:b], dim=1) for a, b in zip(self.bounds[:-1], self.bounds[1:])], dim=1)

    def features(self, inputs: Any) -> torch.Tensor:
        ids, counts = inputs["input_ids"], inputs["attention_mask"].to(self.idf.dtype)  # (B, L) each
        n = self.idf.numel()
        dense = torch.zeros(ids.shape[0], n * (2 if self.pair else 1) + 1, dtype=self.idf.dtype, device=ids.device)
        dense.scatter_add_(1, ids, counts)
        if not self.pair:
            return self._tfidf(dense[:, 1:])  # (B, num_features)
        u, v = self._tfidf(dense[:, 1:n + 1]), self._tfidf(dense[:, n + 1:])  # (B, n) each
        return torch.cat([u, v, u * v, (u - v).abs()], dim=1)  # (B, 4n)

    def data_config(self) -> dict[str, Any]:
        return {"max_length": 1_000_000}  # never truncated (BagTokenizer)

    def why_not_format(self, format: str) -> str | None:
        if format == "ajuste":
            return None
        return ("its input is TF-IDF of scikit-learn's n-gram analyzers (the classical arm), which no Hugging Face "
                "tokenizer, ONNX or TorchScript graph reproduces; use --format ajuste (loads with ajuste predict)")

    def describe(self) -> dict[str, Any]:
        desc = {"kind": "classical", "family": self.family, "name": self.name, "num_classes": self.num_classes,
                "blocks": [{"settings": s, "terms": t} for s, t in self.blocks]}
        return {**desc, "pair": True} if self.pair else desc


class HogColourBackbone(_Classical):
    modality = "image"
    family = IMAGE_FAMILY
    is_convnet = False

    def __init__(self, num_classes: int, *, name: str = "hog+colour", input_size: int = 128) -> None:
        super().__init__(feature_length(), num_classes)
        self.name = name
        self.input_size = input_size
        # the preprocessing's normalisation, undone to get pixels in [0, 1]
        self.register_buffer("pixel_mean", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("pixel_std", torch.tensor([0.5, 0.5, 0.5]).view(1, 3, 1, 1), persistent=False)
        # standardisation of the raw features, fitted on the training split
        self.register_buffer("mean", torch.zeros(feature_length()))
        self.register_buffer("scale", torch.ones(feature_length()))

    def raw_features(self, pixels: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) normalised images → (B, feature_length()) unstandardised features."""
        x = (pixels.float() * self.pixel_std + self.pixel_mean).clamp(0.0, 1.0)
        return torch.cat([hog(x), colour_histograms(x), F.adaptive_avg_pool2d(x, THUMB).flatten(1)], dim=1)

    def features(self, inputs: Any) -> torch.Tensor:
        return (self.raw_features(inputs) - self.mean) / self.scale

    def data_config(self) -> dict[str, Any]:
        return {"input_size": self.input_size, "crop_pct": 0.875, "mean": [0.5, 0.5, 0.5], "std": [0.5, 0.5, 0.5],
                "interpolation": "bilinear"}

    def describe(self) -> dict[str, Any]:
        return {"kind": "classical", "family": self.family, "name": self.name, "num_classes": self.num_classes,
                "input_size": self.input_size}

    def why_not_format(self, format: str) -> str | None:
        if format != "hf":
            return None
        return ("HOG and colour-histogram features (the classical arm) are no timm or Hugging Face architecture; use "
                "--format onnx or torchscript (the features are part of the graph), or ajuste")


def feature_length() -> int:
    blocks = (HOG_CELLS - 1) ** 2 * 4 * HOG_BINS
    return blocks + 3 * COLOUR_BINS + JOINT_BINS ** 3 + 3 * THUMB * THUMB


def hog(x: torch.Tensor) -> torch.Tensor:
    """Histogram of oriented gradients of (B, 3, H, W) images in [0, 1]: the grey image's gradient orientations
    (unsigned, HOG_BINS bins, each vote split linearly between the two nearest bins) weighted by magnitude and
    summed over an 8×8 grid of cells; then every 2×2 block of cells L2-Hys normalised (Dalal & Triggs).
    Returns (B, 7·7·4·HOG_BINS)."""
    grey = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)  # (B, 1, H, W)
    gx = F.pad(grey, (1, 1, 0, 0), mode="replicate")
    gx = gx[..., 2:] - gx[..., :-2]
    gy = F.pad(grey, (0, 0, 1, 1), mode="replicate")
    gy = gy[..., 2:, :] - gy[..., :-2, :]
    mag = torch.sqrt(gx ** 2 + gy ** 2)
    angle = torch.remainder(torch.atan2(gy, gx), math.pi)  # [0, π)
    pos = angle / (math.pi / HOG_BINS) - 0.5
    low = torch.floor(pos)
    w_high = pos - low
    low = torch.remainder(low, HOG_BINS).long()
    high = torch.remainder(low + 1, HOG_BINS)
    votes = torch.zeros(x.shape[0], HOG_BINS, *x.shape[2:], dtype=mag.dtype, device=x.device)
    votes.scatter_add_(1, low, mag * (1 - w_high)).scatter_add_(1, high, mag * w_high)
    cells = F.adaptive_avg_pool2d(votes, HOG_CELLS)  # (B, bins, 8, 8)
    blocks = torch.cat([cells[:, :, i:i + HOG_CELLS - 1, j:j + HOG_CELLS - 1] for i in (0, 1) for j in (0, 1)], dim=1)
    blocks = blocks.permute(0, 2, 3, 1)  # (B, 7, 7, 4·bins): one vector per block
    blocks = F.normalize(blocks, dim=-1, eps=1e-6).clamp(max=0.2)  # L2-Hys: normalise, clip, normalise again
    return F.normalize(blocks, dim=-1, eps=1e-6).flatten(1)


def colour_histograms(x: torch.Tensor) -> torch.Tensor:
    """Per-channel histograms (COLOUR_BINS each) and a joint RGB histogram (JOINT_BINS³), as shares of the
    pixels: (B, 3·COLOUR_BINS + JOINT_BINS³)."""
    b = x.shape[0]
    flat = x.flatten(2)  # (B, 3, P)
    per = (flat * COLOUR_BINS).long().clamp(max=COLOUR_BINS - 1) + torch.arange(3, device=x.device).view(1, 3, 1) \
        * COLOUR_BINS
    hist = torch.zeros(b, 3 * COLOUR_BINS, dtype=x.dtype, device=x.device)
    hist.scatter_add_(1, per.flatten(1), torch.ones_like(flat).flatten(1))
    q = (flat * JOINT_BINS).long().clamp(max=JOINT_BINS - 1)
    joint_ids = q[:, 0] * JOINT_BINS ** 2 + q[:, 1] * JOINT_BINS + q[:, 2]  # (B, P)
    joint = torch.zeros(b, JOINT_BINS ** 3, dtype=x.dtype, device=x.device)
    joint.scatter_add_(1, joint_ids, torch.ones_like(joint_ids, dtype=x.dtype))
    return torch.cat([hist / flat.shape[2], joint / flat.shape[2]], dim=1)


def rebuild(desc: dict[str, Any]) -> Backbone:
    """The architecture (vocabulary and settings, no fitted numbers) from a run's backbone.json."""
    if desc.get("family") == TEXT_FAMILY:
        blocks = [(b["settings"], list(b["terms"])) for b in desc["blocks"]]
        return TfidfBackbone(blocks, desc["num_classes"], name=desc["name"], pair=bool(desc.get("pair")))
    if desc.get("family") == IMAGE_FAMILY:
        return HogColourBackbone(desc["num_classes"], name=desc["name"], input_size=desc["input_size"])
    raise AjusteError(f"backbone.json: unknown classical family {desc.get('family')!r}; restore it or retrain")
