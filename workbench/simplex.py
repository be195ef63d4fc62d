"""Transport primitives: Euclidean projection onto the simplex (dense and k-sparse) and log-domain Sinkhorn.

The one place these live; the sparsity-constrained OT solver, S-BASE and the local-search permutation
all call them. Everything is batched over leading dimensions, differentiable (almost everywhere) by
plain autograd, and device-agnostic.

Simplex projection (Held et al. 1974; Duchi et al. 2008), along a chosen dimension (the last by default)::

    P(v; z) = argmin_{p >= 0, sum(p) = z} ||p - v||^2 = max(v - theta, 0)
    u = sort(v, descending);  rho = max{ j : u_j - (sum_{i<=j} u_i - z) / j > 0 }
    theta = (sum_{i<=rho} u_i - z) / rho

k-sparse projection (Kyrillidis et al. 2013): argmin over the simplex with ||p||_0 <= k is the dense
projection of the k largest entries of v, the rest set to 0. For small k the k largest values come from
k masked maxima (elementwise passes that vectorise along any dim and fuse under torch.compile).

Log-domain Sinkhorn: for logits L (..., n, m) and marginals a (n), b (m), alternately
``f = log a - logsumexp_j(L + g)`` and ``g = log b - logsumexp_i(L + f)``; the plan is ``exp(L + f + g)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


SMALL_K = 8  # up to this k the top-k values come from k masked maxima (fast along any dim, fusable)


def _theta(u_sorted: Tensor, z: Tensor | float, dim: int = -1) -> Tensor:
    """Threshold theta (size 1 along dim) of the simplex projection, given entries sorted descending along dim."""
    d = u_sorted.shape[dim]
    z = torch.as_tensor(z, dtype=u_sorted.dtype, device=u_sorted.device)
    if z.ndim > 0:
        z = z.unsqueeze(dim)  # (...,) -> (..., 1) along dim
    cssv = u_sorted.cumsum(dim) - z
    shape = [1] * u_sorted.ndim
    shape[dim] = d
    ind = torch.arange(1, d + 1, dtype=u_sorted.dtype, device=u_sorted.device).view(shape)
    rho = (u_sorted - cssv / ind > 0).sum(dim, keepdim=True).clamp(min=1)  # support size
    return cssv.gather(dim, rho - 1) / rho.to(u_sorted.dtype)


def project_simplex(v: Tensor, z: Tensor | float = 1.0, dim: int = -1) -> Tensor:
    """Euclidean projection of v onto {p >= 0, sum p = z} along dim; z: scalar or v's shape without dim."""
    u = v.sort(dim=dim, descending=True).values
    return (v - _theta(u, z, dim)).clamp(min=0)


def top_values(v: Tensor, k: int, dim: int = -1) -> Tensor:
    """The k largest entries of v along dim, sorted descending (size k along dim).

    For k <= SMALL_K they are k successive maxima, each over the entries below the previous one: a few
    elementwise passes that vectorise along any dim and that torch.compile fuses; torch.topk otherwise.
    Tied entries count once here, so callers check for ties (see project_sparse_simplex)."""
    if k > SMALL_K:
        return v.topk(k, dim=dim, sorted=True).values
    vals = [v.amax(dim, keepdim=True)]
    for _ in range(k - 1):
        vals.append(v.masked_fill(v >= vals[-1], float("-inf")).amax(dim, keepdim=True))
    return torch.cat(vals, dim)


def sparse_simplex_parts(v: Tensor, k: int, z: Tensor | float = 1.0, dim: int = -1) -> tuple[Tensor, Tensor]:
    """The k-sparse projection by masked maxima, and a flag per vector (v's shape without dim) marking ties.

    Branch-free, so torch.compile fuses it; where a flag is set (more than k entries reach the k-th
    largest value, so the support is ambiguous) the projection is wrong and the caller redoes it exactly.
    """
    d = v.shape[dim]
    if k >= d:
        return project_simplex(v, z, dim), torch.zeros_like(v.select(dim, 0), dtype=torch.bool)
    u = top_values(v, k, dim)
    kth = u.narrow(dim, k - 1, 1)
    ties = u.isneginf().any(dim) | ((v >= kth).sum(dim) > k)
    return torch.where(v >= kth, (v - _theta(u, z, dim)).clamp(min=0), 0.0), ties


def project_sparse_simplex(v: Tensor, k: int, z: Tensor | float = 1.0, dim: int = -1) -> Tensor:
    """Projection of v onto the simplex of mass z with at most k nonzeros, along dim.

    The k largest entries are projected densely; the others become 0. For k >= size this is
    :func:`project_simplex`. Ties at the k-th entry are broken by torch.topk's order, so the result never
    has more than k nonzeros.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    p, ties = sparse_simplex_parts(v, k, z, dim)
    if bool(ties.any()):
        vals, idx = v.topk(k, dim=dim, sorted=True)
        return torch.zeros_like(v).scatter(dim, idx, (vals - _theta(vals, z, dim)).clamp(min=0))
    return p


def sinkhorn_potentials(logits: Tensor, log_a: Tensor | None = None, log_b: Tensor | None = None,
                        n_iters: int = 50) -> tuple[Tensor, Tensor]:
    """Log-domain Sinkhorn potentials f (..., n), g (..., m) for logits (..., n, m); see sinkhorn_log.

    -inf logits (forbidden pairs) are allowed as long as every row and column keeps a finite entry."""
    n, m = logits.shape[-2:]
    if log_a is None:
        log_a = logits.new_zeros(n)
    if log_b is None:
        log_b = logits.new_full((m,), float(torch.log(torch.tensor(n / m))))
    g = torch.zeros_like(logits[..., 0, :])  # (..., m)
    f = torch.zeros_like(logits[..., :, 0])  # (..., n)
    for _ in range(n_iters):
        f = log_a - torch.logsumexp(logits + g.unsqueeze(-2), dim=-1)
        g = log_b - torch.logsumexp(logits + f.unsqueeze(-1), dim=-2)
    return f, g


def sinkhorn_log(logits: Tensor, log_a: Tensor | None = None, log_b: Tensor | None = None,
                 n_iters: int = 50) -> Tensor:
    """Log of the Sinkhorn plan for logits (..., n, m) with row marginals a and column marginals b.

    log_a: (..., n) or None (each row has mass 1); log_b: (..., m) or None (columns share the n units
    of mass equally, n/m each). Returns log T (..., n, m) with T's column sums exactly b after the last
    (column) update and row sums approaching a. Differentiable by autograd through the iterations.
    """
    f, g = sinkhorn_potentials(logits, log_a, log_b, n_iters)
    return logits + f.unsqueeze(-1) + g.unsqueeze(-2)
