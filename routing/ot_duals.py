"""The dual and semi-dual of sparsity-constrained OT: one evaluation of each (value, gradient, plan), the
dual potentials of a semi-dual solution, the curvature solve on a fixed support, the convergence test,
and the compiled evaluation.

Shared by the solver front end (routing/sparse_ot.py) and the ascent loops (routing/ot_solvers.py);
it imports neither. For a cost C (..., n, m), marginals a (..., n), b (..., m), at most k nonzeros per
column and the regulariser (gamma/2)||T||^2 (Liu, Puigcerver & Blondel 2023):

dual (POT's ``smooth_ot_dual(..., reg_type="sparsity_constrained", max_nz=k)``)::

    D2(alpha, beta) = <alpha, a> + <beta, b> - sum_j delta(alpha + beta_j - c_j)
    delta(x) = (1 / 2 gamma) * sum of the k largest max(x_i, 0)^2       T[:, j] = top-k of max(x, 0) / gamma

semi-dual (beta maximised out in closed form: the maximiser is beta_j = -gamma b_j theta_j, theta_j the
threshold of the sparse simplex projection below, so max_beta D2(alpha, beta) = D(alpha))::

    D(alpha) = <alpha, a> - sum_j b_j max_k(alpha - c_j; b_j)
    p*_j = project_sparse_simplex((alpha - c_j) / (gamma b_j), k)        grad D = a - sum_j b_j p*_j

Everything works in the cost's own layout (..., n, m), reducing over the rows (dim -2).
"""

from __future__ import annotations

import sys
import warnings

import torch
from torch import Tensor

from workbench.simplex import project_sparse_simplex, sparse_simplex_parts


def evaluate_parts(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float | Tensor,
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

    The leading (batch) dim of every tensor argument and the column dim of the arguments named in
    `columns` ({argument index: dim}) are marked dynamic, so one build serves every batch size (BFGS
    shrinks its batch as problems finish) and every number of columns (a router's groups and its last,
    smaller batch); the row dim stays static, which keeps the reductions over the n rows specialised
    (fully dynamic code was ~1.7x slower on one 16 x 2048 problem). A new build (per number of rows,
    k, dtype, device and flags) prints one line to stderr first: compiling takes seconds to minutes
    (15-30 s on an idle 2-core CPU, far longer under load); torch's on-disk cache shortens it in later
    processes."""

    failed = False  # shared by every instance: one warning, then eager everywhere

    def __init__(self, fn, columns: dict[int, int] | None = None):
        self.fn, self.compiled, self.columns = fn, None, columns or {}
        self.builds: set[tuple] = set()

    def _new_build(self, args) -> bool:
        """Whether this call needs a build this instance has not made yet (rows, dtype, device, flags and
        single problem vs batch; batch size and columns are dynamic); announces it on stderr if so."""
        cost = next(x for x in args if isinstance(x, Tensor) and x.ndim == 3)  # (B, n, m)
        rows = cost.shape[-2]
        key = (rows, cost.dtype, cost.device.type, cost.shape[0] > 1) + tuple(
            x for x in args if isinstance(x, (int, bool, float)))
        if key in self.builds:
            return False
        self.builds.add(key)
        if not any(b[:3] == key[:3] and b[4:] == key[4:] for b in self.builds if b != key):  # once per family
            print(f"sparse-OT: compiling {self.fn.__name__} for problems with {rows} rows (once per process and "
                  "problem family; seconds to minutes, cached on disk by torch for later runs)",
                  file=sys.stderr, flush=True)
        return True

    def __call__(self, *args):
        if not Compiled.failed:
            try:
                if self.compiled is None:
                    self.compiled = torch.compile(self.fn)
                if self._new_build(args):  # dims marked dynamic before the build that traces them
                    for x in args:
                        if isinstance(x, Tensor) and x.ndim > 0 and x.shape[0] > 1:
                            torch._dynamo.mark_dynamic(x, 0)
                    for i, dim in self.columns.items():
                        x = args[i]
                        if isinstance(x, Tensor) and x.ndim > 1 and x.shape[dim] > 1:
                            torch._dynamo.mark_dynamic(x, x.ndim + dim if dim < 0 else dim)
                return self.compiled(*args)
            except Exception as e:  # noqa: BLE001 - any compiler failure means: run eagerly
                Compiled.failed = True
                warnings.warn(f"torch.compile failed ({type(e).__name__}: {e}); the sparse-OT solver runs in "
                              "eager mode (pass compile=False to skip compiling)", stacklevel=2)
        return self.fn(*args)


evaluate_compiled = Compiled(evaluate_parts, columns={1: -1, 3: -1})  # cost (B, n, m), b (B, m)


def evaluate(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float | Tensor,
              with_plan: bool = True, compiled: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
    """Semi-dual value (...,), gradient (..., n) and column distributions P (..., n, m) (None unless with_plan).

    The fast path takes the top-k values by masked maxima; if any column has tied entries the
    evaluation is redone exactly (torch.topk)."""
    fn = evaluate_compiled if compiled else evaluate_parts
    value, grad, p, ties = fn(alpha, cost, a, b, k, gamma, with_plan)
    if bool(ties):
        return semi_dual(alpha, cost, a, b, k, gamma)
    return value, grad, p


def semi_dual(alpha: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float
              ) -> tuple[Tensor, Tensor, Tensor]:
    """Semi-dual value (...,), its gradient (..., n) and the column distributions P (..., n, m); exact with ties."""
    return evaluate_parts(alpha, cost, a, b, k, gamma, True, exact=True)[:3]


def dual(alpha: Tensor, beta: Tensor, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: float
         ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Dual value (...,), its gradients w.r.t. alpha (..., n) and beta (..., m), and the plan (..., n, m).

    Per column only the k largest entries of x = alpha + beta_j - c_j count (exactly POT's
    SparsityConstrained.delta_Omega); the plan is max(x, 0) / gamma on them. Exact at ties (torch.topk)."""
    x = alpha.unsqueeze(-1) + beta.unsqueeze(-2) - cost  # (..., n, m)
    top = torch.zeros_like(x, dtype=torch.bool).scatter_(-2, x.topk(min(k, x.shape[-2]), dim=-2).indices, True)
    plan = torch.where(top, x.clamp(min=0), torch.zeros_like(x)) / gamma  # (..., n, m)
    value = (alpha * a).sum(-1) + (beta * b).sum(-1) - 0.5 * gamma * plan.pow(2).sum((-2, -1))
    return value, a - plan.sum(-1), b - plan.sum(-2), plan


def dual_potentials(alpha: Tensor, p: Tensor, cost: Tensor, b: Tensor, gamma: float) -> Tensor:
    """beta (..., m) maximising the dual for fixed alpha, from the semi-dual's column distributions p:
    beta_j = -gamma b_j theta_j with theta_j = z_ij - p_ij on any active row i (z = (alpha - c_j) / (gamma b_j)).
    Columns with no active entry cannot occur (each p_j sums to 1)."""
    gb = gamma * b.unsqueeze(-2)  # (..., 1, m)
    z = (alpha.unsqueeze(-1) - cost) / gb
    on = (p > 0).to(p.dtype)
    theta = ((z - p) * on).sum(-2) / on.sum(-2).clamp(min=1)  # (..., m), the same on every active row
    return -gb.squeeze(-2) * theta


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
