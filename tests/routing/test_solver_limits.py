"""Solver-limit benchmarks on tiny problems: k = 1 sparse OT equals exact OT, Sinkhorn is dense,
balanced assignment methods agree with scipy's optimum."""

import pytest

pytest.importorskip("ot")

from routing.benchmarks import assignment_limits, ot_limits, print_limits  # noqa: E402


def test_ot_limits_k1_is_exact_and_sinkhorn_is_dense(capsys):
    res = ot_limits(n=4, m=16, problems=2, ks=(1, 2, 4), gammas=(1.0,), epsilons=(0.1,), sinkhorn_iters=(200,))
    k1 = next(r for r in res["sparse_ot"] if r["k"] == 1)
    assert abs(k1["cost_gap"]) < 1e-9 and k1["support99"] == 1.0
    for r in res["sparse_ot"]:
        assert r["support99"] <= r["k"] and r["cost_gap"] > -1e-9
    ours, pot = (next(r for r in res["sinkhorn"] if r["impl"] == impl) for impl in ("ours", "pot"))
    assert ours["cost_gap"] == pytest.approx(pot["cost_gap"], rel=1e-3, abs=1e-6)
    assert ours["support99"] > 1.5  # entropic plans spread every column
    print_limits(res, None)
    assert "sparse-ot g=1" in capsys.readouterr().out


def test_assignment_limits_exact_methods_match_scipy():
    res = assignment_limits(sizes=((64, 4),))["64x4"]
    assert res["scipy_lsa"]["balanced"] and res["ot_emd"]["balanced"]
    assert abs(res["ot_emd"]["score_rel_gap"]) < 1e-12
    assert res["greedy_argmax"]["score_rel_gap"] <= 0  # unconstrained upper bound
    assert res["sparse_ot_k1_g1"]["max_load_ratio"] >= 1.0
