"""Routing evaluation metrics: ROC-AUC, NMI and ARI (numpy, no sklearn dependency)."""

from __future__ import annotations

import numpy as np


def roc_auc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Area under the ROC curve = P(score_pos > score_neg) (ties count 1/2), via average ranks."""
    scores, labels = np.asarray(scores, float), np.asarray(labels).astype(bool)
    n_pos, n_neg = labels.sum(), (~labels).sum()
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    from scipy.stats import rankdata

    ranks = rankdata(scores)  # average ranks over ties
    return float((ranks[labels].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _contingency(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    _, ai = np.unique(a, return_inverse=True)
    _, bi = np.unique(b, return_inverse=True)
    table = np.zeros((ai.max() + 1, bi.max() + 1))
    np.add.at(table, (ai, bi), 1)
    return table


def nmi(a: np.ndarray, b: np.ndarray) -> float:
    """Normalised mutual information I(a; b) / ((H(a) + H(b)) / 2) (arithmetic normalisation)."""
    t = _contingency(np.asarray(a), np.asarray(b))
    p = t / t.sum()
    pa, pb = p.sum(1), p.sum(0)
    nz = p > 0
    mi = (p[nz] * np.log(p[nz] / np.outer(pa, pb)[nz])).sum()
    ha = -(pa[pa > 0] * np.log(pa[pa > 0])).sum()
    hb = -(pb[pb > 0] * np.log(pb[pb > 0])).sum()
    if ha + hb == 0:
        return 1.0
    return float(2 * mi / (ha + hb))


def ari(a: np.ndarray, b: np.ndarray) -> float:
    """Adjusted Rand index of two labelings."""
    t = _contingency(np.asarray(a), np.asarray(b))
    comb = lambda x: x * (x - 1) / 2  # noqa: E731
    s_ij, s_a, s_b = comb(t).sum(), comb(t.sum(1)).sum(), comb(t.sum(0)).sum()
    expected = s_a * s_b / comb(t.sum())
    denom = (s_a + s_b) / 2 - expected
    return float((s_ij - expected) / denom) if denom else 1.0
