"""Transferability estimators: how well will a pretrained backbone fine-tune on this data, from one forward pass?

Each is a pure function of frozen features (N, D) or source-model outputs and integer target labels (N,);
higher is better for all of them. They rank candidate backbones (``ajuste rank``); their absolute values are
not comparable across data sets, nor across estimators.

- LogME (You et al., ICML 2021): ``ajuste.study.similarity.logme``.
- H-score (Bao et al., ICIP 2019), with the shrinkage of Ibrahim et al. (ECML-PKDD 2022) by default.
- NLEEP (Li et al., CVPR 2021): LEEP with a Gaussian mixture on PCA features as the "source classifier".
- LEEP (Nguyen et al., ICML 2020) and NCE (Tran et al., ICCV 2019): need the source model's classifier head.
"""

from __future__ import annotations

import numpy as np

_EPS = 1e-12


def _class_index(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Labels renumbered 0..C-1 (any integers in), and C."""
    classes, y = np.unique(np.asarray(labels).reshape(-1), return_inverse=True)
    return y, len(classes)


def hscore(features: np.ndarray, labels: np.ndarray, *, shrinkage: bool = True) -> float:
    """H-score of ``features`` (N, D) for ``labels`` (N,): tr(cov(f)^-1 cov(E[f | y])).

    Bao, Li, Huang, Zheng, Tse, Tong. "An Information-Theoretic Approach to Transferability in Task Transfer
    Learning", ICIP 2019. How much of the features' variance lies between the class means, in the metric of
    their own covariance (the asymptotic error of a linear classifier on them); at most C - 1.

    ``shrinkage``: estimate cov(f) with Ledoit-Wolf shrinkage instead of the sample covariance, as Ibrahim,
    Ponomareva and Mazumder ("Newer is not always better: rethinking transferability metrics", ECML-PKDD 2022)
    recommend: with D near or above N (1280-d features of 1000 images) the sample covariance is singular and
    every backbone scores C - 1. Either way the score is unchanged by a permutation of the feature dimensions,
    and without shrinkage by any invertible linear map of them.
    """
    f = np.asarray(features, dtype=np.float64)
    f = f - f.mean(0, keepdims=True)
    y, c = _class_index(labels)
    n = len(f)
    if shrinkage:
        from sklearn.covariance import ledoit_wolf

        cov_f = ledoit_wolf(f, assume_centered=True)[0]
    else:
        cov_f = f.T @ f / n
    counts = np.bincount(y, minlength=c)
    means = np.zeros((c, f.shape[1]))  # class means of the centred features, (C, D)
    np.add.at(means, y, f)
    means /= counts[:, None]
    # cov(E[f | y]) = Mᵀ diag(p) M with p the class shares, so the trace is Σ_c p_c m_cᵀ cov_f⁻¹ m_c: a solve
    # against C right-hand sides, not an inverse of the (D, D) covariance.
    if shrinkage:
        solved = np.linalg.solve(cov_f, means.T)  # positive definite after shrinkage, (D, C)
    else:
        solved = np.linalg.pinv(cov_f, rcond=1e-10, hermitian=True) @ means.T
    return float(np.sum(counts / n * np.einsum("cd,dc->c", means, solved)))


def leep(source_probs: np.ndarray, labels: np.ndarray) -> float:
    """LEEP of a source model's class probabilities ``source_probs`` (N, Z) for target ``labels`` (N,).

    Nguyen, Hassner, Seeger, Archambeau. "LEEP: A New Measure to Evaluate Transferability of Learned
    Representations", ICML 2020. The average log-likelihood of the "expected empirical predictor": the source
    prediction θ(x) pushed through the empirical conditional P(y | z) of target labels given source labels,
    log Σ_z P(y_i | z) θ(x_i)_z. At most 0 (log 1).
    """
    theta = np.asarray(source_probs, dtype=np.float64)
    y, c = _class_index(labels)
    n = len(theta)
    joint = np.zeros((c, theta.shape[1]))  # P(y, z), (C, Z)
    np.add.at(joint, y, theta)
    joint /= n
    cond = joint / np.maximum(joint.sum(0, keepdims=True), _EPS)  # P(y | z)
    eep = np.einsum("nz,nz->n", theta, cond[y])  # Σ_z P(y_i | z) θ(x_i)_z, (N,)
    return float(np.mean(np.log(np.maximum(eep, _EPS))))


def nce(source_labels: np.ndarray, labels: np.ndarray) -> float:
    """Negative conditional entropy -H(Y | Z) of target ``labels`` given the source model's hard labels.

    Tran, Nguyen, Hassner. "Transferability and Hardness of Supervised Classification Tasks", ICCV 2019.
    ``source_labels`` (N,) are the source classifier's argmax predictions Z on the target data; the empirical
    joint of (Y, Z) gives H(Y | Z) = -Σ P(y, z) log P(y | z). At most 0 (Y a function of Z).
    """
    y, c = _class_index(labels)
    z, k = _class_index(source_labels)
    joint = np.zeros((c, k))
    np.add.at(joint, (y, z), 1.0)
    joint /= len(y)
    cond = joint / np.maximum(joint.sum(0, keepdims=True), _EPS)
    nz = joint > 0
    return float(np.sum(joint[nz] * np.log(cond[nz])))


def nleep(features: np.ndarray, labels: np.ndarray, *, components_per_class: int = 5, variance: float = 0.8,
          max_dims: int = 64, seed: int = 0) -> float:
    """NLEEP: LEEP with a Gaussian mixture on the features as the source model, so no source head is needed.

    Li, Jia, Zhang, Zhou, Zheng, Kumar, Zhang, Grauman. "Ranking Neural Checkpoints", CVPR 2021. The features are
    reduced by PCA to the dimensions that keep ``variance`` of it (at most ``max_dims``, for speed on a CPU),
    a diagonal-covariance GMM with ``components_per_class`` × C components is fitted to them, and its posterior
    over components plays θ(x) in LEEP. Unchanged by a permutation of the feature dimensions, up to the GMM fit.
    """
    from sklearn.mixture import GaussianMixture

    f = np.asarray(features, dtype=np.float64)
    _, c = _class_index(labels)
    reduced = _pca_scores(f, variance, max_dims)
    k = max(1, min(components_per_class * c, len(f) // 2))
    gmm = GaussianMixture(n_components=k, covariance_type="diag", reg_covar=1e-4, max_iter=100,
                          random_state=seed).fit(reduced)
    return leep(gmm.predict_proba(reduced), labels)


def _pca_scores(f: np.ndarray, variance: float, max_dims: int) -> np.ndarray:
    """Principal-component scores of ``f`` (N, D): the leading components that explain ``variance`` of the total,
    at most ``max_dims``. From the eigendecomposition of the smaller Gram matrix, (N, N) or (D, D): an SVD of
    (2000, 1280) features costs seconds on two cores, this a fraction of one."""
    x = f - f.mean(0, keepdims=True)
    if len(x) <= x.shape[1]:
        lam, u = np.linalg.eigh(x @ x.T)  # ascending; scores are u * sqrt(lam)
    else:
        lam, v = np.linalg.eigh(x.T @ x)
    lam, order = np.clip(lam[::-1], 0, None), slice(None, None, -1)
    keep = int(np.searchsorted(np.cumsum(lam) / max(lam.sum(), _EPS), variance) + 1)
    keep = max(1, min(keep, max_dims, int((lam > lam[0] * 1e-12).sum())))
    if len(x) <= x.shape[1]:
        return u[:, order][:, :keep] * np.sqrt(lam[:keep])
    return x @ v[:, order][:, :keep]


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax (N, Z) of source logits, in float64."""
    x = np.asarray(logits, dtype=np.float64)
    x = x - x.max(1, keepdims=True)
    e = np.exp(x)
    return e / e.sum(1, keepdims=True)
