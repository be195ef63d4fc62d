"""Transport primitives: Euclidean projection onto the simplex (dense and k-sparse) and log-domain Sinkhorn.

The one place these live; the sparsity-constrained OT solver, S-BASE and the local-search permutation
all call them. Everything is batched over leading dimensions, differentiable (almost everywhere) by
plain autograd, and device-agnostic.

Simplex projection (Held et al. 1974; Duchi et al. 2008), along the last dimension::

    P(v; z) = argmin_{p >= 0, sum(p) = z} ||p - v||^2 = max(v - theta, 0)
    u = sort(v, descending);  rho = max{ j : u_j - (sum_{i<=j} u_i - z) / j > 0 }
    theta = (sum_{i<=rho} u_i - z) / rho

k-sparse projection (Kyrillidis et al. 2013): argmin over the simplex with ||p||_0 <= k is the dense
projection of the k largest entries of v, the rest set to 0.

Log-domain Sinkhorn: for logits L (..., n, m) and marginals a (n), b (m), alternately
``f = log a - logsumexp_j(L + g)`` and ``g = log b - logsumexp_i(L + f)``; the plan is ``exp(L + f + g)``.
"""

from __future__ import annotations

import torch
from torch import Tensor


def _theta(u_sorted: Tensor, z: Tensor | float) -> Tensor:
    """Threshold theta (..., 1) of the simplex projection, given entries sorted descending (..., d)."""
    d = u_sorted.shape[-1]
    z = torch.as_tensor(z, dtype=u_sorted.dtype, device=u_sorted.device)
    if z.ndim > 0:
        z = z.unsqueeze(-1)  # (...,) -> (..., 1)
    cssv = u_sorted.cumsum(-1) - z  # (..., d)
    ind = torch.arange(1, d + 1, dtype=u_sorted.dtype, device=u_sorted.device)
    rho = (u_sorted - cssv / ind > 0).sum(-1, keepdim=True).clamp(min=1)  # (..., 1), support size
    return cssv.gather(-1, rho - 1) / rho.to(u_sorted.dtype)


def project_simplex(v: Tensor, z: Tensor | float = 1.0) -> Tensor:
    """Euclidean projection of v (..., d) onto {p >= 0, sum p = z} along the last dim; z: scalar or (...,)."""
    u = v.sort(dim=-1, descending=True).values
    return (v - _theta(u, z)).clamp(min=0)


def project_sparse_simplex(v: Tensor, k: int, z: Tensor | float = 1.0) -> Tensor:
    """Projection of v (..., d) onto the simplex of mass z with at most k nonzeros (last dim).

    The k largest entries (torch.topk, sorted) are projected densely; the others become 0. For k >= d
    this is :func:`project_simplex`. Ties at the k-th entry are broken by torch.topk.
    """
    d = v.shape[-1]
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if k >= d:
        return project_simplex(v, z)
    vals, idx = v.topk(k, dim=-1, sorted=True)  # (..., k) descending
    p_top = (vals - _theta(vals, z)).clamp(min=0)
    return torch.zeros_like(v).scatter(-1, idx, p_top)


def sinkhorn_log(logits: Tensor, log_a: Tensor | None = None, log_b: Tensor | None = None,
                 n_iters: int = 50) -> Tensor:
    """Log of the Sinkhorn plan for logits (..., n, m) with row marginals a and column marginals b.

    log_a: (..., n) or None (each row has mass 1); log_b: (..., m) or None (columns share the n units
    of mass equally, n/m each). Returns log T (..., n, m) with T's column sums exactly b after the last
    (column) update and row sums approaching a. Differentiable by autograd through the iterations.
    """
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
    return logits + f.unsqueeze(-1) + g.unsqueeze(-2)
