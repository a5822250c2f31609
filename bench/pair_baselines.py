"""Classical baselines for the text-pair set (STS Benchmark, ../shared/datasets/stsb): the floor to beat.

    nice -n 10 python bench/pair_baselines.py [--data ../shared/datasets/stsb]

scikit-learn only (no ajuste code), on the folder built by bench/make_task_datasets.py. The label is a
similarity score 0..5 (regression). Fitted on train.csv; validation.csv (the benchmark's dev part) picks
Ridge's alpha; test.csv is scored once. Prints a Markdown table: RMSE, MAE, R2, and the benchmark's usual
Pearson and Spearman correlations.

  predict the train mean        a constant
  TF-IDF cosine, linear         cosine of the two sentences' TF-IDF vectors (word 1-2 grams, fitted on the
                                train sentences), mapped to the score by a line fitted on train
  TF-IDF |u-v|, u*v + Ridge     the two sides' TF-IDF vectors u, v -> [|u-v|, u*v, cosine] -> Ridge
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.stats import pearsonr, spearmanr
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LinearRegression, Ridge
from sklearn.metrics import mean_absolute_error, mean_squared_error, r2_score

DATA = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "stsb"
ALPHAS = (0.3, 1.0, 3.0, 10.0)


def read(path: Path) -> tuple[list[str], list[str], np.ndarray]:
    with path.open(encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    return [r["first"] for r in rows], [r["second"] for r in rows], np.array([float(r["label"]) for r in rows])


def features(vec: TfidfVectorizer, a: list[str], b: list[str]) -> sp.csr_matrix:
    u, v = vec.transform(a), vec.transform(b)  # rows are L2-normalised, so u.v is the cosine
    cos = sp.csr_matrix(np.asarray(u.multiply(v).sum(axis=1)))
    return sp.hstack([abs(u - v), u.multiply(v), cos]).tocsr()


def scores(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    return {"rmse": mean_squared_error(y, p) ** 0.5, "mae": mean_absolute_error(y, p), "r2": r2_score(y, p),
            "pearson": pearsonr(y, p)[0] if np.ptp(p) > 0 else float("nan"),
            "spearman": spearmanr(y, p)[0] if np.ptp(p) > 0 else float("nan")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", type=Path, default=DATA)
    a = ap.parse_args()
    tr, va, te = (read(a.data / f"{s}.csv") for s in ("train", "validation", "test"))
    rows = []

    t = time.time()
    rows.append(("predict the train mean", scores(te[2], np.full(len(te[2]), tr[2].mean())), time.time() - t))

    t = time.time()
    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True, min_df=1).fit(tr[0] + tr[1])
    cos = lambda d: np.asarray(vec.transform(d[0]).multiply(vec.transform(d[1])).sum(axis=1))  # noqa: E731
    line = LinearRegression().fit(cos(tr), tr[2])
    rows.append(("TF-IDF cosine (word 1-2 grams), line fitted on train", scores(te[2], line.predict(cos(te))),
                 time.time() - t))

    t = time.time()
    xtr, xva, xte = (features(vec, d[0], d[1]) for d in (tr, va, te))
    val = {}
    for alpha in ALPHAS:
        val[alpha] = scores(va[2], Ridge(alpha=alpha).fit(xtr, tr[2]).predict(xva))
    best = min(ALPHAS, key=lambda al: val[al]["rmse"])
    model = Ridge(alpha=best).fit(xtr, tr[2])
    rows.append((f"TF-IDF \\|u−v\\|, u·v, cosine + Ridge (alpha {best:g})", scores(te[2], model.predict(xte)),
                 time.time() - t))
    print("validation RMSE by alpha: " + ", ".join(f"{al:g}: {val[al]['rmse']:.3f}" for al in ALPHAS))

    print(f"\n| stsb (test {len(te[2])}) | RMSE | MAE | R² | Pearson | Spearman | s |")
    print("|---|---|---|---|---|---|---|")
    for name, s, secs in rows:
        print(f"| {name} | {s['rmse']:.3f} | {s['mae']:.3f} | {s['r2']:.3f} | {s['pearson']:.3f} | "
              f"{s['spearman']:.3f} | {secs:.0f} |")


if __name__ == "__main__":
    main()
