"""routing.sparse_ot: our batched sparsity-constrained OT solver against POT and its own invariants."""

import contextlib
import io

import pytest
import torch

from routing import ot_native
from routing.benchmarks import router_costs
from routing.ot_duals import semi_dual
from routing.sparse_ot import MarginalError, solve_sparse_ot

f64 = torch.float64
NATIVE = pytest.param("native", marks=pytest.mark.skipif(not ot_native.available(), reason="no C compiler"))


def _instance(n, m, seed, uniform=False):
    g = torch.Generator().manual_seed(seed)
    cost = torch.rand(n, m, generator=g, dtype=f64)
    a = torch.ones(n, dtype=f64) if uniform else torch.rand(n, generator=g, dtype=f64) + 0.5
    b = torch.ones(m, dtype=f64) if uniform else torch.rand(m, generator=g, dtype=f64) + 0.5
    return cost, a / a.sum(), b / b.sum()


def _pot(cost, a, b, k, gamma, reg_type="sparsity_constrained"):
    ot = pytest.importorskip("ot")
    kw = {"max_nz": k} if reg_type == "sparsity_constrained" else {}
    with contextlib.redirect_stdout(io.StringIO()):  # POT's sparse projection prints debug output
        plan, log = ot.smooth.smooth_ot_semi_dual(a.numpy(), b.numpy(), cost.numpy(), gamma, reg_type=reg_type,
                                                  log=True, **kw)
    return torch.as_tensor(plan), torch.as_tensor(log["alpha"])


@pytest.mark.parametrize("backend", ["torch", NATIVE])
@pytest.mark.parametrize("n,m,k,gamma,seed", [(4, 40, 2, 1.0, 0), (8, 64, 2, 0.1, 1), (6, 30, 3, 0.5, 2),
                                              (5, 50, 1, 0.05, 3)])
def test_matches_pot_objective_and_plan(n, m, k, gamma, seed, backend):
    cost, a, b = _instance(n, m, seed, uniform=(k == 1))
    res = solve_sparse_ot(cost, a, b, k, gamma, backend=backend)
    plan, alpha = _pot(cost, a, b, k, gamma)
    d_pot = semi_dual(alpha, cost, a, b, k, gamma)[0]
    assert bool(res.converged)
    assert float(res.value) >= float(d_pot) - 1e-12  # we maximise at least as well as L-BFGS-B
    assert abs(float(res.value - d_pot)) <= 1e-7 * abs(float(d_pot))
    primal_pot = (plan * cost).sum() + 0.5 * gamma * (plan * plan).sum()
    assert abs(float(res.primal - primal_pot)) <= 1e-4 * abs(float(primal_pot))
    assert float((res.plan - plan).abs().max()) <= 1e-2 * float(plan.max())


def test_quadratic_ot_limit_when_k_covers_all_rows():
    """k >= rows: the plan has the quadratic-OT form T = [alpha_i + beta_j - c_ij]_+ / gamma by construction,
    so exact marginals make it the optimum; POT's (less converged) L2 solution agrees to its accuracy."""
    cost, a, b = _instance(5, 12, 7)
    dense, alpha = _pot(cost, a, b, 5, 0.5, reg_type="l2")
    for k in (5, 8):
        res = solve_sparse_ot(cost, a, b, k, 0.5)
        assert res.row_error < 1e-8
        torch.testing.assert_close(res.plan.sum(0), b, atol=1e-14, rtol=0)
        assert float(res.value) >= float(semi_dual(alpha, cost, a, b, 5, 0.5)[0]) - 1e-12
        torch.testing.assert_close(res.plan, dense, atol=5e-3 * float(dense.max()), rtol=0)


def test_invariants_hold_batched_and_match_single_solves():
    g = torch.Generator().manual_seed(5)
    cost = torch.rand(3, 6, 20, generator=g, dtype=f64)
    a, b = torch.full((6,), 1 / 6, dtype=f64), torch.full((20,), 1 / 20, dtype=f64)
    for method in ("newton", "adam"):
        res = solve_sparse_ot(cost, a, b, 2, 1.0, method=method)
        assert res.plan.shape == (3, 6, 20)
        assert ((res.plan > 0).sum(-2) <= 2).all()  # nnz per column <= k, exactly
        torch.testing.assert_close(res.plan.sum(-2), b.expand(3, 20), atol=1e-14, rtol=0)  # column marginals
        assert (res.plan >= 0).all()
    res = solve_sparse_ot(cost, a, b, 2, 1.0)
    # row marginals are exact only where the semi-dual is smooth at its maximum (problems 0 and 2 here;
    # problem 1 ends on a kink where POT's L-BFGS-B also stops with a ~1e-3 row error)
    assert bool(res.converged[0]) and bool(res.converged[2])
    assert res.row_error[res.converged].max() < 1e-8
    for i in range(3):
        torch.testing.assert_close(solve_sparse_ot(cost[i], a, b, 2, 1.0).plan, res.plan[i], atol=1e-9, rtol=0)


@pytest.mark.parametrize("kwargs,match", [
    (dict(a=torch.tensor([0.5, 0.6]), b=torch.tensor([0.5, 0.5])), "unbalanced"),
    (dict(a=torch.tensor([1.2, -0.2]), b=torch.tensor([0.5, 0.5])), ">= 0"),
    (dict(a=torch.tensor([0.5, 0.5]), b=torch.tensor([1.0, 0.0])), "> 0"),
    (dict(a=torch.tensor([0.5, 0.5, 0.0]), b=torch.tensor([0.5, 0.5])), "shapes"),
    (dict(a=torch.tensor([0.5, float("nan")]), b=torch.tensor([0.5, 0.5])), "non-finite"),
    (dict(k=0), "k"),
    (dict(gamma=0.0), "gamma"),
])
@pytest.mark.parametrize("backend", ["torch", "auto"])  # auto: the C solve's own checks, explained in torch
def test_malformed_inputs_are_clear_errors(kwargs, match, backend):
    args = dict(cost=torch.rand(2, 2), a=torch.tensor([0.5, 0.5]), b=torch.tensor([0.5, 0.5]), k=1, gamma=1.0)
    args.update(kwargs)
    with pytest.raises(MarginalError, match=match):
        solve_sparse_ot(**args, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_non_finite_cost_and_infeasible_budget_in_a_batch_are_named(backend):
    cost = torch.rand(3, 2, 2, dtype=f64)
    cost[2, 1, 0] = float("inf")
    a, b = torch.tensor([0.5, 0.5], dtype=f64), torch.tensor([0.5, 0.5], dtype=f64)
    with pytest.raises(MarginalError, match="cost has non-finite"):
        solve_sparse_ot(cost, a, b, 1, backend=backend)
    with pytest.raises(MarginalError, match="raise k"):
        solve_sparse_ot(torch.rand(2, 5, 2, dtype=f64), torch.full((5,), 0.2, dtype=f64),
                        torch.full((2,), 0.5, dtype=f64), k=2, backend=backend)


@pytest.mark.parametrize("backend", ["torch", "auto"])
def test_empty_problems_are_a_clear_error(backend):
    for n, m in ((3, 0), (0, 4)):
        with pytest.raises(MarginalError, match="empty problem"):
            solve_sparse_ot(torch.rand(n, m), torch.ones(n) / max(n, 1), torch.ones(m) / max(m, 1), 2, backend=backend)


def test_infeasible_sparsity_budget_is_a_clear_error():
    with pytest.raises(MarginalError, match="raise k"):
        solve_sparse_ot(torch.rand(5, 2), torch.full((5,), 0.2), torch.full((2,), 0.5), k=2)  # 2 x 2 < 5 rows
    with pytest.raises(MarginalError, match="k = 1"):
        solve_sparse_ot(torch.rand(2, 3), torch.full((2,), 0.5), torch.full((3,), 1 / 3), k=1)  # 1.5 columns each


@pytest.mark.parametrize("k", [2, 3])
def test_gradcheck_plan_wrt_cost(k):
    cost, a, b = _instance(3, 7, 11)
    cost.requires_grad_(True)
    fn = lambda c: solve_sparse_ot(c, a, b, k, 1.0, tol=1e-13).plan  # noqa: E731
    assert torch.autograd.gradcheck(fn, (cost,), eps=1e-7, atol=1e-5)


def test_k1_small_gamma_approaches_exact_ot():
    ot = pytest.importorskip("ot")
    cost, a, b = _instance(4, 24, 13, uniform=True)
    res = solve_sparse_ot(cost, a, b, 1, 1e-4)
    emd = torch.as_tensor(ot.emd(a.numpy(), b.numpy(), cost.numpy()))
    assert abs(float((res.plan * cost).sum() - (emd * cost).sum())) < 1e-3


@pytest.mark.parametrize("backend", ["torch", NATIVE])
@pytest.mark.parametrize("row_mass,col_mass,rtol", [(1 / 8, 1 / 64, 1e-9), (8.0, 1.0, 5e-6)])
def test_bfgs_reaches_pot_objective_on_router_batches(row_mass, col_mass, rtol, backend):
    """The default BFGS solver ends at POT's objective on router-shaped problems, batched = one by one.

    Most of them end on a kink of the semi-dual, where no solver reaches a zero gradient: with marginals
    summing to 1 BFGS ends at or above POT's D; with vmoe's marginals (1 per token) the semi-dual is
    kinkier and both solvers stop a few 1e-6 (relative) apart, either side."""
    cost = router_costs(4, 8, 64, 21)
    a, b = torch.full((8,), row_mass, dtype=f64), torch.full((64,), col_mass, dtype=f64)
    res = solve_sparse_ot(cost, a, b, 2, 1.0, backend=backend)
    for i in range(4):
        _, alpha = _pot(cost[i], a, b, 2, 1.0)
        d_pot = float(semi_dual(alpha, cost[i], a, b, 2, 1.0)[0])
        assert float(res.value[i]) >= d_pot - rtol * abs(d_pot)
        torch.testing.assert_close(solve_sparse_ot(cost[i], a, b, 2, 1.0, backend=backend).value, res.value[i],
                                   atol=1e-9 * abs(d_pot), rtol=0)
    assert ((res.plan > 0).sum(-2) <= 2).all()
    torch.testing.assert_close(res.plan.sum(-2), b.expand(4, 64), atol=1e-12 * col_mass, rtol=0)


def test_bfgs_drops_finished_problems_without_changing_any_result(monkeypatch):
    """Once half the batch has finished, BFGS carries on with the rest alone (a smaller batch): every
    problem, with its own marginals, must end exactly where it ends when solved by itself."""
    from routing import ot_solvers

    cost = router_costs(12, 8, 64, 31)
    scale = torch.arange(1, 13, dtype=f64).unsqueeze(-1)  # (12, 1): per-problem masses
    a, b = scale * torch.full((12, 8), 1 / 8, dtype=f64), scale * torch.full((12, 64), 1 / 64, dtype=f64)
    sizes, step = [], ot_solvers._bfgs_step
    monkeypatch.setattr(ot_solvers, "_bfgs_step", lambda *s: sizes.append(len(s[0])) or step(*s))
    res = solve_sparse_ot(cost, a, b, 2, 1.0, compile=False, backend="torch")
    assert sizes[0] == 12 and min(sizes) < 6  # it did shrink the batch
    for i in range(12):
        alone = solve_sparse_ot(cost[i], a[i], b[i], 2, 1.0, compile=False, backend="torch")
        torch.testing.assert_close(alone.alpha, res.alpha[i], atol=1e-12 * float(scale[i]), rtol=0)
        torch.testing.assert_close(alone.plan, res.plan[i], atol=1e-12 * float(scale[i]), rtol=0)


def test_compiled_evaluation_matches_eager():
    """torch.compile fuses the evaluation (the default for large problems); it must not change the result."""
    cost = router_costs(3, 8, 96, 22)
    a, b = torch.full((8,), 1 / 8, dtype=f64), torch.full((96,), 1 / 96, dtype=f64)
    eager = solve_sparse_ot(cost, a, b, 2, 1.0, compile=False, backend="torch")
    fused = solve_sparse_ot(cost, a, b, 2, 1.0, compile=True, backend="torch")
    torch.testing.assert_close(fused.plan, eager.plan, atol=1e-12, rtol=0)
    torch.testing.assert_close(fused.value, eager.value, atol=1e-14, rtol=0)


@pytest.mark.parametrize("compile,backend", [(False, "torch"), (True, "torch"),
                                             pytest.param(False, "native", marks=NATIVE.marks)])
def test_tied_costs_keep_k_nonzeros(compile, backend):
    """A router with equal scores (e.g. zero-initialised weights) gives exactly tied costs: the fast top-k path
    is ambiguous there, and the solver must redo those evaluations exactly (the C solve breaks ties by row)."""
    cost = torch.zeros(2, 4, 32, dtype=f64)
    cost[1, :, :16] = -0.5  # ties within half of the columns of the second problem
    a, b = torch.full((4,), 0.25, dtype=f64), torch.full((32,), 1 / 32, dtype=f64)
    res = solve_sparse_ot(cost, a, b, 2, 0.5, compile=compile, backend=backend)
    assert ((res.plan > 0).sum(-2) <= 2).all()
    torch.testing.assert_close(res.plan.sum(-2), b.expand(2, 32), atol=1e-14, rtol=0)
    for i in range(2):  # identical columns put the optimum on a kink (row errors are then unavoidable): check D
        _, alpha = _pot(cost[i], a, b, 2, 0.5)
        assert float(res.value[i]) >= float(semi_dual(alpha, cost[i], a, b, 2, 0.5)[0]) - 1e-9


def test_unknown_method_and_compile_are_clear_errors():
    cost, a, b = _instance(3, 6, 0)
    with pytest.raises(MarginalError, match="bfgs, newton, adam"):
        solve_sparse_ot(cost, a, b, 2, method="lbfgs")
    with pytest.raises(MarginalError, match="compile"):
        solve_sparse_ot(cost, a, b, 2, compile="yes")


def test_many_rows_run_newton_and_keep_the_invariants():
    """Above BFGS_MAX_ROWS rows (the experts orientation: rows = tokens) "bfgs" runs Newton's m x m system."""
    from routing.sparse_ot import BFGS_MAX_ROWS

    cost, a, b = _instance(BFGS_MAX_ROWS + 16, 6, 31)
    res = solve_sparse_ot(cost, a, b, 20, 0.5)
    ref = solve_sparse_ot(cost, a, b, 20, 0.5, method="newton")
    torch.testing.assert_close(res.plan, ref.plan)
    assert ((res.plan > 0).sum(-2) <= 20).all()
    torch.testing.assert_close(res.plan.sum(-2), b, atol=1e-14, rtol=0)


def test_compile_failure_falls_back_to_eager_with_one_warning(monkeypatch):
    """Where torch.compile cannot work (no C++ compiler), the solver warns once and stays correct."""
    import routing.ot_duals as sd
    import routing.ot_solvers as solvers

    def broken_compile(fn, **kw):
        def run(*args):
            raise RuntimeError("no C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken_compile)
    monkeypatch.setattr(sd.Compiled, "failed", False)
    monkeypatch.setattr(sd, "evaluate_compiled", sd.Compiled(sd.evaluate_parts))
    monkeypatch.setattr(solvers, "_compiled_step", sd.Compiled(solvers._bfgs_step))
    cost = router_costs(2, 8, 64, 23)
    a, b = torch.full((8,), 1 / 8, dtype=f64), torch.full((64,), 1 / 64, dtype=f64)
    with pytest.warns(UserWarning, match="eager mode") as record:
        res = solve_sparse_ot(cost, a, b, 2, 1.0, compile=True, backend="torch")
    assert len([w for w in record if "eager mode" in str(w.message)]) == 1
    torch.testing.assert_close(res.plan, solve_sparse_ot(cost, a, b, 2, 1.0, compile=False, backend="torch").plan,
                               atol=0, rtol=0)


def test_differentiable_solve_returns_the_solvers_plan_even_off_the_optimum():
    """The implicit-gradient step carries the derivative only: with a cost that requires grad the plan is
    the same as without, also when the solver stopped early (a nonzero semi-dual gradient)."""
    cost = router_costs(3, 8, 32, 5)
    a, b = torch.full((8,), 4.0, dtype=f64), torch.ones(32, dtype=f64)
    ref = solve_sparse_ot(cost, a, b, 2, 1.0, max_iter=3)
    assert not ref.converged.all()
    res = solve_sparse_ot(cost.clone().requires_grad_(True), a, b, 2, 1.0, max_iter=3)
    torch.testing.assert_close(res.plan, ref.plan, atol=1e-12, rtol=0)
    res.plan.sum().backward()  # and a gradient exists


@pytest.mark.parametrize("n,m,k,gamma,seed", [(4, 40, 2, 1.0, 0), (8, 64, 2, 0.1, 1), (6, 30, 3, 0.5, 2),
                                              (16, 128, 2, 1.0, 4)])
def test_dual_formulation_matches_pot_smooth_ot_dual(n, m, k, gamma, seed):
    """The dual (top-k of max(x, 0)^2 / 2 gamma per column) equals POT's at any potentials; at our solution
    (alpha, beta = dual_potentials) it equals the semi-dual's value and plan, and reaches POT's
    smooth_ot_dual optimum (sparsity-constrained, max_nz = k)."""
    ot = pytest.importorskip("ot")
    from routing.ot_duals import dual

    cost, a, b = _instance(n, m, seed)
    g = torch.Generator().manual_seed(seed + 10)
    al, be = torch.randn(n, generator=g, dtype=f64) * 0.3, torch.randn(m, generator=g, dtype=f64) * 0.3
    regul = ot.smooth.SparsityConstrained(max_nz=k, gamma=gamma)
    v, ga, gb = ot.smooth.dual_obj_grad(al.numpy(), be.numpy(), a.numpy(), b.numpy(), cost.numpy(), regul)
    ours = dual(al, be, cost, a, b, k, gamma)
    torch.testing.assert_close(ours[0], torch.tensor(v, dtype=f64), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours[1], torch.as_tensor(ga), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(ours[2], torch.as_tensor(gb), atol=1e-12, rtol=1e-12)

    res = solve_sparse_ot(cost, a, b, k, gamma)
    value, _, _, plan = dual(res.alpha, res.beta, cost, a, b, k, gamma)
    torch.testing.assert_close(value, res.value, atol=1e-12, rtol=1e-10)
    torch.testing.assert_close(plan, res.plan, atol=1e-12, rtol=1e-9)
    with contextlib.redirect_stdout(io.StringIO()):
        # POT's L-BFGS at its default stopThr (1e-9) stops ~1% of the plan's max away on some machines' scipy
        # (seen 1.2% at gamma 0.1): run it to 1e-14, where it lands within 1e-4 of ours
        pot_plan, log = ot.smooth.smooth_ot_dual(a.numpy(), b.numpy(), cost.numpy(), gamma, reg_type="sparsity_constrained",
                                                 max_nz=k, log=True, stopThr=1e-14, numItermax=20_000)
    pot_value = dual(torch.as_tensor(log["alpha"]), torch.as_tensor(log["beta"]), cost, a, b, k, gamma)[0]
    assert float(value) >= float(pot_value) - 1e-9 * abs(float(pot_value))  # ours at least POT's
    assert abs(float(value - pot_value)) <= 1e-6 * abs(float(pot_value))
    assert (plan - torch.as_tensor(pot_plan)).abs().max() <= 1e-3 * float(plan.max())


def test_auto_compile_waits_for_repeated_solves_and_announces_each_build(monkeypatch, capsys):
    """compile="auto": a one-off solve runs eagerly (no compile wait); the AUTO_COMPILE_AFTER + 1-th solve
    of a problem family compiles. A new build says so on stderr once; other column counts and batch
    sizes reuse it (only the rows, k, dtype and flags make a family)."""
    import routing.sparse_ot as sot
    from routing.ot_duals import Compiled

    monkeypatch.setattr(sot, "_solves", {})
    big, small = torch.zeros(16, 512, dtype=f64), torch.zeros(4, 8, dtype=f64)
    uses = [sot._use_compile("auto", big, 2) for _ in range(sot.AUTO_COMPILE_AFTER + 2)]
    assert uses == [False] * sot.AUTO_COMPILE_AFTER + [True, True]
    assert not sot._use_compile("auto", small, 2) and sot._use_compile(True, small, 2)
    assert not sot._use_compile("auto", torch.zeros(8, 512, dtype=f64), 2)  # another family: counted apart

    c = Compiled(lambda *a: None)
    assert c._new_build((torch.zeros(3, 16), torch.zeros(3, 16, 512), 2, True))
    assert not c._new_build((torch.zeros(5, 16), torch.zeros(5, 16, 300), 2, True))  # other batch and columns
    assert c._new_build((torch.zeros(1, 16), torch.zeros(1, 16, 300), 2, True))  # one problem: its own build
    assert c._new_build((torch.zeros(3, 8), torch.zeros(3, 8, 512), 2, True))  # 8 rows: a new family
    err = capsys.readouterr().err
    assert err.count("sparse-OT: compiling") == 2 and "16 rows" in err and "8 rows" in err
