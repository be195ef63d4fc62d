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
contiguous across columns. One evaluation of D, its gradient and (optionally) P is `ot_duals.evaluate`; for
large problems it runs through torch.compile, which fuses its dozen elementwise passes into one
(`compile="auto"`; it falls back to eager with a warning where compilation is unavailable). The ascent
loops live in routing/ot_solvers.py (both build on routing/ot_duals.py): "bfgs" (default), "newton"
(semismooth, to a zero gradient where one exists) and "adam" (vmoe's fixed budget). On the CPU "bfgs" runs
as plain C by default (routing/ot_native.py: the same algorithm, one problem per pass, built with the system
compiler on first use), which removes the per-step framework cost that dominates at router sizes;
backend="torch" keeps torch.

Gradients w.r.t. cost, a and b use the implicit function theorem at the solution: with alpha* fixed
(no grad) we take one Newton step whose right-hand side carries the graph,
``alpha~ = alpha* + gamma M^{-1} grad D(alpha*; C)``, so d alpha~/dC = -H^{-1} d(grad D)/dC exactly. Where
the step stays on alpha*'s piece of the semi-dual (same support, D does not drop) it also polishes alpha*
to that piece's maximum; elsewhere (a maximum on a kink, or max_iter reached far from the maximum) only
its derivative is kept (``step - step.detach()``), so the returned plan is the solver's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from routing import ot_duals, ot_native, ot_solvers
from routing.ot_duals import dual_potentials, grad_converged, newton_solve, semi_dual
from workbench.errors import WorkbenchError

COMPILE_MIN_NUMEL = 1 << 12  # "auto" compiles the evaluation for cost tensors at least this large
AUTO_COMPILE_AFTER = 3  # ... once this many solves of the same problem family ran eagerly in this process
_solves: dict[tuple, int] = {}  # solves so far per problem family (rows, k, dtype, device)
METHODS = ("bfgs", "newton", "adam")
BACKENDS = ("auto", "native", "torch")
BFGS_MAX_ROWS = 64  # dense BFGS keeps an n x n matrix per problem; above this "bfgs" runs Newton (m x m Woodbury)


class MarginalError(WorkbenchError, ValueError):
    """Malformed or infeasible OT inputs (shapes, signs, sums, sparsity budget)."""


@dataclass
class SparseOTResult:
    plan: Tensor  # (..., n, m): <= k nonzeros per column, column sums = b
    alpha: Tensor  # (..., n) semi-dual potentials (the dual's row potentials)
    beta: Tensor  # (..., m) the dual's column potentials that go with alpha (ot_duals.dual_potentials)
    value: Tensor  # (...,) semi-dual objective D(alpha)
    primal: Tensor  # (...,) <T, C> + gamma/2 ||T||^2 of the returned plan
    row_error: Tensor  # (...,) max_i |(T 1)_i - a_i|
    n_iter: int
    converged: Tensor  # (...,) bool: ||grad||_inf <= tol * max(1, max a)


def check_shapes(cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float) -> tuple[Tensor, Tensor]:
    """The checks that need no pass over the data: shapes, broadcasting, k and gamma; returns a, b broadcast."""
    if cost.ndim < 2:
        raise MarginalError(f"cost must have shape (..., n, m), got {tuple(cost.shape)}; add the row/column dims")
    n, m = cost.shape[-2:]
    batch = cost.shape[:-2]
    if n == 0 or m == 0:
        raise MarginalError(f"empty problem: cost has shape {tuple(cost.shape)}; transport needs at least one row "
                            "and one column")
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
    return a, b


def check_values(cost: Tensor, a: Tensor, b: Tensor, k: int) -> None:
    """Finite inputs, a >= 0, b > 0, equal sums, a sparsity budget that reaches every row needing mass, and
    for k = 1 column masses that can fill each row whole (a, b as check_shapes returns them). The C solve
    (routing/ot_native.c) runs the same tests but k = 1's in its own pass and calls this to name a failure."""
    n, m = cost.shape[-2:]
    sa, sb = a.sum(-1), b.sum(-1)
    need = (a > 0).sum(-1)
    fine = (torch.isfinite(cost).all() & torch.isfinite(sa).all() & torch.isfinite(b).all() & (a >= 0).all()
            & (b > 0).all() & ((sa - sb).abs() <= 1e-6 * sb.abs().clamp(min=1)).all() & (need <= m * k).all())
    if not bool(fine):  # one test on the way in (a single solve is ~1 ms); find the first problem to name it
        _explain(cost, a, b, sa, sb, need, m, k)
    check_k1(cost, a, b, k)


def check_k1(cost: Tensor, a: Tensor, b: Tensor, k: int) -> None:
    """With k = 1 and uniform column masses every a_i must be a multiple of the column mass."""
    if k == 1 and cost.shape[-2] > 1:
        rtol = 1e-9 if cost.dtype == torch.float64 else 1e-5
        uniform = (b - b[..., :1]).abs().max() <= rtol * b.abs().max()
        if uniform:
            ratio = a / b[..., :1]
            if ((ratio - ratio.round()).abs() > 100 * rtol * ratio.clamp(min=1)).any():
                raise MarginalError("infeasible: with k = 1 every column goes to one row whole, so each a_i must "
                                    "be a multiple of the (uniform) column mass b; use k >= 2 or adjust a")


def _explain(cost: Tensor, a: Tensor, b: Tensor, sa: Tensor, sb: Tensor, need: Tensor, m: int, k: int) -> None:
    """Raise the MarginalError for the first thing check_values' combined test found wrong."""
    for name, t in (("cost", cost), ("a", a), ("b", b)):
        if not torch.isfinite(t).all():
            raise MarginalError(f"{name} has non-finite entries; clean the inputs (NaN/inf)")
    if (a < 0).any():
        raise MarginalError("row marginals a must be >= 0")
    if (b <= 0).any():
        raise MarginalError("column marginals b must be > 0; drop empty columns before solving")
    bad = (sa - sb).abs() > 1e-6 * sb.abs().clamp(min=1)
    if bad.any():
        i = int(bad.reshape(-1).nonzero()[0])
        raise MarginalError(f"marginals are unbalanced: sum(a) = {sa.reshape(-1)[i].item():.6g} but sum(b) = "
                            f"{sb.reshape(-1)[i].item():.6g}; rescale one of them so the sums match")
    if (need > m * k).any():
        raise MarginalError(f"infeasible: {int(need.max())} rows need mass but {m} columns with at most "
                            f"k = {k} nonzeros each reach at most {m * k} rows; raise k or merge rows")
    raise MarginalError("the inputs' sums overflow their dtype; rescale them")


def _use_compile(compile: bool | str, cost: Tensor, k: int) -> bool:
    """compile="auto": eager for small problems and for the first AUTO_COMPILE_AFTER solves of a problem
    family (rows, k, dtype, device) in this process, compiled from then on: a one-off solve never waits
    for a compilation, repeated solves (a router's every step, a benchmark) pay it once."""
    if compile == "auto":
        if cost.numel() < COMPILE_MIN_NUMEL:
            return False
        key = (cost.shape[-2], k, cost.dtype, cost.device.type)
        _solves[key] = _solves.get(key, 0) + 1
        return _solves[key] > AUTO_COMPILE_AFTER
    return compile


def solve_sparse_ot(cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float = 1.0, method: str = "bfgs",
                    max_iter: int | None = None, tol: float | None = None, ftol: float | None = None,
                    lr: float = 1.0, damping: float | None = None, compile: bool | str = "auto",
                    backend: str = "auto") -> SparseOTResult:
    """Solve a batch of sparsity-constrained OT problems.

    cost: (..., n, m); a: (..., n) or (n,); b: (..., m) or (m,); at most k nonzeros per column.
    method: "bfgs" (default; stops at a zero gradient, or when an iteration gains less than ftol
    relative, as L-BFGS-B does; problems with more than BFGS_MAX_ROWS rows, e.g. a router's experts
    orientation, run "newton" instead), "newton" (semismooth, to tolerance) or "adam" (fixed max_iter steps).
    compile: "auto" (torch.compile the evaluation for large costs), True or False.
    backend: where "bfgs" runs on the CPU: "auto" (the C solve of routing/ot_native.py where it applies and
    builds, else torch), "native" (the C solve or an error) or "torch" (routing/ot_solvers.py).
    Differentiable w.r.t. cost, a, b through the implicit function theorem (module docstring).
    """
    if method not in METHODS:
        raise MarginalError(f"unknown method {method!r}; choose one of {', '.join(METHODS)}")
    if backend not in BACKENDS:
        raise MarginalError(f"unknown backend {backend!r}; choose one of {', '.join(BACKENDS)}")
    if not (compile == "auto" or isinstance(compile, bool)):
        raise MarginalError(f"compile must be True, False or 'auto', got {compile!r}")
    a, b = check_shapes(cost, a, b, k, gamma)
    f64 = cost.dtype == torch.float64
    tol = tol if tol is not None else (1e-9 if f64 else 1e-5)
    ftol = ftol if ftol is not None else (1e-10 if f64 else 1e-6)
    if damping is None:  # Levenberg-Marquardt term relative to the curvature scale (counts ~ m k / n)
        damping = (1e-8 if f64 else 1e-4) * max(1.0, cost.shape[-1] * k / cost.shape[-2])
    batch, (n, m) = cost.shape[:-2], cost.shape[-2:]
    native = method == "bfgs" and backend != "torch" and ot_native.applies(cost, k, BFGS_MAX_ROWS)
    if backend == "native" and not (native and ot_native.available()):
        why = "it is unavailable (see the warning)" if native else \
            "it takes method 'bfgs' on CPU float32/float64 costs with at most 64 rows"
        raise MarginalError(f"backend 'native' cannot solve this problem: {why}; use backend='auto'")
    native = native and ot_native.available()
    if not native or k == 1:  # the C solve tests the values in its own pass (a router solve is ~1 ms), but not k = 1's
        check_values(cost, a, b, k)
    use_compile = not native and _use_compile(compile, cost, k)
    with torch.no_grad():
        # one memory layout (rows contiguous across columns) whatever view the caller passed: the row
        # reductions read memory in order, and a compiled build never sees a second stride pattern
        c0 = cost.detach().reshape(-1, n, m).contiguous()
        a0, b0 = a.detach().reshape(-1, n).contiguous(), b.detach().reshape(-1, m).contiguous()

        gamma_t = torch.tensor(gamma, dtype=cost.dtype, device=cost.device)  # a tensor: no recompile per gamma

        if method == "bfgs" and n > BFGS_MAX_ROWS:
            method = "newton"

        def evaluate(alpha, with_plan=False):  # BFGS asks for the plan once or twice per solve: eager then
            plan_eager = with_plan and method == "bfgs"
            return ot_duals.evaluate(alpha, c0, a0, b0, k, gamma_t, with_plan, use_compile and not plan_eager)
        if native:  # the C solve also gives the plan, primal, row error and beta
            try:
                out = ot_native.bfgs(c0, a0, b0, k, gamma, max_iter or 200, tol, ftol, damping)
            except ot_native.InvalidInput:
                check_values(cost, a, b, k)  # names the problem; passes only when the C sum of the cost overflowed
                raise MarginalError("the cost's entries are too large to sum in float64 (overflow); rescale the "
                                    "cost") from None
            alpha, value, grad, n_iter = out["alpha"], out["value"], out["grad"], out["n_iter"]
            p = None
        elif method == "bfgs":
            alpha, n_iter = ot_solvers.bfgs(evaluate, c0, a0, b0, k, gamma_t, max_iter or 200, tol, ftol, use_compile)
            alpha, value, grad, p = ot_solvers.polish(evaluate, alpha, a0, gamma, tol, damping)
        else:
            if method == "newton":
                alpha, n_iter = ot_solvers.newton(evaluate, a0, gamma, max_iter or 50, tol, damping)
            else:
                alpha, n_iter = ot_solvers.adam(evaluate, a0, b0, gamma, max_iter or 20, lr)
            value, grad, p = evaluate(alpha, with_plan=True)
        alpha, value = alpha.reshape(*batch, n), value.reshape(batch)
        converged = grad_converged(grad, a0, tol).reshape(batch)
    needs_grad = torch.is_grad_enabled() and (cost.requires_grad or a.requires_grad or b.requires_grad)
    if native and not needs_grad:
        return SparseOTResult(out["plan"].reshape(*batch, n, m), alpha, out["beta"].reshape(*batch, m), value,
                              out["primal"].reshape(batch), out["row_error"].reshape(batch), n_iter, converged)
    if p is None:  # (B, n, m) column distributions of the native plan, for the gradient path
        p = out["plan"] / b0.unsqueeze(-2)
    p = p.reshape(*batch, n, m)
    if needs_grad:
        _, grad, _ = semi_dual(alpha, cost, a, b, k, gamma)  # carries the graph w.r.t. cost, a, b
        step = gamma * newton_solve(p > 0, grad, damping)
        with torch.no_grad():
            v_new, _, p_new = semi_dual(alpha + step, cost, a, b, k, gamma)
            same_piece = ((p_new > 0) == (p > 0)).flatten(-2).all(-1) & (v_new >= value - 1e-12 * value.abs())
        off = (~same_piece).unsqueeze(-1).to(step.dtype)  # off the piece: keep the derivative only
        alpha = alpha + step - off * step.detach()
        value, _, p = semi_dual(alpha, cost, a, b, k, gamma)
    plan = p * b.unsqueeze(-2)
    primal = (plan * cost).sum((-2, -1)) + 0.5 * gamma * (plan * plan).sum((-2, -1))
    row_error = (plan.sum(-1) - a).abs().amax(-1).detach()
    beta = dual_potentials(alpha.detach(), p.detach(), cost.detach(), b.detach(), gamma)
    return SparseOTResult(plan, alpha, beta, value, primal, row_error, n_iter, converged)
