"""Interpretability: do a dictionary's features mean attribute values? (paper Sec. 4.3, 5)

A feature j is *active* on a prompt at threshold τ when its code exceeds τ times its maximum over
the prompts (``codes: (N, F)``). For an attribute value v with mask ``m: (N,)`` ("the prompt has
v"): precision = |active ∧ m| / |active|, recall = |active ∧ m| / |m|, F1 their harmonic mean.
The paper uses τ ∈ {0.5, 0.6, 0.8} (:data:`TAUS`).
"""

from __future__ import annotations

import torch

from evals.config import TAUS  # noqa: F401 - evals.interpretability.TAUS, as before


def active_pattern(codes: torch.Tensor, tau: float) -> torch.Tensor:
    """(N, F) bool: code > tau * max over prompts (features whose max is <= 0 are never active)."""
    mx = codes.max(0).values
    return (codes > tau * mx) & (mx > 0)


def value_masks(v_idx: torch.Tensor, n_values: int) -> torch.Tensor:
    """(N, n_values) float: one-hot of each prompt's value index (-1: no listed value)."""
    m = torch.zeros(len(v_idx), n_values, device=v_idx.device)
    ok = v_idx >= 0
    m[ok.nonzero().squeeze(1), v_idx[ok]] = 1.0
    return m


def precision_recall_f1(active: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature-vs-value precision, recall, F1 (paper Sec. 4.3), each (F, n_values); NaN where undefined.

    active: (N, F) bool; masks: (N, n_values) 0/1.
    """
    act = active.to(masks.dtype)
    inter = act.T @ masks  # (F, n_values)
    n_act = act.sum(0)[:, None]
    n_val = masks.sum(0)[None, :]
    precision = inter / n_act
    recall = inter / n_val
    f1 = 2 * inter / (n_act + n_val)
    f1 = torch.where((n_act + n_val) > 0, f1, torch.full_like(f1, float("nan")))
    return precision, recall, f1


def best_f1_per_value(f1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each value the best feature and its F1: ((n_values,) F1, (n_values,) feature index)."""
    vals, idx = torch.nan_to_num(f1, nan=0.0).max(0)
    return vals, idx


def coverage(f1: torch.Tensor, threshold: float = 0.8) -> float:
    """Fraction of the attribute's values that some feature matches with F1 >= threshold (Sec. 4.3)."""
    return float((best_f1_per_value(f1)[0] >= threshold).float().mean())


def over_splitting(precision: torch.Tensor, recall: torch.Tensor, min_precision: float = 0.9,
                   min_recall: float = 0.05) -> dict:
    """Over-splitting diagnostic (Sec. 5): a value carried by many small, precise features.

    For each value: ``n_split`` features with precision >= min_precision and recall >= min_recall,
    the best single feature's recall, and the summed recall of the split features (an upper bound on
    their union). A value is over-split when n_split >= 2 and no single precise feature has recall >= 0.5.
    """
    p = torch.nan_to_num(precision, nan=0.0)
    r = torch.nan_to_num(recall, nan=0.0)
    precise = (p >= min_precision) & (r >= min_recall)  # (F, n_values)
    n_split = precise.sum(0)
    best_r = torch.where(precise, r, torch.zeros_like(r)).max(0).values
    sum_r = torch.where(precise, r, torch.zeros_like(r)).sum(0)
    flags = (n_split >= 2) & (best_r < 0.5)
    return {"n_split": n_split.tolist(), "best_recall": best_r.tolist(), "summed_recall": sum_r.tolist(),
            "over_split": flags.tolist(), "any_over_split": bool(flags.any())}


def occlusion(magnitude: dict[str, float], cov: dict[str, float], causal: dict[str, float],
              min_causal: float = 0.2, low: float = 0.5) -> dict[str, dict]:
    """Occlusion diagnostic (Sec. 5): a causally relevant attribute hidden by a larger one.

    magnitude: attr -> mean norm of its supervised (mean-dictionary) vectors; cov: attr -> coverage;
    causal: attr -> fraction of prompts whose output changes under counterfactual patching of the
    cross-section. Attribute i is occluded when causal[i] >= min_causal, cov[i] < low, and some
    attribute j with magnitude[j] > magnitude[i] has cov[j] >= low (it took the features).
    """
    out = {}
    for a in magnitude:
        by = [b for b in magnitude if b != a and magnitude[b] > magnitude[a] and cov.get(b, 0.0) >= low]
        occluded = causal.get(a, 0.0) >= min_causal and cov.get(a, 0.0) < low and bool(by)
        out[a] = {"magnitude": magnitude[a], "coverage": cov.get(a), "causal": causal.get(a),
                  "occluded": occluded, "by": by if occluded else []}
    return out
