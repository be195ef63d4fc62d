"""Sparse allocation over a (rows, units) score matrix: the one place allocation lives.

Rows are tokens; units are SAE latents or MoE experts. Every method in the workbench picks a 0/1
support of the score matrix under a budget (see docs/design.md):

- :func:`topk_per_row`  — each row keeps its k largest units (TopK SAE, Top-k gate)
- :func:`topk_per_col`  — each unit keeps its top-m rows (Feature Choice SAE, Expert Choice gate)
- :func:`topk_global`   — the K largest entries of the whole matrix (Mutual Choice SAE)
- :func:`threshold`     — entries above a (per-unit) threshold (inference for FC/MC)

Each returns an :class:`Allocation`: COO entries sorted by row, so the decoder can run as an
``embedding_bag`` over rows (``offsets``) and dispatch can gather per unit.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class Allocation:
    """Active (row, unit) pairs of a (n_rows, n_units) matrix, sorted by row then selection order."""

    rows: Tensor  # (nnz,) long
    cols: Tensor  # (nnz,) long
    values: Tensor  # (nnz,) scores at the active entries (differentiable w.r.t. the scores)
    shape: tuple[int, int]

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    def row_counts(self) -> Tensor:
        """(n_rows,) number of active units per row (per-token L0)."""
        return torch.bincount(self.rows, minlength=self.shape[0])

    def col_counts(self) -> Tensor:
        """(n_units,) number of active rows per unit (load / usage)."""
        return torch.bincount(self.cols, minlength=self.shape[1])

    def offsets(self) -> Tensor:
        """(n_rows,) start of each row's entries, for ``F.embedding_bag(cols, W, offsets)``."""
        counts = self.row_counts()
        return torch.cumsum(counts, 0) - counts

    def mask(self) -> Tensor:
        """(n_rows, n_units) bool support."""
        m = torch.zeros(self.shape, dtype=torch.bool, device=self.rows.device)
        m[self.rows, self.cols] = True
        return m

    def dense(self) -> Tensor:
        """(n_rows, n_units) matrix with `values` on the support and 0 elsewhere (differentiable)."""
        out = self.values.new_zeros(self.shape)
        return out.index_put((self.rows, self.cols), self.values)


def _from_mask_order(rows: Tensor, cols: Tensor, scores: Tensor) -> Allocation:
    """Sort entries by row (stable) and read their values from scores."""
    order = torch.argsort(rows, stable=True)
    rows, cols = rows[order], cols[order]
    return Allocation(rows, cols, scores[rows, cols], tuple(scores.shape))


def topk_per_row(scores: Tensor, k: int) -> Allocation:
    """Each row keeps its k largest entries (ties broken by torch.topk). scores: (n_rows, n_units)."""
    n, f = scores.shape
    if not 0 < k <= f:
        raise ValueError(f"k must be in [1, {f}] for {f} units, got {k}")
    vals, idx = scores.topk(k, dim=1, sorted=False)  # (n, k)
    rows = torch.arange(n, device=scores.device).repeat_interleave(k)
    return Allocation(rows, idx.reshape(-1), vals.reshape(-1), (n, f))


def topk_per_col(scores: Tensor, capacity: int | Tensor) -> Allocation:
    """Each unit (column) keeps its top-`capacity` rows; capacity is an int or a (n_units,) tensor."""
    n, f = scores.shape
    cap = torch.as_tensor(capacity, device=scores.device).long()
    if cap.ndim == 0:
        cap = cap.expand(f)
    if cap.shape != (f,) or (cap < 0).any():
        raise ValueError(f"capacity must be a non-negative int or a ({f},) tensor, got shape {tuple(cap.shape)}")
    cap = cap.clamp(max=n)
    if int(cap.max()) == 0:
        empty = scores.new_zeros(0, dtype=torch.long)
        return Allocation(empty, empty, scores.new_zeros(0), (n, f))
    if bool((cap == cap[0]).all()):  # uniform: one top-m over all columns
        rows, cols = _topk_cols(scores, cap, torch.arange(f, device=scores.device))
    else:
        # varying capacities: bucket columns by capacity (powers of two) so that a few large
        # capacities do not force a top-n (a full sort) of every column
        bucket = torch.ceil(torch.log2(cap.clamp(min=1).double())).long()
        parts = [_topk_cols(scores, cap, (bucket == b).nonzero().squeeze(1)) for b in bucket.unique().tolist()]
        rows, cols = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _from_mask_order(rows, cols, scores)


def _topk_cols(scores: Tensor, cap: Tensor, units: Tensor) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the top-cap[u] rows of each column u in `units` (cap already <= n_rows)."""
    m = int(cap[units].max())
    sub = scores if units.numel() == scores.shape[1] else scores[:, units]
    _, idx = sub.topk(m, dim=0, sorted=True)  # (m, |units|) row indices, best first per column
    keep = torch.arange(m, device=scores.device)[:, None] < cap[units][None, :]  # (m, |units|)
    return idx[keep], units.expand(m, -1)[keep]


def topk_global(scores: Tensor, budget: int) -> Allocation:
    """Keep the `budget` largest entries of the whole matrix (any row or unit may take any share)."""
    n, f = scores.shape
    if not 0 < budget <= n * f:
        raise ValueError(f"budget must be in [1, {n * f}], got {budget}")
    flat = _topk_flat(scores.reshape(-1), budget, row_len=f)
    return _from_mask_order(flat // f, flat % f, scores)


def _topk_flat(v: Tensor, budget: int, row_len: int = 1, sample: int = 1 << 16) -> Tensor:
    """Indices of the `budget` largest entries of a 1-D tensor; same set as ``v.topk(budget)``.

    A top-K over millions of entries is a partial sort of all of them. When K is a small fraction,
    a cheap threshold t taken from a strided sample (aiming at ~2K candidates) lets one pass
    (v >= t) cut the candidates down, and the exact top-K runs on those. If fewer than K entries
    pass (unlucky sample), it falls back to the full top-K, so the result is always exact.
    """
    n = v.numel()
    if n <= 4 * sample or budget * 8 > n:
        return v.topk(budget, sorted=False).indices
    stride = n // sample
    while math.gcd(stride, row_len) != 1:  # visit every column of a flattened (rows, row_len) matrix
        stride += 1
    s = v[::stride]  # deterministic sample, no RNG
    q = min(s.numel(), max(1, int(2 * budget / n * s.numel()) + 8))
    t = s.topk(q, sorted=True).values[-1]
    cand = torch.nonzero(v >= t).squeeze(1)
    if cand.numel() < budget:
        return v.topk(budget, sorted=False).indices
    return cand[v[cand].topk(budget, sorted=False).indices]


def threshold(scores: Tensor, theta: float | Tensor) -> Allocation:
    """Entries strictly above theta (a scalar or a (n_units,) per-unit threshold)."""
    theta = torch.as_tensor(theta, dtype=scores.dtype, device=scores.device)
    rows, cols = torch.nonzero(scores > theta, as_tuple=True)  # already row-major sorted
    return Allocation(rows, cols, scores[rows, cols], tuple(scores.shape))


def budget_capacity(k: int, n_rows: int, n_units: int) -> int:
    """Uniform per-unit capacity m = ceil(k * n_rows / n_units) giving the same budget as TopK."""
    return -(-k * n_rows // n_units)


def zipf_capacities(total: int, n_units: int, alpha: float = 1.0, ranks: Tensor | None = None) -> Tensor:
    """Capacities m_r ∝ r^(-alpha) over ranks r = 1..n_units summing exactly to `total`.

    ranks: (n_units,) rank of each unit (1 = most used); default unit i has rank i + 1.
    Rounding uses largest remainders so the sum is exact.
    """
    r = torch.arange(1, n_units + 1, dtype=torch.float64)
    w = r.pow(-alpha)
    ideal = w / w.sum() * total
    base = ideal.floor()
    short = int(total - base.sum().item())
    if short > 0:
        base[torch.argsort(ideal - base, descending=True)[:short]] += 1
    caps_by_rank = base.long()
    if ranks is None:
        return caps_by_rank
    return caps_by_rank[ranks.long().cpu() - 1].to(ranks.device)
