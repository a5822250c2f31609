"""Classical baselines for the regression and multi-label data sets: the floor the deep arms must beat.

    nice -n 10 python bench/task_baselines.py [--sets vader-sentiment,movie-genres]

scikit-learn only (no ajuste code), on ../shared/datasets/vader-sentiment and ../shared/datasets/movie-genres
as built by bench/make_task_datasets.py. Each set's train.csv is split 80/20 (seed 0) into fit and validation
parts; the validation part picks the hyper-parameters (and, for multi-label, per-label thresholds); the final
model is refit on the whole train.csv and scored once on test.csv. Prints a Markdown table.

  regression   TF-IDF (word 1-2 grams) + Ridge, alpha from a grid -> RMSE, MAE, R2; and "predict the train mean".
  multi-label  TF-IDF (word 1-2 grams) + one-vs-rest LogisticRegression, C from a grid by validation mAP;
               per-label thresholds maximising each label's validation F1 -> mAP (macro average precision),
               micro-F1, macro-F1; and "each label's train prior" (a constant score per label).
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import (average_precision_score, f1_score, mean_absolute_error, mean_squared_error,
                             precision_recall_curve, r2_score)
from sklearn.model_selection import train_test_split
from sklearn.multiclass import OneVsRestClassifier
from sklearn.preprocessing import MultiLabelBinarizer

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"
SEED = 0
ALPHAS = (0.3, 1.0, 3.0, 10.0)
CS = (1.0, 4.0, 16.0)


def read(path: Path, col: str) -> tuple[list[str], list[str]]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["text"] for r in rows], [r[col] for r in rows]


def tfidf() -> TfidfVectorizer:
    return TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True)


def regression(root: Path) -> list[list[str]]:
    t0 = time.perf_counter()
    xtr, ytr = read(root / "train.csv", "label")
    xte, yte = read(root / "test.csv", "label")
    ytr, yte = np.array(ytr, float), np.array(yte, float)
    xf, xv, yf, yv = train_test_split(xtr, ytr, test_size=0.2, random_state=SEED)
    vec = tfidf().fit(xf)
    ff, fv = vec.transform(xf), vec.transform(xv)
    val = {a: mean_squared_error(yv, Ridge(alpha=a).fit(ff, yf).predict(fv)) ** 0.5 for a in ALPHAS}
    alpha = min(val, key=val.get)
    vec = tfidf().fit(xtr)
    pred = Ridge(alpha=alpha).fit(vec.transform(xtr), ytr).predict(vec.transform(xte))
    secs = time.perf_counter() - t0
    mean = np.full_like(yte, ytr.mean())

    def row(name: str, p: np.ndarray, s: str) -> list[str]:
        return [name, f"{mean_squared_error(yte, p) ** 0.5:.3f}", f"{mean_absolute_error(yte, p):.3f}",
                f"{r2_score(yte, p):.3f}", s]

    print(f"vader-sentiment: train {len(ytr)}, test {len(yte)}; validation RMSE by alpha "
          + ", ".join(f"{a:g}: {v:.3f}" for a, v in val.items()) + f" -> alpha {alpha:g}")
    return [row("predict the train mean", mean, "0"),
            row(f"TF-IDF 1-2 grams + Ridge (alpha {alpha:g})", pred, f"{secs:.0f}")]


def best_thresholds(y: np.ndarray, s: np.ndarray) -> np.ndarray:
    """Per label, the score threshold that maximises F1 on (y, s); 0.5 where the label has no positive."""
    th = np.full(y.shape[1], 0.5)
    for j in range(y.shape[1]):
        if y[:, j].sum() == 0:
            continue
        p, r, t = precision_recall_curve(y[:, j], s[:, j])
        f = 2 * p[:-1] * r[:-1] / np.maximum(p[:-1] + r[:-1], 1e-12)
        th[j] = t[int(np.argmax(f))]
    return th


def multilabel(root: Path) -> list[list[str]]:
    t0 = time.perf_counter()
    xtr, ltr = read(root / "train.csv", "labels")
    xte, lte = read(root / "test.csv", "labels")
    mlb = MultiLabelBinarizer()
    ytr = mlb.fit_transform([s.split("|") for s in ltr])
    yte = mlb.transform([s.split("|") for s in lte])
    xf, xv, yf, yv = train_test_split(xtr, ytr, test_size=0.2, random_state=SEED)
    vec = tfidf().fit(xf)
    ff, fv = vec.transform(xf), vec.transform(xv)

    def model(c: float) -> OneVsRestClassifier:
        return OneVsRestClassifier(LogisticRegression(C=c, solver="liblinear", max_iter=1000))

    val, scores = {}, {}
    for c in CS:
        scores[c] = model(c).fit(ff, yf).predict_proba(fv)
        val[c] = average_precision_score(yv, scores[c], average="macro")
    c = max(val, key=val.get)
    th = best_thresholds(yv, scores[c])
    vec = tfidf().fit(xtr)
    s = model(c).fit(vec.transform(xtr), ytr).predict_proba(vec.transform(xte))
    secs = time.perf_counter() - t0
    prior = np.tile(ytr.mean(0), (len(yte), 1))
    print(f"movie-genres: train {len(ytr)}, test {len(yte)}, {len(mlb.classes_)} labels; validation mAP by C "
          + ", ".join(f"{k:g}: {v:.3f}" for k, v in val.items()) + f" -> C {c:g}")
    ap = average_precision_score(yte, s, average=None)
    print("  test AP per label: " + ", ".join(f"{g} {a:.2f}" for g, a in sorted(zip(mlb.classes_, ap),
                                                                              key=lambda t: -t[1])))
    yhat = (s >= th).astype(int)
    prior_hat = (prior >= 0.5).astype(int)  # the prior's own decision: only labels held by most films
    return [
        ["each label's train prior", f"{average_precision_score(yte, prior, average='macro'):.3f}",
         f"{f1_score(yte, prior_hat, average='micro', zero_division=0):.3f}",
         f"{f1_score(yte, prior_hat, average='macro', zero_division=0):.3f}", "0"],
        [f"TF-IDF 1-2 grams + one-vs-rest LogisticRegression (C {c:g}), tuned thresholds",
         f"{ap.mean():.3f}", f"{f1_score(yte, yhat, average='micro', zero_division=0):.3f}",
         f"{f1_score(yte, yhat, average='macro', zero_division=0):.3f}", f"{secs:.0f}"],
    ]


def table(header: list[str], rows: list[list[str]]) -> str:
    return "\n".join(["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
                     + ["| " + " | ".join(r) + " |" for r in rows])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="vader-sentiment,movie-genres")
    ap.add_argument("--data", type=Path, default=SHARED, help="datasets folder (default ../shared/datasets)")
    a = ap.parse_args()
    sets = a.sets.split(",")
    out = []
    if "vader-sentiment" in sets:
        out.append("vader-sentiment (regression, test set):\n\n"
                   + table(["model", "RMSE", "MAE", "R²", "s"], regression(a.data / "vader-sentiment")))
    if "movie-genres" in sets:
        out.append("movie-genres (multi-label, test set):\n\n"
                   + table(["model", "mAP", "micro-F1", "macro-F1", "s"], multilabel(a.data / "movie-genres")))
    print("\n\n".join(out))


if __name__ == "__main__":
    main()
