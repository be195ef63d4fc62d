"""Ascent loops for the sparse-OT semi-dual (routing/ot_duals.py), batched over problems.

Each returns the potentials alpha (B, n) and an iteration count; `evaluate(alpha, with_plan)` gives
(D (B,), grad D (B, n), P (B, n, m) or None). Finished problems stop moving; bfgs also drops them from
the batch once they are half of it (the step is compiled for any batch size), newton and adam keep
evaluating the whole batch.

- bfgs: dense BFGS on the n potentials (n small: the experts of a tokens-choose-experts router; the
  caller uses newton above sparse_ot.BFGS_MAX_ROWS rows), Armijo backtracking with quadratic
  interpolation, one branch-free step (`_bfgs_step`) that torch.compile fuses with the evaluation.
  A router's semi-dual is close to piecewise linear (few columns split between two rows), which
  starves Newton's curvature model; BFGS learns an averaged curvature instead, as POT's L-BFGS-B does.
  Stops a problem at a zero gradient, when an iteration gains less than ftol relative to |D|
  (L-BFGS-B's `factr` test), or when the line search fails. `polish` then takes one Newton step.
- newton: Levenberg-Marquardt-damped semismooth Newton with Armijo backtracking; reaches a zero
  gradient to `tol` where the semi-dual is smooth at its maximum.
- adam: vmoe's fixed-budget ascent (its step is lr * gamma * mean(b), scale-free).
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.ot_duals import Compiled, evaluate_parts, grad_converged, newton_solve

ARMIJO = 1e-4
LINE_SEARCH_STEPS = 30
FIRST_STEP = 0.01  # the first BFGS step moves the largest potential by this fraction of the cost's span
LM_START = 1e6  # Newton: initial Levenberg-Marquardt damping, in units of `damping`
STALL_RTOL = 1e-12  # Newton: a problem improving less than this (relative) in an iteration has stalled
COMPACT_MIN = 4  # bfgs: once at most half the problems still run, carry on with those alone (down to this many)
POLISH_SLACK = 1e-14  # polish: relative drop of D a Newton step may show by rounding alone (kept if grad shrinks)
STEPS_PER_CALL = 4  # bfgs: evaluations per compiled call (the call's fixed cost is ~2x one evaluation of 16 x 2048)


def _accept(ok: Tensor, new: tuple[Tensor, ...], old: tuple[Tensor, ...]) -> tuple[Tensor, ...]:
    """Per problem (ok (B,)), the new tensors where ok else the old ones; any trailing shape."""
    return tuple(torch.where(ok.view(-1, *([1] * (x.ndim - 1))), x, y) for x, y in zip(new, old))


def _bfgs_step(alpha, value, grad, h, first, direction, slope, t, tries, iters, done,
               cost, a, b, k: int, gamma: Tensor, tol: float, ftol: float, max_iter: int, exact: bool):
    """One evaluation of the batched BFGS ascent: every problem tests its own trial point alpha + t d.

    Accepted (Armijo): BFGS update of H (skipped when the curvature pair is unusable), new direction
    H grad, t = 1. Rejected: t <- the maximiser of the quadratic through D(0), D'(0) and D(t), clamped to
    [0.1 t, 0.5 t]. Pure and branch-free, so torch.compile fuses it with the evaluation; returns the new
    state and a tie flag (the fast top-k path was ambiguous: redo the step with exact=True)."""
    n = alpha.shape[-1]
    eye = torch.eye(n, dtype=alpha.dtype, device=alpha.device)
    cand = alpha + t.unsqueeze(-1) * direction
    v, g, _, ties = evaluate_parts(cand, cost, a, b, k, gamma, False, exact)
    ok = ~done & (v >= value + ARMIJO * t * slope)
    s, y = cand - alpha, grad - g  # y: change of the gradient of -D
    sy = (s * y).sum(-1)
    update = ok & (sy > 1e-10 * s.norm(dim=-1) * y.norm(dim=-1))
    h = torch.where((update & first).view(-1, 1, 1), eye * (sy / (y * y).sum(-1).clamp(min=1e-300)).view(-1, 1, 1), h)
    rho = (1 / sy.clamp(min=1e-300)).view(-1, 1, 1)
    vmat = eye - rho * s.unsqueeze(-1) * y.unsqueeze(-2)  # (B, n, n)
    h_new = vmat @ h @ vmat.transpose(-1, -2) + rho * s.unsqueeze(-1) * s.unsqueeze(-2)
    h = torch.where(update.view(-1, 1, 1), h_new, h)
    first = first & ~ok
    small_gain = v - value <= ftol * torch.maximum(v.abs(), value.abs())
    curv = (v - value - slope * t) / (t * t)  # < 0 where Armijo failed on a concave function
    t_back = torch.minimum(torch.maximum(-slope / (2 * curv.clamp(max=-1e-300)), 0.1 * t), 0.5 * t)
    alpha, value, grad = _accept(ok, (cand, v, g), (alpha, value, grad))
    iters = iters + ok.long()
    new_dir = (h @ grad.unsqueeze(-1)).squeeze(-1)
    new_slope = (grad * new_dir).sum(-1)
    done = done | (ok & (small_gain | grad_converged(grad, a, tol) | ~(new_slope > 0) | (iters >= max_iter)))
    direction = torch.where(ok.unsqueeze(-1), new_dir, direction)
    slope = torch.where(ok, new_slope, slope)
    tries = torch.where(ok, 0, tries + 1)
    done = done | (tries >= LINE_SEARCH_STEPS)  # no ascent along this direction: stalled (a kink, or rounding)
    t = torch.where(ok, torch.ones_like(t), t_back)
    return (alpha, value, grad, h, first, direction, slope, t, tries, iters, done), ties


def _bfgs_steps(alpha, value, grad, h, first, direction, slope, t, tries, iters, done,
                cost, a, b, k: int, gamma: Tensor, tol: float, ftol: float, max_iter: int, exact: bool):
    """STEPS_PER_CALL evaluations of _bfgs_step in a row (one compiled call: the per-call cost of a compiled
    function is paid once for all of them); the tie flag covers every one. Problems that finish part-way
    are frozen by their `done` flag, so the result equals STEPS_PER_CALL separate steps."""
    state = (alpha, value, grad, h, first, direction, slope, t, tries, iters, done)
    any_ties = torch.zeros((), dtype=torch.bool, device=alpha.device)
    for _ in range(STEPS_PER_CALL):
        state, ties = _bfgs_step(*state, cost, a, b, k, gamma, tol, ftol, max_iter, exact)
        any_ties = any_ties | ties
    return state, any_ties


_compiled_step = Compiled(_bfgs_steps, columns={11: -1, 13: -1})  # cost (B, n, m), b (B, m)


def bfgs(evaluate, cost: Tensor, a: Tensor, b: Tensor, k: int, gamma: Tensor, max_iter: int, tol: float,
         ftol: float, compiled: bool = False) -> tuple[Tensor, int]:
    """Batched dense BFGS ascent on D from alpha = 0; H (B, n, n) approximates the inverse of -Hessian.

    Each problem runs its own line search and every evaluation serves all problems at their own trial
    points, so a problem that backtracks does not hold the others back. The first step moves the largest
    potential by FIRST_STEP of the cost's span; H takes its scale from that step (as L-BFGS does).
    Returns alpha and the most iterations any problem took."""
    step, per_call = (_compiled_step, STEPS_PER_CALL) if compiled else (_bfgs_step, 1)
    bsz, n = a.shape
    a, b = a.contiguous(), b.contiguous()  # (B, n), (B, m) or one shared row: same strides after compaction
    alpha = torch.zeros_like(a)
    value, grad, _ = evaluate(alpha)
    span = (cost.amax((-2, -1)) - cost.amin((-2, -1))).clamp(min=torch.finfo(a.dtype).tiny)  # (B,)
    direction = grad * (FIRST_STEP * span / grad.abs().amax(-1).clamp(min=1e-300)).unsqueeze(-1)
    slope = (grad * direction).sum(-1)
    done = grad_converged(grad, a, tol) | ~(slope > 0)
    zeros = torch.zeros_like(value, dtype=torch.int64)
    state = (alpha, value, grad, torch.eye(n, dtype=a.dtype, device=a.device).expand(bsz, n, n).clone(),
             torch.ones_like(done), direction, slope, torch.ones_like(value), zeros, zeros.clone(), done)
    out_alpha, out_iters = alpha.clone(), zeros.clone()
    idx = torch.arange(bsz, device=a.device)  # the problems still in `state`, as rows of the full batch
    for _ in range(-(-max_iter * 4 // per_call)):
        done = state[-1]
        running = int((~done).sum())
        if running == 0:
            break
        if running <= len(idx) // 2 and len(idx) > COMPACT_MIN:  # drop the finished problems
            out_alpha[idx], out_iters[idx] = state[0], state[9]
            keep = (~done).nonzero().squeeze(1)
            state = tuple(x[keep] for x in state)
            idx, cost = idx[keep], cost[keep]
            a, b = (x[keep] if x.shape[0] > 1 else x for x in (a, b))
        new, ties = step(*state, cost, a, b, k, gamma, tol, ftol, max_iter, False)
        if bool(ties):  # some evaluation was ambiguous: redo this call's steps exactly
            new = state
            for _ in range(per_call):
                new, _ = _bfgs_step(*new, cost, a, b, k, gamma, tol, ftol, max_iter, True)
        state = new
    out_alpha[idx], out_iters[idx] = state[0], state[9]
    return out_alpha, int(out_iters.max())


def polish(evaluate, alpha: Tensor, a: Tensor, gamma: float, tol: float, damping: float, steps: int = 1
           ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Full Newton steps from alpha (one by default), each kept only where it raises D: once the ascent
    has found the right piece of the piecewise-quadratic semi-dual, one such step lands on its maximum
    exactly (row errors ~1e-11 instead of BFGS's ~1e-5). Returns alpha and D, grad D, P there."""
    value, grad, p = evaluate(alpha, with_plan=True)
    for _ in range(steps):
        todo = ~grad_converged(grad, a, tol)
        if not bool(todo.any()):
            break
        cand = alpha + gamma * newton_solve(p > 0, grad, damping)
        v, g, pp = evaluate(cand, with_plan=True)
        # kept where D does not drop, or drops by rounding only while the gradient shrinks: near the optimum
        # the gain is ~|grad|^2, below the rounding of D, and its sign is the arithmetic's (ot_native.c alike)
        shrinks = g.abs().amax(-1) < grad.abs().amax(-1)
        ok = todo & ((v >= value) | ((v >= value - POLISH_SLACK * value.abs()) & shrinks))
        if not bool(ok.any()):
            break
        alpha, value, grad, p = _accept(ok, (cand, v, g, pp), (alpha, value, grad, p))
    return alpha, value, grad, p


def newton(evaluate, a: Tensor, gamma: float, max_iter: int, tol: float, damping: float) -> tuple[Tensor, int]:
    """Levenberg-Marquardt-damped semismooth Newton ascent.

    Damping lam (per problem) starts at LM_START * damping; a step that needed backtracking to length t
    sets lam <- lam / t, a full step lam <- lam / 4 (down to `damping`). A problem stops at a zero
    gradient (||grad||_inf <= tol * max(1, max a)) or when neither the Newton direction nor, after it
    failed, the diagonally scaled gradient improves its objective (a kink, or rounding)."""
    alpha = torch.zeros_like(a)
    value, grad, p = evaluate(alpha, with_plan=True)
    done = torch.zeros_like(value, dtype=torch.bool)
    use_grad = torch.zeros_like(done)  # Newton failed last time: try a scaled gradient step
    lam = torch.full_like(value, damping * LM_START)
    it = 0
    for it in range(1, max_iter + 1):
        done |= grad_converged(grad, a, tol)
        if bool(done.all()):
            return alpha, it - 1
        support = p > 0
        step = gamma * newton_solve(support, grad, lam)
        cover = support.sum(-1).clamp(min=1).to(step.dtype)  # diagonal of the curvature
        step = torch.where(use_grad.unsqueeze(-1), gamma * grad / cover, step)
        slope = (grad * step).sum(-1)
        t = torch.ones_like(value)
        pending = ~done
        found = torch.zeros_like(done)
        old = value
        for _ in range(20):  # Armijo backtracking, t down to 2^-19
            cand = alpha + t.unsqueeze(-1) * step
            v, g, pp = evaluate(cand, with_plan=True)
            ok = pending & (v >= old + ARMIJO * t * slope - 1e-14 * old.abs())
            alpha, value, grad, p = _accept(ok, (cand, v, g, pp), (alpha, value, grad, p))
            found |= ok
            pending &= ~ok
            if not bool(pending.any()):
                break
            t = torch.where(pending, t * 0.5, t)
        lam = torch.where(t < 1, lam / t, lam / 4).clamp(min=damping, max=1e12)
        moved = found & (value - old > STALL_RTOL * old.abs())
        done |= ~moved & use_grad  # both directions failed: stalled
        use_grad = ~moved & ~done
    return alpha, it


def adam(evaluate, a: Tensor, b: Tensor, gamma: float, max_iter: int, lr: float) -> tuple[Tensor, int]:
    """Fixed-budget Adam ascent (as vmoe); the step is lr * gamma * mean(b) so it is scale-free."""
    lr = lr * gamma * b.mean(-1, keepdim=True)
    alpha = torch.zeros_like(a)
    m1 = torch.zeros_like(a)
    m2 = torch.zeros_like(a)
    b1, b2, eps = 0.9, 0.999, 1e-8
    for it in range(1, max_iter + 1):
        _, grad, _ = evaluate(alpha)
        m1 = b1 * m1 + (1 - b1) * grad
        m2 = b2 * m2 + (1 - b2) * grad * grad
        alpha = alpha + lr * (m1 / (1 - b1 ** it)) / ((m2 / (1 - b2 ** it)).sqrt() + eps)  # ascent
    return alpha, max_iter
