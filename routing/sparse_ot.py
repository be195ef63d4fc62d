"""Sparsity-constrained optimal transport (Liu, Puigcerver & Blondel 2023), batched, in torch.

Problem, for a cost C (n rows, m columns), row marginals a (n), column marginals b (m), sum a = sum b::

    min_T  <T, C> + (gamma/2) ||T||^2   s.t.  T >= 0,  T 1 = a,  T^T 1 = b,  ||T[:, j]||_0 <= k

Semi-dual (concave in alpha, maximised here)::

    D(alpha) = <alpha, a> - sum_j b_j * max_k(alpha - c_j; b_j)
    max_k(x; b) = max_{p in simplex, ||p||_0 <= k} <p, x> - (gamma b / 2) ||p||^2
    p*_j = project_sparse_simplex((alpha - c_j) / (gamma b_j), k)          (workbench.simplex)
    grad D = a - sum_j b_j p*_j ;   plan T[:, j] = b_j p*_j

Column sums (= b) and nnz <= k per column hold at any alpha; row sums equal a at the optimum when the
problem is feasible. With k >= n this is quadratically regularised OT.

Solver ("newton", default): semismooth Newton ascent on alpha with Armijo backtracking, batched. On a
fixed support, -Hessian = (1/gamma) sum_j J_j with J_j = diag(s_j) - s_j s_j^T / |s_j| (s_j the 0/1
support of column j), i.e. M = diag(D) - U U^T with D = sum_j s_j and U[:, j] = s_j / sqrt(|s_j|). The
Newton system is solved as an n x n system when n <= m, else through Woodbury with an m x m system,
so both router orientations (16 experts x 512 tokens either way round) cost a 16 x 16 solve.
"adam" is the cheap fixed-budget ascent vmoe uses (20 steps; our step is lr * gamma * mean(b), scale-free).

Gradients w.r.t. cost, a and b use the implicit function theorem at the solution: with alpha* fixed
(no grad) we take one Newton step whose right-hand side carries the graph,
``alpha~ = alpha* + gamma M^{-1} grad D(alpha*; C)``, so d alpha~/dC = -H^{-1} d(grad D)/dC exactly.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.simplex import project_sparse_simplex


LM_START = 1e6  # initial Levenberg-Marquardt damping, in units of `damping`
STALL_RTOL = 1e-12  # a problem whose objective improves less than this (relative) in an iteration has stalled


class MarginalError(WorkbenchError, ValueError):
    """Malformed or infeasible OT inputs (shapes, signs, sums, sparsity budget)."""


@dataclass
class SparseOTResult:
    plan: Tensor  # (..., n, m): <= k nonzeros per column, column sums = b
    alpha: Tensor  # (..., n) semi-dual potentials
    value: Tensor  # (...,) semi-dual objective D(alpha)
    primal: Tensor  # (...,) <T, C> + gamma/2 ||T||^2 of the returned plan
    row_error: Tensor  # (...,) max_i |(T 1)_i - a_i|
    n_iter: int
    converged: Tensor  # (...,) bool: ||grad||_inf <= tol * max(1, max a)


def check_problem(cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float) -> tuple[Tensor, Tensor]:
    """Validate shapes, signs, sums and the sparsity budget; return a, b broadcast to (..., n), (..., m)."""
    if cost.ndim < 2:
        raise MarginalError(f"cost must have shape (..., n, m), got {tuple(cost.shape)}; add the row/column dims")
    n, m = cost.shape[-2:]
    batch = cost.shape[:-2]
    if a.shape[-1:] != (n,) or b.shape[-1:] != (m,):
        raise MarginalError(f"marginals must have shapes (..., {n}) and (..., {m}) for a cost of shape "
                            f"{tuple(cost.shape)}, got a {tuple(a.shape)} and b {tuple(b.shape)}")
    try:
        a = a.to(cost.dtype).expand(*batch, n)
        b = b.to(cost.dtype).expand(*batch, m)
    except RuntimeError as e:
        raise MarginalError(f"marginal batch dims do not broadcast to {tuple(batch)}: {e}") from None
    if not isinstance(k, int) or k < 1:
        raise MarginalError(f"k (max nonzeros per column) must be an int >= 1, got {k!r}")
    if not gamma > 0:
        raise MarginalError(f"gamma must be > 0, got {gamma}; use a small positive value for near-exact OT")
    for name, t in (("cost", cost), ("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise MarginalError(f"{name} has non-finite entries; clean the inputs (NaN/inf)")
    if (a < 0).any():
        raise MarginalError("row marginals a must be >= 0")
    if (b <= 0).any():
        raise MarginalError("column marginals b must be > 0; drop empty columns before solving")
    sa, sb = a.sum(-1), b.sum(-1)
    bad = (sa - sb).abs() > 1e-6 * sb.abs().clamp(min=1)
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0])
        raise MarginalError(f"marginals are unbalanced: sum(a) = {sa.reshape(-1)[i].item():.6g} but sum(b) = "
                            f"{sb.reshape(-1)[i].item():.6g}; rescale one of them so the sums match")
    need = (a > 0).sum(-1)
    if (need > m * k).any():
        raise MarginalError(f"infeasible: {int(need.max())} rows need mass but {m} columns with at most "
                            f"k = {k} nonzeros each reach at most {m * k} rows; raise k or merge rows")
    if k == 1 and n > 1:
        rtol = 1e-9 if cost.dtype == torch.float64 else 1e-5
        uniform = (b - b[..., :1]).abs().max() <= rtol * b.abs().max()
        if uniform:
            ratio = a / b[..., :1]
            if ((ratio - ratio.round()).abs() > 100 * rtol * ratio.clamp(min=1)).any():
                raise MarginalError("infeasible: with k = 1 every column goes to one row whole, so each a_i must "
                                    "be a multiple of the (uniform) column mass b; use k >= 2 or adjust a")
    return a, b


def column_distributions(alpha: Tensor, cost_t: Tensor, b: Tensor, k: int, gamma: float) -> Tensor:
    """P^T (..., m, n): row j = project_sparse_simplex((alpha - c_j) / (gamma b_j), k).

    Works in the transposed layout cost_t = cost^T (..., m, n) so that each column's distribution is
    contiguous (reductions over strided views are much slower on CPU)."""
    x = (alpha.unsqueeze(-2) - cost_t) / (gamma * b.unsqueeze(-1))  # (..., m, n)
    return project_sparse_simplex(x, k)


def _semi_dual_t(alpha: Tensor, cost_t: Tensor, a: Tensor, b: Tensor, k: int, gamma: float
                 ) -> tuple[Tensor, Tensor, Tensor]:
    pt = column_distributions(alpha, cost_t, b, k, gamma)  # (..., m, n)
    x = alpha.unsqueeze(-2) - cost_t
    max_k = (pt * x).sum(-1) - 0.5 * gamma * b * (pt * pt).sum(-1)  # (..., m)
    value = (alpha * a).sum(-1) - (b * max_k).sum(-1)
    grad = a - (pt * b.unsqueeze(-1)).sum(-2)  # (..., n)
    return value, grad, pt


def semi_dual(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-dual value (...,), its gradient (..., n) and the column distributions P (..., n, m)."""
    value, grad, pt = _semi_dual_t(alpha, cost.transpose(-1, -2).contiguous(), a, b, k, gamma)
    return value, grad, pt.transpose(-1, -2)


def _newton_solve(support_t: Tensor, rhs: Tensor, damping: float | Tensor) -> Tensor:
    """Solve (diag(D) - U U^T + damping I) x = rhs for the support pattern support_t (..., m, n).

    See the module docstring; rows covered by no column get curvature 1 (a gradient step there)."""
    st = support_t.to(rhs.dtype)  # (..., m, n)
    m, n = st.shape[-2:]
    d = st.sum(-2)  # (..., n) columns covering each row
    damping = torch.as_tensor(damping, dtype=rhs.dtype, device=rhs.device)
    d = d + (d == 0).to(d.dtype) + (damping.unsqueeze(-1) if damping.ndim else damping)
    u = (st / st.sum(-1, keepdim=True).clamp(min=1).sqrt()).transpose(-1, -2)  # (..., n, m)
    if n <= m:
        mat = torch.diag_embed(d) - u @ u.transpose(-1, -2)  # (..., n, n)
        return torch.linalg.solve(mat, rhs.unsqueeze(-1)).squeeze(-1)
    y = rhs / d  # Woodbury: (D - U U^T)^-1 = D^-1 + D^-1 U (I - U^T D^-1 U)^-1 U^T D^-1
    eye = torch.eye(m, dtype=rhs.dtype, device=rhs.device)
    small = eye - u.transpose(-1, -2) @ (u / d.unsqueeze(-1))  # (..., m, m)
    z = torch.linalg.solve(small, (u.transpose(-1, -2) @ y.unsqueeze(-1)))  # (..., m, 1)
    return y + (u @ z).squeeze(-1) / d


def _solve_newton(cost_t, a, b, k, gamma, max_iter, tol, damping):
    """Levenberg-Marquardt-damped semismooth Newton ascent; only the problems still moving are evaluated.

    Damping lam (per problem) starts at `damping`; a step that needed backtracking to length t sets
    lam <- lam / t (the model was too optimistic), a full step sets lam <- lam / 4 (down to `damping`).

    A problem stops when ||grad||_inf <= tol * max(1, max a) (converged) or when neither the Newton
    direction nor, after it failed, the diagonally scaled gradient improves its objective (a kink of the
    piecewise-quadratic semi-dual, where Newton's model is wrong, or rounding)."""
    batch, (m, n) = a.shape[:-1], cost_t.shape[-2:]
    ct, a, b = cost_t.reshape(-1, m, n), a.reshape(-1, n), b.reshape(-1, m)
    alpha = torch.zeros_like(a)
    value, grad, pt = _semi_dual_t(alpha, ct, a, b, k, gamma)
    active = torch.ones_like(value, dtype=torch.bool)
    use_grad = torch.zeros_like(active)  # Newton failed last time: try a scaled gradient step
    lam = torch.full_like(value, damping * LM_START)
    scale = a.abs().amax(-1).clamp(min=1)
    it = 0
    for it in range(1, max_iter + 1):
        active &= grad.abs().amax(-1) > tol * scale
        idx = active.nonzero().squeeze(-1)
        if idx.numel() == 0:
            it -= 1
            break
        c_i, a_i, b_i, al_i, v_i = ct[idx], a[idx], b[idx], alpha[idx], value[idx]
        support = pt[idx] > 0
        step = gamma * _newton_solve(support, grad[idx], lam[idx])  # ascent direction (p, n)
        cover = support.sum(-2).clamp(min=1).to(step.dtype)  # diagonal of the curvature
        step = torch.where(use_grad[idx].unsqueeze(-1), gamma * grad[idx] / cover, step)
        slope = (grad[idx] * step).sum(-1)  # > 0
        t = torch.ones_like(v_i)
        acc = torch.zeros_like(v_i, dtype=torch.bool)
        for _ in range(20):  # Armijo backtracking on the problems still searching (t down to 2^-19)
            sub = (~acc).nonzero().squeeze(-1)
            cand = al_i[sub] + t[sub].unsqueeze(-1) * step[sub]
            v, g, pp = _semi_dual_t(cand, c_i[sub], a_i[sub], b_i[sub], k, gamma)
            ok = v >= v_i[sub] + 1e-4 * t[sub] * slope[sub] - 1e-14 * v_i[sub].abs()
            dst = idx[sub[ok]]
            alpha[dst], value[dst], grad[dst], pt[dst] = cand[ok], v[ok], g[ok], pp[ok]
            acc[sub[ok]] = True
            if bool(acc.all()):
                break
            t[sub[~ok]] *= 0.5
        lam[idx] = torch.where(t < 1, lam[idx] / t, lam[idx] / 4).clamp(min=damping, max=1e12)
        moved = acc & (value[idx] - v_i > STALL_RTOL * v_i.abs())
        active[idx[~moved & use_grad[idx]]] = False  # both directions failed: stalled
        use_grad[idx] = ~moved
    return alpha.reshape(*batch, n), it


def _solve_adam(cost, a, b, k, gamma, max_iter, lr):
    """Fixed-budget Adam ascent (as vmoe); the step is lr * gamma * mean(b) so it is scale-free."""
    lr = lr * gamma * b.mean(-1, keepdim=True)
    alpha = torch.zeros_like(a)
    m1 = torch.zeros_like(a)
    m2 = torch.zeros_like(a)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for it in range(1, max_iter + 1):
        _, grad, _ = _semi_dual_t(alpha, cost, a, b, k, gamma)
        m1 = b1 * m1 + (1 - b1) * grad
        m2 = b2 * m2 + (1 - b2) * grad * grad
        alpha = alpha + lr * (m1 / (1 - b1 ** it)) / ((m2 / (1 - b2 ** it)).sqrt() + eps)  # ascent
    return alpha, max_iter


def solve_sparse_ot(cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float = 1.0, method: str = "newton",
                    max_iter: int | None = None, tol: float | None = None, lr: float = 1.0,
                    damping: float | None = None) -> SparseOTResult:
    """Solve a batch of sparsity-constrained OT problems.

    cost: (..., n, m); a: (..., n) or (n,); b: (..., m) or (m,); at most k nonzeros per column.
    method: "newton" (to tolerance, default max_iter 50) or "adam" (fixed max_iter steps, default 20).
    Differentiable w.r.t. cost, a, b through the implicit function theorem (module docstring).
    """
    a, b = check_problem(cost, a, b, k, gamma)
    if tol is None:
        tol = 1e-9 if cost.dtype == torch.float64 else 1e-5
    if damping is None:  # Levenberg-Marquardt term relative to the curvature scale (counts ~ m k / n)
        damping = (1e-8 if cost.dtype == torch.float64 else 1e-4) * max(1.0, cost.shape[-1] * k / cost.shape[-2])
    cost_t = cost.transpose(-1, -2).contiguous()  # (..., m, n), see column_distributions
    with torch.no_grad():
        c0, a0, b0 = cost_t.detach(), a.detach(), b.detach()
        if method == "newton":
            alpha, n_iter = _solve_newton(c0, a0, b0, k, gamma, max_iter or 50, tol, damping)
        elif method == "adam":
            alpha, n_iter = _solve_adam(c0, a0, b0, k, gamma, max_iter or 20, lr)
        else:
            raise MarginalError(f"unknown method {method!r}; choose newton or adam")
        _, grad0, p0 = _semi_dual_t(alpha, c0, a0, b0, k, gamma)
        converged = grad0.abs().amax(-1) <= tol * a0.abs().amax(-1).clamp(min=1)
    if torch.is_grad_enabled() and (cost.requires_grad or a.requires_grad or b.requires_grad):
        _, grad, _ = _semi_dual_t(alpha, cost_t, a, b, k, gamma)  # carries the graph w.r.t. cost, a, b
        alpha = alpha + gamma * _newton_solve(p0 > 0, grad, damping)
    value, _, pt = _semi_dual_t(alpha, cost_t, a, b, k, gamma)
    plan = (pt * b.unsqueeze(-1)).transpose(-1, -2)
    primal = (plan * cost).sum((-2, -1)) + 0.5 * gamma * (plan * plan).sum((-2, -1))
    row_error = (plan.sum(-1) - a).abs().amax(-1).detach()
    return SparseOTResult(plan, alpha, value, primal, row_error, n_iter, converged)
