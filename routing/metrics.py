"""Routing evaluation metrics: ROC-AUC, NMI and ARI, and how well experts stand for attribute values
(precision/recall of expert assignment; numpy, no sklearn dependency)."""

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


def expert_assignment(values: np.ndarray, experts: np.ndarray, n_experts: int) -> list[dict]:
    """How well one expert stands for each attribute value: per value v, the expert e* of best F1 with
    precision = P(value = v | expert e*) and recall = P(expert e* | value = v).

    values: (N,) attribute value per token (any hashable labels); experts: (N,) expert per token (its
    highest-weight expert; -1 = routed nowhere, which counts against recall). Returns one row per value:
    {value, expert, n, precision, recall, f1}.
    """
    values, experts = np.asarray(values), np.asarray(experts).astype(np.int64)
    labels, vi = np.unique(values, return_inverse=True)
    ok = experts >= 0
    counts = np.zeros((len(labels), n_experts))  # (V, E) tokens of value v routed to expert e
    np.add.at(counts, (vi[ok], experts[ok]), 1)
    n_v = np.bincount(vi, minlength=len(labels)).astype(float)  # (V,)
    n_e = counts.sum(0)  # (E,)
    with np.errstate(divide="ignore", invalid="ignore"):
        prec = np.where(n_e > 0, counts / n_e, 0.0)
        rec = counts / n_v[:, None]
        f1 = np.where(prec + rec > 0, 2 * prec * rec / (prec + rec), 0.0)
    best = f1.argmax(1)
    rows = np.arange(len(labels))
    return [{"value": str(labels[i]), "expert": int(best[i]), "n": int(n_v[i]), "precision": float(prec[i, best[i]]),
             "recall": float(rec[i, best[i]]), "f1": float(f1[i, best[i]])} for i in rows]


def assignment_summary(values: np.ndarray, experts: np.ndarray, n_experts: int, shuffles: int = 5, seed: int = 0) -> dict:
    """Mean over values of :func:`expert_assignment`'s precision, recall and F1, next to the same means after
    shuffling the values across tokens (chance: what the routing's load alone gives)."""
    rows = expert_assignment(values, experts, n_experts)
    out = {m: float(np.mean([r[m] for r in rows])) for m in ("precision", "recall", "f1")}
    rng = np.random.default_rng(seed)
    shuf = [expert_assignment(rng.permutation(values), experts, n_experts) for _ in range(shuffles)]
    out.update({f"{m}_chance": float(np.mean([np.mean([r[m] for r in s]) for s in shuf])) for m in ("precision", "recall", "f1")})
    out["n_values"] = len(rows)
    return out
