"""Interpretability: do a dictionary's features mean attribute values? (paper Sec. 4.3, 5)

The paper's rule (amakelov/sae, sae_variants.py, ``get_activation_pattern``: ``acts > 0``): a
feature j is *active* on a prompt when its code is > 0. For an attribute value v with mask
``m: (N,)`` ("the prompt has v"): precision = |active ∧ m| / |active|, recall = |active ∧ m| / |m|,
F1 their harmonic mean (sae_interp.py, ``get_feature_scores``). A value is *covered* at F1
threshold t when some feature scores F1 >= t; the paper's thresholds are 0.5, 0.6, 0.8
(:data:`F1_THRESHOLDS`). Which values are searched is the interpretation space
(:mod:`evals.interpretation`).

``active_pattern(codes, fraction)`` with ``fraction > 0`` is a stricter rule that is *not* the
paper's (code > fraction x the feature's max over the prompts); it is kept as an option because
it shows whether a feature's large activations are more specific than its support.

Diagnostics the paper names (Sec. 5): :func:`over_splitting` and :func:`occlusion`.
"""

from __future__ import annotations

import torch

from evals.config import F1_THRESHOLDS, UNION_MAX  # noqa: F401 - evals.interpretability.*, as before


def active_pattern(codes: torch.Tensor, fraction: float = 0.0) -> torch.Tensor:
    """(N, F) bool. fraction = 0: code > 0 (the paper's rule). fraction > 0 (not the paper's):
    code > fraction x the feature's max over the prompts (features whose max is <= 0 are never active)."""
    if fraction <= 0:
        return codes > 0
    mx = codes.max(0).values
    return (codes > fraction * mx) & (mx > 0)


def value_masks(v_idx: torch.Tensor, n_values: int) -> torch.Tensor:
    """(N, n_values) float: one-hot of each prompt's value index (-1: no listed value)."""
    m = torch.zeros(len(v_idx), n_values, device=v_idx.device)
    ok = v_idx >= 0
    m[ok.nonzero().squeeze(1), v_idx[ok]] = 1.0
    return m


def f1_from_counts(inter: torch.Tensor, n_act: torch.Tensor, n_val: torch.Tensor) -> torch.Tensor:
    """F1 = 2 |active ∧ m| / (|active| + |m|) (= 2PR / (P + R)); NaN when both counts are 0."""
    den = n_act + n_val
    return torch.where(den > 0, 2 * inter / den.clamp_min(1e-12), torch.full_like(den, float("nan")))


def precision_recall_f1(active: torch.Tensor, masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Feature-vs-value precision, recall, F1 (paper Sec. 4.3), each (F, n_values); NaN where undefined.

    active: (N, F) bool; masks: (N, n_values) 0/1.
    """
    act = active.to(masks.dtype)
    inter = act.T @ masks  # (F, n_values)
    n_act = act.sum(0)[:, None].expand_as(inter)
    n_val = masks.sum(0)[None, :].expand_as(inter)
    return inter / n_act, inter / n_val, f1_from_counts(inter, n_act, n_val)


def paired_f1(active_cols: torch.Tensor, mask_cols: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """F1 of K (feature, interpretation) pairs given as columns: active_cols, mask_cols (N, K) -> (K,),
    or (B, K) over bootstrap weights ``w: (B, N)`` (the pairs stay fixed; the prompts are resampled)."""
    a, m = active_cols.float(), mask_cols.float()
    ww = torch.ones(1, len(a), device=a.device) if w is None else w.to(a)
    out = f1_from_counts(ww @ (a * m), ww @ a, ww @ m)
    return out[0] if w is None else out


def best_f1_per_value(f1: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For each value the best feature and its F1: ((n_values,) F1, (n_values,) feature index)."""
    vals, idx = torch.nan_to_num(f1, nan=0.0).max(0)
    return vals, idx


def coverage(f1: torch.Tensor, threshold: float = 0.8) -> float:
    """Fraction of the attribute's values that some feature matches with F1 >= threshold (Sec. 4.3)."""
    return float((best_f1_per_value(f1)[0] >= threshold).float().mean())


def union_f1(active: torch.Tensor, masks: torch.Tensor, f1: torch.Tensor, max_size: int = UNION_MAX
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Best "the value is one of m values" interpretation per feature, m <= max_size (paper Sec. 4.3).

    Follows amakelov/sae, sae_interp.py, ``autointerp_fast``: for each feature, order the values by
    their own F1 with it, and score the unions of its top 1, 2, ..., max_size values.
    active: (N, F) bool; masks: (N, V) 0/1; f1: (F, V) single-value F1.
    Returns (best F1 (F,), best union size (F,), the values in F1 order (F, m_max) long).
    """
    m_max = min(max_size, masks.shape[1])
    order = torch.nan_to_num(f1, nan=-1.0).topk(m_max, dim=1).indices  # (F, m)
    act = active.to(masks.dtype)
    n_act = act.sum(0)  # (F,)
    if bool((masks.sum(1) <= 1).all()):  # one value per prompt: a union's counts are sums of its values' counts
        inter = (act.T @ masks).gather(1, order).cumsum(1)  # (F, m): |active and value among the top m+1|
        n_union = masks.sum(0)[order].cumsum(1)  # (F, m): |value among the top m+1|
        score = torch.nan_to_num(f1_from_counts(inter, n_act[:, None].expand_as(inter), n_union), nan=0.0)
    else:  # values may share prompts: count the union itself
        union, cols = torch.zeros_like(act), []
        for m in range(m_max):
            union = torch.maximum(union, masks[:, order[:, m]])  # (N, F): the prompt's value is among the top m+1
            cols.append(torch.nan_to_num(f1_from_counts((act * union).sum(0), n_act, union.sum(0)), nan=0.0))
        score = torch.stack(cols, 1)
    best = torch.zeros(act.shape[1], device=act.device)
    size = torch.ones(act.shape[1], dtype=torch.long, device=act.device)
    for m in range(m_max):  # the smallest union that beats every smaller one by more than 1e-9
        better = score[:, m] > best + 1e-9
        best = torch.where(better, score[:, m], best)
        size = torch.where(better, torch.full_like(size, m + 1), size)
    return best, size, order


def union_members(masks: torch.Tensor, order: torch.Tensor, size: torch.Tensor) -> torch.Tensor:
    """(N, F) bool: the prompt's value is one of feature f's union (its first size[f] values in ``order``).
    masks: (N, V) 0/1; order: (F, m) value indices; size: (F,)."""
    f = order.shape[0]
    member = torch.zeros(masks.shape[1], f, dtype=torch.bool, device=masks.device)  # (V, F)
    keep = torch.arange(order.shape[1], device=order.device)[None, :] < size[:, None]  # (F, m)
    feat = torch.arange(f, device=order.device)[:, None].expand_as(order)
    member[order[keep], feat[keep]] = True
    return (masks.to(torch.float32) @ member.to(torch.float32)) > 0  # (N, F); handles prompts with several values


def over_splitting(active: torch.Tensor, masks: torch.Tensor, f1_threshold: float = 0.8, min_precision: float = 0.9,
                   max_recall: float = 0.5, min_count: int = 10) -> dict:
    """Over-splitting (paper Sec. 5): a binary attribute's value carried by many small features.

    For each value v (masks: (N, V) of a binary attribute such as Pos; active: (N, F) bool):
    the *split* features fire almost only on v (precision >= min_precision) but each on a small part
    of it (recall < max_recall), on at least min_count prompts with v (fewer is too few to call the
    precision a property of the feature rather than chance). v is over-split when at least two split features
    together cover at least half of v (their union's recall >= 0.5) while no single feature matches
    v with F1 >= f1_threshold.
    Returns per value: n_split, union_recall (of the split features), best_f1 (any feature), over_split.
    """
    act = active.to(masks.dtype)
    p, r, f1 = precision_recall_f1(active, masks)
    p, r = torch.nan_to_num(p, nan=0.0), torch.nan_to_num(r, nan=0.0)
    hits = act.T @ masks  # (F, V) prompts with v on which the feature fires
    split = (p >= min_precision) & (hits >= min_count) & (r < max_recall)  # (F, V)
    n_split = split.sum(0)
    fired = (act @ split.to(act)) > 0  # (N, V): some split feature of v fires
    union_recall = (fired.to(masks) * masks).sum(0) / masks.sum(0).clamp_min(1)
    best = best_f1_per_value(f1)[0]
    flags = (n_split >= 2) & (union_recall >= 0.5) & (best < f1_threshold)
    return {"n_split": n_split.tolist(), "union_recall": union_recall.tolist(), "best_f1": best.tolist(),
            "over_split": flags.tolist(), "any_over_split": bool(flags.any())}


def occlusion(magnitude: dict[str, float], cov: dict[str, float], causal: dict[str, float],
              min_causal: float = 0.2, low: float = 0.5) -> dict[str, dict]:
    """Occlusion (paper Sec. 5): a causally relevant attribute hidden by a larger-magnitude one.

    magnitude: attr -> mean norm of its supervised (mean-dictionary) vectors at the location;
    cov: attr -> coverage by the dictionary's features; causal: attr -> fraction of prompts whose
    output changes under counterfactual patching of the cross-section. Attribute i is occluded when
    causal[i] >= min_causal, cov[i] < low, and some attribute j with magnitude[j] > magnitude[i] has
    cov[j] >= low (the features went to j). ``ratio`` is the largest such magnitude[j] / magnitude[i]:
    the paper finds occlusion even at ratios barely above 1.
    """
    out = {}
    for a in magnitude:
        by = [b for b in magnitude if b != a and magnitude[b] > magnitude[a] and cov.get(b, 0.0) >= low]
        occluded = causal.get(a, 0.0) >= min_causal and cov.get(a, 0.0) < low and bool(by)
        ratio = max((magnitude[b] / max(magnitude[a], 1e-12) for b in by), default=None)
        out[a] = {"magnitude": magnitude[a], "coverage": cov.get(a), "causal": causal.get(a),
                  "occluded": occluded, "by": by if occluded else [], "ratio": ratio if occluded else None}
    return out
