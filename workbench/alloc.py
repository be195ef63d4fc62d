"""Sparse allocation over a (rows, units) score matrix: the one place allocation lives.

Rows are tokens; units are SAE latents or MoE experts. Every method in the workbench picks a 0/1
support of the score matrix under a budget (see docs/design.md):

- :func:`topk_per_row`  — each row keeps its k largest units (TopK SAE, Top-k gate)
- :func:`topk_per_col`  — each unit keeps its top-m rows (Feature Choice SAE, Expert Choice gate)
- :func:`topk_global`   — the K largest entries of the whole matrix (Mutual Choice SAE)
- :func:`threshold`     — entries above a (per-unit) threshold (inference for FC/MC)

Each returns an :class:`Allocation`: COO entries sorted by row, so the decoder can run as an
``embedding_bag`` over rows (``offsets``), and :meth:`Allocation.by_unit` regroups the same pairs unit by
unit (one stable sort, cached) for per-unit sums: the SAE kernels' latent-wise backward, MoE dispatch to
experts and expert parallelism all read that one grouping. :func:`budget_capacity` is the one per-unit
capacity formula (Feature Choice, Expert Choice, BASE, the sparse-OT router).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import cached_property

import torch
from torch import Tensor

from workbench import topk_small


@dataclass(frozen=True)
class UnitGroups:
    """The pairs of an Allocation regrouped unit by unit (stable: row order kept inside a unit)."""

    order: Tensor  # (nnz,) pair indices sorted by unit: pairs of unit u are order[offsets[u]:offsets[u]+counts[u]]
    rows: Tensor  # (nnz,) rows[order], the rows of each unit's pairs, unit after unit
    counts: Tensor  # (n_units,) pairs per unit
    offsets: Tensor  # (n_units,) start of each unit's pairs in `order`, for ``F.embedding_bag(rows, T, offsets)``

    def split_sizes(self) -> list[int]:
        """counts as a host list (one device sync), for ``tensor.split`` per unit."""
        return self.counts.tolist()


@dataclass
class Allocation:
    """Active (row, unit) pairs of a (n_rows, n_units) matrix, sorted by row then selection order."""

    rows: Tensor  # (nnz,) long
    cols: Tensor  # (nnz,) long
    values: Tensor  # (nnz,) scores at the active entries (differentiable w.r.t. the scores)
    shape: tuple[int, int]

    @cached_property
    def by_unit(self) -> UnitGroups:
        """The pairs grouped by unit (computed once per Allocation): one stable argsort of cols."""
        order = torch.argsort(self.cols, stable=True)  # (nnz,)
        counts = self.col_counts()  # (n_units,)
        return UnitGroups(order, self.rows[order], counts, torch.cumsum(counts, 0) - counts)

    def with_values(self, values: Tensor) -> Allocation:
        """The same pairs carrying other values (nnz,), e.g. combine weights instead of scores."""
        return Allocation(self.rows, self.cols, values, self.shape)

    def row_sums(self) -> Tensor:
        """(n_rows,) sum of the values of each row's pairs (differentiable)."""
        return self.values.new_zeros(self.shape[0]).index_add(0, self.rows, self.values)

    def normalized(self) -> Allocation:
        """Values divided by their row's sum, so each row with pairs sums to 1 (differentiable)."""
        return self.with_values(self.values / self.row_sums().clamp(min=1e-12)[self.rows])

    @property
    def nnz(self) -> int:
        return self.rows.numel()

    def row_counts(self) -> Tensor:
        """(n_rows,) number of active units per row (per-token L0)."""
        return counts(self.rows, self.shape[0])

    def col_counts(self) -> Tensor:
        """(n_units,) number of active rows per unit (load / usage)."""
        return counts(self.cols, self.shape[1])

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


def counts(idx: Tensor, n: int, keep: Tensor | None = None) -> Tensor:
    """(n,) long: how often each of 0..n-1 occurs in idx (= ``torch.bincount(idx, minlength=n)``), counting only
    the entries where keep (same shape as idx, bool) is set when it is given.

    A scatter-add rather than bincount: bincount reads idx.max() back to the host, a device sync per
    call on a GPU, which stalls a training step's queue of kernels.
    """
    ones = torch.ones_like(idx) if keep is None else keep.long()
    return torch.zeros(n, dtype=torch.long, device=idx.device).scatter_add_(0, idx, ones)


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


def topk_per_col(scores: Tensor, capacity: int | Tensor, known: tuple[int, int, int] | None = None) -> Allocation:
    """Each unit (column) keeps its top-`capacity` rows; capacity is an int or a (n_units,) tensor.

    known: (smallest, largest, sum) of the capacities when the caller knows them (uniform capacities):
    the allocation then never reads the device back (on a GPU, each read is a sync that stalls the step).
    """
    n, f = scores.shape
    cap = torch.as_tensor(capacity, device=scores.device).long()
    if cap.ndim == 0:
        cap = cap.expand(f)
    if cap.shape != (f,) or (known is None and (cap < 0).any()):
        raise ValueError(f"capacity must be a non-negative int or a ({f},) tensor, got shape {tuple(cap.shape)}")
    cap = cap.clamp(max=n)
    lo, hi, total = known if known is not None and known[1] <= n else (int(cap.min()), int(cap.max()), None)
    if hi == 0:
        empty = scores.new_zeros(0, dtype=torch.long)
        return Allocation(empty, empty, scores.new_zeros(0), (n, f))
    if hi <= 2 * lo:  # (near-)uniform: one top-max over all columns, then cut
        rows, cols = _topk_cols(scores, cap, torch.arange(f, device=scores.device), hi, lo, total)
    else:
        # varying capacities: bucket columns by capacity (powers of two) so that a few large
        # capacities do not force a top-n (a full sort) of every column
        bucket = torch.ceil(torch.log2(cap.clamp(min=1).double())).long()
        parts = [_topk_cols(scores, cap, (bucket == b).nonzero().squeeze(1)) for b in bucket.unique().tolist()]
        rows, cols = torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])
    return _from_mask_order(rows, cols, scores)


def _topk_cols(scores: Tensor, cap: Tensor, units: Tensor, m: int | None = None, lo: int = 0,
               total: int | None = None) -> tuple[Tensor, Tensor]:
    """(rows, cols) of the top-cap[u] rows of each column u in `units` (cap already <= n_rows).

    m: the largest cap[units] (read from the device if not given); lo: a lower bound on them (all equal
    to m: nothing to cut); total: their sum (lets the cut run without a device sync)."""
    m = m if m is not None else int(cap[units].max())
    sub = scores if units.numel() == scores.shape[1] else scores[:, units]
    if topk_small.usable(sub.t(), m):  # a small m on a GPU: one read of each column (workbench/topk_small.py)
        idx = topk_small.row_topk_small(sub.t(), m)[1].t()  # (m, |units|) row indices, best first per column
    else:
        _, idx = sub.topk(m, dim=0, sorted=True)  # (m, |units|)
    cols = units.expand(m, -1)
    if lo == m:
        return idx.reshape(-1), cols.reshape(-1)
    keep = torch.arange(m, device=scores.device)[:, None] < cap[units][None, :]  # (m, |units|)
    if total is not None:  # the kept count is known: a fixed-size nonzero needs no sync
        at = nonzero_fixed(keep.reshape(-1), total)  # (total,)
        return idx.reshape(-1)[at], cols.reshape(-1)[at]
    return idx[keep], cols[keep]


def nonzero_fixed(mask: Tensor, size: int, fill: int = 0) -> Tensor:
    """(size,) long: the indices of the first `size` True entries of a 1-D mask, padded with `fill`.

    ``torch.nonzero`` must read the count back to size its output: a device sync on a GPU, which stalls
    a training step's queue of kernels. With the size fixed by the caller, nothing is read back."""
    if hasattr(torch, "nonzero_static"):
        try:
            return torch.nonzero_static(mask, size=size, fill_value=fill).squeeze(1)
        except (NotImplementedError, RuntimeError):  # no kernel for this device in this torch
            pass
    idx = torch.nonzero(mask).squeeze(1)[:size]
    return torch.cat([idx, idx.new_full((size - idx.numel(),), fill)])


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


def drop_over_capacity(a: Allocation, rank: Tensor, capacity: int) -> Allocation:
    """Keep at most `capacity` pairs per unit, by priority: every row's first choice before any second
    choice (rank (nnz,) = the pair's choice rank within its row, 0 = first), then earlier rows first.
    This is vmoe's "vanilla" Top-Experts-Per-Item dispatch (token choice with expert capacity); pairs
    past an expert's capacity are dropped. The kept pairs stay in a's order (sorted by row)."""
    n, f = a.shape
    if a.nnz == 0:
        return a
    key = (a.cols * (int(rank.max()) + 1) + rank) * n + a.rows  # unit, then rank, then row
    order = torch.argsort(key)
    counts = a.col_counts()
    slot = torch.arange(a.nnz, device=a.rows.device) - (torch.cumsum(counts, 0) - counts)[a.cols[order]]
    keep = torch.zeros(a.nnz, dtype=torch.bool, device=a.rows.device)
    keep[order] = slot < capacity
    return Allocation(a.rows[keep], a.cols[keep], a.values[keep], a.shape)


def from_dense(weights: Tensor) -> Allocation:
    """The nonzero entries of a dense (n_rows, n_units) matrix (a soft gate's weights), values kept
    differentiable. For methods whose computation is dense anyway; sparse selections build their
    Allocation directly."""
    rows, cols = torch.nonzero(weights, as_tuple=True)  # row-major: sorted by row
    return Allocation(rows, cols, weights[rows, cols], tuple(weights.shape))


def budget_capacity(k: int, n_rows: int, n_units: int, factor: float = 1.0, multiple_of: int = 1) -> int:
    """Uniform per-unit capacity ceil(factor * k * n_rows / n_units), rounded up to a multiple of
    `multiple_of`: with factor 1 the same budget as TopK (k per row). The one capacity formula:
    Feature Choice SAEs, Expert Choice (Zhou et al.: c = k N cf / E), BASE (k = 1) and the sparse-OT
    router. vmoe rounds every capacity up to a multiple of 4 (``vmoe.moe.compute_capacity``) and folds k
    into its capacity factor, so vmoe's (capacity_factor C, multiple_of 4) = ours (factor C / k, 4)."""
    if min(k, n_rows, n_units, multiple_of) < 1 or not factor > 0:
        raise ValueError(f"capacity needs k, rows, units, multiple_of >= 1 and factor > 0; got k={k}, "
                         f"rows={n_rows}, units={n_units}, factor={factor}, multiple_of={multiple_of}")
    if factor == 1:
        cap = -(-k * n_rows // n_units)  # exact integer ceil
    else:
        cap = math.ceil(factor * k * n_rows / n_units - 1e-9)  # 1e-9: an exact product does not round up
    return cap + (-cap) % multiple_of


def uniform_capacities(total: int, n_units: int, ranks: Tensor | None = None, usage: Tensor | None = None) -> Tensor:
    """(n_units,) capacities as equal as integers allow, summing exactly to `total`.

    Every unit gets floor(total / n_units); the remaining total mod n_units units of best rank
    (ranks: (n_units,), 1 = most used; default unit i has rank i + 1) get one more. A plain
    ceil(total / n_units) for all would overshoot the budget by up to n_units - 1 entries.
    usage: (n_units,) instead of ranks, the same as ranks=ranks_of(usage) in fewer kernel launches (a
    Feature Choice SAE asks every training step).
    """
    base, extra = divmod(int(total), n_units)
    if usage is not None:  # the `extra` most used units get one more (ties: lower index first, as ranks_of)
        cap = torch.full((n_units,), base, dtype=torch.long, device=usage.device)
        return cap.index_fill_(0, torch.argsort(usage, descending=True, stable=True)[:extra], base + 1)
    by_rank = torch.full((n_units,), base, dtype=torch.long, device=ranks.device if ranks is not None else None)
    by_rank[:extra] += 1  # made where the ranks are: a host tensor copied to a GPU would sync it
    return _by_rank(by_rank, ranks)


def zipf_capacities(total: int, n_units: int, alpha: float = 1.0, ranks: Tensor | None = None,
                    cap: int | None = None) -> Tensor:
    """Capacities m_r ∝ r^(-alpha) over ranks r = 1..n_units summing exactly to `total`, each <= cap.

    ranks: (n_units,) rank of each unit (1 = most used); default unit i has rank i + 1.
    cap: most a unit can take (a Feature Choice latent cannot take more than the batch's N tokens);
    what the top ranks cannot hold is spread over the others in proportion to their Zipf weights,
    so the total is kept (needs total <= n_units * cap). Rounding uses largest remainders.
    """
    if cap is not None and total > n_units * cap:
        raise ValueError(f"total {total} does not fit in {n_units} units of capacity {cap}")
    w = torch.arange(1, n_units + 1, dtype=torch.float64).pow(-alpha)
    ideal = w / w.sum() * total
    if cap is not None:  # water-filling: clamp at cap, hand the excess to the unclamped units
        full = torch.zeros(n_units, dtype=torch.bool)
        while True:
            over = ~full & (ideal > cap)
            if not over.any():
                break
            full |= over
            left = total - cap * int(full.sum())
            ideal = torch.where(full, torch.tensor(float(cap), dtype=torch.float64), w / w[~full].sum() * left)
    base = ideal.floor()
    short = int(round(total - base.sum().item()))
    if short > 0:
        room = base < (cap if cap is not None else float("inf"))
        order = torch.argsort(torch.where(room, ideal - base, torch.tensor(-1.0, dtype=torch.float64)), descending=True)
        base[order[:short]] += 1
    return _by_rank(base.long(), ranks)


def _by_rank(by_rank: Tensor, ranks: Tensor | None) -> Tensor:
    """Capacities listed by rank -> capacities per unit (unit with rank r gets by_rank[r - 1])."""
    if ranks is None:
        return by_rank
    return by_rank.to(ranks.device)[ranks.long() - 1]


def ranks_of(usage: Tensor) -> Tensor:
    """(n_units,) rank of each unit by usage, 1 = most used; ties keep the unit order."""
    ranks = torch.empty(usage.shape, dtype=torch.long, device=usage.device)
    ranks[torch.argsort(usage, descending=True, stable=True)] = torch.arange(1, usage.numel() + 1, device=usage.device)
    return ranks
