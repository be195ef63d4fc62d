"""Sparsity-constrained optimal transport (Liu, Puigcerver & Blondel 2023), batched, in torch.

Problem, for a cost C (n rows, m columns), row marginals a (n), column marginals b (m), sum a = sum b::

    min_T  <T, C> + (gamma/2) ||T||^2   s.t.  T >= 0,  T 1 = a,  T^T 1 = b,  ||T[:, j]||_0 <= k

Semi-dual (concave in alpha, maximised here)::

    D(alpha) = <alpha, a> - sum_j b_j * max_k(alpha - c_j; b_j)
    max_k(x; b) = max_{p in simplex, ||p||_0 <= k} <p, x> - (gamma b / 2) ||p||^2
    p*_j = project_sparse_simplex((alpha - c_j) / (gamma b_j), k)          (workbench.simplex)
    grad D = a - sum_j b_j p*_j ;   plan T[:, j] = b_j p*_j

Column sums (= b) and nnz <= k per column hold at any alpha; row sums equal a at the optimum when the
problem is feasible and D is smooth there. With k >= n this is quadratically regularised OT.

Everything works in the cost's own layout (..., n, m), reducing over the rows (dim -2), which is
contiguous across columns. One evaluation of D, its gradient and (optionally) P is `_evaluate`; for
large problems it runs through torch.compile, which fuses its dozen elementwise passes into one
(`compile="auto"`; it falls back to eager with a warning where compilation is unavailable). The ascent
loops live in routing/ot_solvers.py: "bfgs" (default), "newton" (semismooth, to a zero gradient where
one exists) and "adam" (vmoe's fixed budget).

Gradients w.r.t. cost, a and b use the implicit function theorem at the solution: with alpha* fixed
(no grad) we take one Newton step whose right-hand side carries the graph,
``alpha~ = alpha* + gamma M^{-1} grad D(alpha*; C)``, so d alpha~/dC = -H^{-1} d(grad D)/dC exactly.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor

from workbench.errors import WorkbenchError
from workbench.simplex import project_sparse_simplex, sparse_simplex_parts

COMPILE_MIN_NUMEL = 1 << 12  # "auto" compiles the evaluation for cost tensors at least this large
METHODS = ("bfgs", "newton", "adam")
BFGS_MAX_ROWS = 64  # dense BFGS keeps an n x n matrix per problem; above this "bfgs" runs Newton (m x m Woodbury)


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


def _evaluate_parts(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float | Tensor,
                    with_plan: bool, exact: bool = False):
    """D (...,), grad D (..., n), P (..., n, m) or None, and a tie flag (any column ambiguous on the fast path).

    exact=False: branch-free masked-maxima projection (compilable); exact=True: project_sparse_simplex,
    which resolves ties with torch.topk (the flag is then False)."""
    gb = gamma * b.unsqueeze(-2)  # (..., 1, m)
    z = (alpha.unsqueeze(-1) - cost) / gb  # (..., n, m)
    if exact:
        p, ties = project_sparse_simplex(z, k, dim=-2), torch.zeros((), dtype=torch.bool, device=z.device)
    else:
        p, ties = sparse_simplex_parts(z, k, dim=-2)  # (..., n, m), (..., m)
    max_k = gb.squeeze(-2) * ((p * z).sum(-2) - 0.5 * (p * p).sum(-2))  # (..., m)
    value = (alpha * a).sum(-1) - (b * max_k).sum(-1)
    grad = a - (p * b.unsqueeze(-2)).sum(-1)
    return value, grad, (p if with_plan else None), ties.any()


def grad_converged(grad: Tensor, a: Tensor, tol: float) -> Tensor:
    """(...,) bool: the semi-dual gradient is zero to tolerance, ||grad||_inf <= tol * max(1, max |a|)."""
    return grad.abs().amax(-1) <= tol * a.abs().amax(-1).clamp(min=1)


class Compiled:
    """fn through torch.compile, or fn itself once compilation has failed anywhere (no C++ compiler,
    unsupported backend): results stay correct, only slower.

    The leading (batch) dim of every tensor argument is marked dynamic, so one build serves every batch
    size (BFGS shrinks its batch as problems finish); the problem dims stay static, which keeps the
    reductions over the n rows specialised (about 1.7x faster on one 16 x 2048 problem than fully
    dynamic code)."""

    failed = False  # shared by every instance: one warning, then eager everywhere

    def __init__(self, fn):
        self.fn, self.compiled = fn, None

    def __call__(self, *args):
        if not Compiled.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn)
                for x in args:
                    if isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] > 1:
                        torch._dynamo.mark_dynamic(x, 0)
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                Compiled.failed = True
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); the sparse-OT solver runs in "
                              "eager mode (pass compile=False to skip compiling)", stacklevel=2)
        return self.fn(*args)


_evaluate_compiled = Compiled(_evaluate_parts)


def _evaluate(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float | Tensor,
              with_plan: bool = True, compiled: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Semi-dual value (...,), gradient (..., n) and column distributions P (..., n, m) (None unless with_plan).

    The fast path takes the top-k values by masked maxima; if any column has tied entries the
    evaluation is redone exactly (torch.topk)."""
    fn = _evaluate_compiled if compiled else _evaluate_parts
    value, grad, p, ties = fn(alpha, cost, a, b, k, gamma, with_plan)
    if bool(ties):
        return semi_dual(alpha, cost, a, b, k, gamma)
    return value, grad, p


def semi_dual(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-dual value (...,), its gradient (..., n) and the column distributions P (..., n, m); exact with ties."""
    return _evaluate_parts(alpha, cost, a, b, k, gamma, True, exact=True)[:3]


def newton_solve(support: Tensor, rhs: Tensor, damping: float | Tensor) -> Tensor:
    """Solve (diag(D) - U U^T + damping I) x = rhs for the support pattern `support` (..., n, m).

    On a fixed support the negative Hessian of D is (1/gamma) (diag(D) - U U^T), D = columns covering each
    row, U[:, j] = s_j / sqrt(|s_j|). Solved as an n x n system when n <= m, else through Woodbury with an
    m x m one, so both router orientations cost a small solve; uncovered rows get curvature 1."""
    s = support.to(rhs.dtype)  # (..., n, m)
    n, m = s.shape[-2:]
    d = s.sum(-1)  # (..., n)
    damping = torch.as_tensor(damping, dtype=rhs.dtype, device=rhs.device)
    d = d + (d == 0).to(d.dtype) + (damping.unsqueeze(-1) if damping.ndim else damping)
    u = s / s.sum(-2, keepdim=True).clamp(min=1).sqrt()  # (..., n, m)
    if n <= m:
        mat = torch.diag_embed(d) - u @ u.transpose(-1, -2)  # (..., n, n)
        return torch.linalg.solve(mat, rhs.unsqueeze(-1)).squeeze(-1)
    y = rhs / d  # Woodbury: (D - U U^T)^-1 = D^-1 + D^-1 U (I - U^T D^-1 U)^-1 U^T D^-1
    eye = torch.eye(m, dtype=rhs.dtype, device=rhs.device)
    small = eye - u.transpose(-1, -2) @ (u / d.unsqueeze(-1))  # (..., m, m)
    zz = torch.linalg.solve(small, (u.transpose(-1, -2) @ y.unsqueeze(-1)))  # (..., m, 1)
    return y + (u @ zz).squeeze(-1) / d


def _use_compile(compile: bool | str, cost: Tensor) -> bool:
    if compile == "auto":
        return cost.numel() >= COMPILE_MIN_NUMEL
    if not isinstance(compile, bool):
        raise MarginalError(f"compile must be True, False or 'auto', got {compile!r}")
    return compile


def solve_sparse_ot(cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float = 1.0, method: str = "bfgs",
                    max_iter: int | None = None, tol: float | None = None, ftol: float | None = None,
                    lr: float = 1.0, damping: float | None = None, compile: bool | str = "auto") -> SparseOTResult:
    """Solve a batch of sparsity-constrained OT problems.

    cost: (..., n, m); a: (..., n) or (n,); b: (..., m) or (m,); at most k nonzeros per column.
    method: "bfgs" (default; stops at a zero gradient, or when an iteration gains less than ftol
    relative, as L-BFGS-B does; problems with more than BFGS_MAX_ROWS rows, e.g. a router's experts
    orientation, run "newton" instead), "newton" (semismooth, to tolerance) or "adam" (fixed max_iter steps).
    compile: "auto" (torch.compile the evaluation for large costs), True or False.
    Differentiable w.r.t. cost, a, b through the implicit function theorem (module docstring).
    """
    from routing import ot_solvers

    if method not in METHODS:
        raise MarginalError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    a, b = check_problem(cost, a, b, k, gamma)
    f64 = cost.dtype == torch.float64
    tol = tol if tol is not None else (1e-9 if f64 else 1e-5)
    ftol = ftol if ftol is not None else (1e-10 if f64 else 1e-6)
    if damping is None:  # Levenberg-Marquardt term relative to the curvature scale (counts ~ m k / n)
        damping = (1e-8 if f64 else 1e-4) * max(1.0, cost.shape[-1] * k / cost.shape[-2])
    use_compile = _use_compile(compile, cost)
    batch, (n, m) = cost.shape[:-2], cost.shape[-2:]
    with torch.no_grad():
        c0, a0, b0 = cost.detach().reshape(-1, n, m), a.detach().reshape(-1, n), b.detach().reshape(-1, m)

        gamma_t = torch.tensor(gamma, dtype=cost.dtype, device=cost.device)  # a tensor: no recompile per gamma

        def evaluate(alpha, with_plan=False):
            return _evaluate(alpha, c0, a0, b0, k, gamma_t, with_plan, use_compile)

        if method == "bfgs" and n > BFGS_MAX_ROWS:
            method = "newton"
        if method == "bfgs":
            alpha, n_iter = ot_solvers.bfgs(evaluate, c0, a0, b0, k, gamma_t, max_iter or 200, tol, ftol, use_compile)
            alpha, value, grad, p = ot_solvers.polish(evaluate, alpha, a0, gamma, tol, damping)
        else:
            if method == "newton":
                alpha, n_iter = ot_solvers.newton(evaluate, a0, gamma, max_iter or 50, tol, damping)
            else:
                alpha, n_iter = ot_solvers.adam(evaluate, a0, b0, gamma, max_iter or 20, lr)
            value, grad, p = evaluate(alpha, with_plan=True)
        alpha, value, p = alpha.reshape(*batch, n), value.reshape(batch), p.reshape(*batch, n, m)
        converged = grad_converged(grad, a0, tol).reshape(batch)
    if torch.is_grad_enabled() and (cost.requires_grad or a.requires_grad or b.requires_grad):
        _, grad, _ = semi_dual(alpha, cost, a, b, k, gamma)  # carries the graph w.r.t. cost, a, b
        alpha = alpha + gamma * newton_solve(p > 0, grad, damping)
        value, _, p = semi_dual(alpha, cost, a, b, k, gamma)
    plan = p * b.unsqueeze(-2)
    primal = (plan * cost).sum((-2, -1)) + 0.5 * gamma * (plan * plan).sum((-2, -1))
    row_error = (plan.sum(-1) - a).abs().amax(-1).detach()
    return SparseOTResult(plan, alpha, value, primal, row_error, n_iter, converged)
