"""Control: can a dictionary edit one attribute of a prompt? (paper Sec. 4.2)

Ground truth is activation patching: run the source prompt with the cross-section's activations
taken from the counterfactual prompt (one attribute changed); its argmax token at END is the target.
An edit changes the source activations ``a_src: (N, d)`` at every location; it is accurate on a
prompt when the edited run's argmax over the full vocabulary equals the target.

Edits, per location:
- supervised: ``a - u_{i,v} + u_{i,v'}`` (:meth:`evals.dictionary.SupervisedDictionary.edit`);
- SAE, interpretation-agnostic (:func:`greedy_edit`): with codes ``f_src, f_cf`` and decoder rows
  ``d_j``, candidate moves ``Δ_j = (f_cf,j - f_src,j) d_j``; greedily add the move that brings the
  sum of moves closest to ``a_cf - a_src``, k times;
- SAE, interpretation-aware (:func:`f1_edit`): remove the k highest-F1 features for the source
  value that are active on the source, add the k highest-F1 features for the counterfactual value
  that are active on the counterfactual (at their counterfactual magnitudes).
"""

from __future__ import annotations

import torch

from evals.config import K_VALUES  # noqa: F401 - evals.control.K_VALUES, as before

F1_CURVE = (0.25, 0.5, 0.75)  # F1 thresholds of the F1-guided edit curve (run at the largest k)


def edit_accuracy(top_edit: torch.Tensor, top_target: torch.Tensor) -> float:
    """Fraction of prompts whose edited argmax token equals the counterfactual-patching argmax (Sec. 4.2)."""
    return float((top_edit == top_target).float().mean())


def greedy_edit(f_src: torch.Tensor, f_cf: torch.Tensor, features: torch.Tensor, diff: torch.Tensor, k: int,
                chunk: int = 1024) -> tuple[torch.Tensor, torch.Tensor]:
    """Interpretation-agnostic SAE edit (Sec. 4.2): k greedy feature swaps towards ``diff = a_cf - a_src``.

    f_src, f_cf: (N, F) codes; features: (F, d) decoder rows; diff: (N, d).
    Returns (delta (N, d) to add to a_src, chosen (N, F) bool mask of swapped features).
    Scores use ``|c + g_j d_j - diff|^2 = |r|^2 + 2 g_j <d_j, r> + g_j^2 |d_j|^2`` (r = c - diff),
    so no (N, F, d) tensor is built. A feature is swapped at most once.
    """
    n, f = f_src.shape
    deltas, chosen = [], []
    sq = (features * features).sum(1)  # (F,)
    for i in range(0, n, chunk):
        g = (f_cf[i:i + chunk] - f_src[i:i + chunk]).to(features)  # (n, F)
        target = diff[i:i + chunk].to(features)
        cur = torch.zeros_like(target)
        used = torch.zeros_like(g, dtype=torch.bool)
        rows = torch.arange(len(g), device=g.device)
        for _ in range(min(k, f)):
            r = cur - target
            score = 2 * g * (r @ features.T) + g * g * sq
            score = score.masked_fill(used, float("inf"))
            j = score.argmin(1)
            used[rows, j] = True
            cur = cur + g[rows, j, None] * features[j]
        deltas.append(cur)
        chosen.append(used)
    return torch.cat(deltas), torch.cat(chosen)


def select_by_rank(active: torch.Tensor, order: torch.Tensor, ok: torch.Tensor, k: int) -> torch.Tensor:
    """(N, F) mask of the first k features in each row's `order` that are active and ok.

    active: (N, F) bool; order: (N, F) feature indices, best first; ok: (N, F) bool aligned with order.
    """
    valid = active.gather(1, order) & ok
    take = valid & (valid.cumsum(1) <= k)
    return torch.zeros_like(active).scatter(1, order, take)


def f1_edit(f_src: torch.Tensor, f_cf: torch.Tensor, features: torch.Tensor, f1: torch.Tensor,
            v_src: torch.Tensor, v_cf: torch.Tensor, k: int, min_f1: float = 0.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Interpretation-aware SAE edit (Sec. 4.2): swap the k best-F1 features of v for those of v'.

    f_src, f_cf: (N, F) codes; features: (F, d); f1: (F, n_values) F1 of each feature for each value
    of the edited attribute (NaN allowed); v_src, v_cf: (N,) value indices.
    Returns (delta (N, d), removed (N, F) bool, added (N, F) bool). Only features with F1 > min_f1 are
    used; sweeping min_f1 gives the paper's curve of causal effect against interpretability.
    """
    score = torch.nan_to_num(f1, nan=0.0).T  # (n_values, F)
    srt, order = score.sort(1, descending=True)
    removed = select_by_rank(f_src > 0, order[v_src], srt[v_src] > min_f1, k)
    added = select_by_rank(f_cf > 0, order[v_cf], srt[v_cf] > min_f1, k)
    delta = (f_cf * added).to(features) @ features - (f_src * removed).to(features) @ features
    return delta, removed, added


def feature_weights(codes: torch.Tensor, features: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """Weight of each feature in a reconstruction (paper's edit magnitude): (N, F).

    ``w_j = f_j <d_j, x_hat - b> / ||x_hat - b||^2`` with ``x_hat - b = sum_j f_j d_j``; the weights of
    one activation sum to 1 (0 for an all-zero code).
    """
    centered = codes.to(features) @ features  # (N, d)
    norm2 = (centered * centered).sum(1, keepdim=True)
    w = codes.to(features) * (centered @ features.T)
    return torch.where(norm2 > 1e-12, w / norm2.clamp_min(1e-12), torch.zeros_like(w))


def edit_magnitude(weights: torch.Tensor, removed: torch.Tensor) -> float:
    """Mean over prompts of the total weight of the features an edit removes (Sec. 4.2)."""
    return float((weights * removed.to(weights)).sum(1).mean())


def normalized_xy(w: float, acc: float, w_sup: float, acc_sup: float, acc_none: float) -> tuple[float, float]:
    """Normalised edit coordinates: x = (w - w_sup) / (1 - w_sup), y = (acc - acc_none) / (acc_sup - acc_none).

    The supervised edit sits at (0, 1) and doing nothing at (·, 0) (paper Sec. 4.2, Fig. 3).
    """
    x = (w - w_sup) / (1 - w_sup) if abs(1 - w_sup) > 1e-9 else float("nan")
    y = (acc - acc_none) / (acc_sup - acc_none) if abs(acc_sup - acc_none) > 1e-9 else float("nan")
    return x, y
