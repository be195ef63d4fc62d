"""Exact balanced assignment of N tokens to E experts (BASE layers), by successive shortest paths.

Maximise sum_i s[i, sigma(i)] subject to at most cap_j tokens per expert. With few experts this is a
transportation problem whose residual graph can be collapsed onto the experts: moving token i from
expert j to j' costs r_ij - r_ij' in reduced profits r = s - p (p: one price per expert), so the
cheapest way to move one token's worth of load from j to j' is

    W[j, j'] = M[j, j'] - (p_j - p_j'),   M[j, j'] = min over tokens i at j of (s_ij - s_ij')

(M does not depend on the prices; a move changes only the rows of the experts it touches).

Zero-score dummy tokens pad the problem until the capacities sum to the token count, so every expert
ends exactly full and the prices need no sign condition. Start from every token at its best expert
under some prices (0, or, when that leaves much overload, prices from a few Sinkhorn iterations):
every token then maximises its reduced profit, so W >= 0. While an expert is over capacity: Dijkstra
over the E experts from all overloaded ones to the nearest underloaded one, prices
p_j -= min(dist_j, D) (which keeps W >= 0 and puts the path on zero-cost edges), and move one token
along each edge of the path. Each round removes one token of
overload and keeps every token at a profit-maximising expert, the optimality condition of the
transportation LP, so the final assignment is optimal (Ahuja, Magnanti & Orlin, ch. 9). Work per round:
O(E^2) for Dijkstra plus O(N) per expert on the path; rounds = the initial overload.
"""

from __future__ import annotations

import numpy as np
import torch

from workbench.simplex import sinkhorn_potentials


def _row(s: np.ndarray, sigma: np.ndarray, j: int) -> tuple[np.ndarray, np.ndarray]:
    """min over tokens at expert j of s_ij - s_ij' (E,), and the token attaining it (E,); inf if none."""
    tokens = np.flatnonzero(sigma == j)
    e = s.shape[1]
    if tokens.size == 0:
        return np.full(e, np.inf), np.full(e, -1)
    diff = s[tokens, j][:, None] - s[tokens]  # (T, E); +inf towards excluded experts
    best = diff.argmin(0)
    return diff[best, np.arange(e)], tokens[best]


def _sinkhorn_prices(s: np.ndarray, cap: np.ndarray, iters: int = 20) -> np.ndarray:
    """Expert prices -eps * g from a few log-domain Sinkhorn iterations (workbench.simplex) on s / eps with
    columns capped at cap: any prices keep the method exact (tokens start at their best expert under
    them); good ones leave little overload for the shortest paths to repair."""
    finite = np.isfinite(s)
    eps = 0.05 * max(float(s[finite].std()), 1e-12)
    logits = torch.from_numpy(np.where(finite, s / eps, -np.inf))
    log_b = torch.from_numpy(np.log(cap * (s.shape[0] / cap.sum())))
    _, g = sinkhorn_potentials(logits, log_b=log_b, n_iters=iters)
    return -eps * (g - g.mean()).numpy()


def balanced_assignment_ssp(scores: np.ndarray, capacity: np.ndarray) -> np.ndarray:
    """(N,) expert per token maximising sum of scores (N, E) (float, -inf = forbidden) with at most
    capacity[j] tokens at expert j. Needs sum(capacity) >= N and an allowed expert for every token."""
    s = np.asarray(scores, dtype=np.float64)
    n, e = s.shape
    cap = np.asarray(capacity, dtype=np.int64)
    if cap.sum() < n:
        raise ValueError(f"capacity {int(cap.sum())} < {n} tokens")
    if not np.isfinite(s.max(1)).all():
        raise ValueError("every token needs at least one allowed (finite-score) expert")
    if cap.sum() > n:  # pad with zero-score dummy tokens so every expert ends exactly full: prices are then
        s = np.concatenate([s, np.zeros((int(cap.sum()) - n, e))])  # free (no sign condition), any start is exact
    p = np.zeros(e)
    sigma = s.argmax(1)
    load = np.bincount(sigma, minlength=e)
    if np.maximum(load - cap, 0).sum() > s.shape[0] // 32:  # much overload: start from Sinkhorn's prices instead
        p = _sinkhorn_prices(s, cap)
        sigma = (s - p).argmax(1)
        load = np.bincount(sigma, minlength=e)
    m = np.empty((e, e))
    arg = np.empty((e, e), dtype=np.int64)
    for j in range(e):
        m[j], arg[j] = _row(s, sigma, j)
    while (load > cap).any():
        w = np.maximum(m - (p[:, None] - p[None, :]), 0.0)  # reduced move costs (>= 0 up to rounding)
        dist = np.where(load > cap, 0.0, np.inf)
        prev = np.full(e, -1)
        settled = np.zeros(e, dtype=bool)
        target = -1
        while True:  # Dijkstra on the E experts (dense)
            j = int(np.where(settled, np.inf, dist).argmin())
            if not np.isfinite(dist[j]):
                raise RuntimeError("no augmenting path: an over-capacity expert's tokens cannot move")
            settled[j] = True
            if load[j] < cap[j]:
                target = j
                break
            cand = dist[j] + w[j]
            better = (cand < dist) & ~settled
            dist[better], prev[better] = cand[better], j
        p -= np.minimum(dist, dist[target])
        touched = {target}
        j = target
        while prev[j] >= 0:  # move one token along each edge prev[j] -> j, walking back to an overloaded expert
            i = prev[j]
            sigma[arg[i, j]] = j
            load[i] -= 1
            load[j] += 1
            touched.update((i, j))
            j = i
        for t in touched:
            m[t], arg[t] = _row(s, sigma, t)
    return sigma[:n]
