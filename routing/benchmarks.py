"""Micro-benchmarks: our sparsity-constrained OT solver vs POT, and the forward+backward cost of each gate.

Solver: the same problems go to POT (`ot.smooth.smooth_ot_semi_dual(..., reg_type="sparsity_constrained",
max_nz=k)`, scipy L-BFGS-B) and to ours; we report wall time, the semi-dual objective D(alpha) of both
solutions (higher is better, evaluated by the same function), the primal value of both plans and row
marginal errors. Marginals are uniform and sum to 1 (POT's convention). POT is optional: without it
the POT columns are skipped with a note.
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time

import torch

from routing.config import SolverBenchConfig


def router_costs(b: int, n: int, m: int, seed: int, dtype=torch.float64) -> torch.Tensor:
    """(b, n, m) costs -softmax(logits) over the n experts of each of m tokens (logits ~ N(0, 4))."""
    g = torch.Generator().manual_seed(seed)
    logits = 2 * torch.randn(b, m, n, generator=g, dtype=dtype)
    return -logits.softmax(-1).transpose(-1, -2).contiguous()


def pot_solve(cost, a, b, k, gamma):
    """POT's solver on one problem -> (plan, alpha, seconds); its debug prints are silenced."""
    import ot

    t = time.perf_counter()
    with contextlib.redirect_stdout(io.StringIO()):
        plan, log = ot.smooth.smooth_ot_semi_dual(a.numpy(), b.numpy(), cost.numpy(), gamma,
                                                  reg_type="sparsity_constrained", max_nz=k, log=True)
    return torch.as_tensor(plan), torch.as_tensor(log["alpha"]), time.perf_counter() - t


def _have_pot() -> bool:
    try:
        import ot  # noqa: F401
    except ImportError:
        return False
    return True


def solver_comparison(cfg: SolverBenchConfig) -> dict:
    from routing.sparse_ot import semi_dual, solve_sparse_ot

    n, m, k = cfg.rows, cfg.cols, cfg.k
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((m,), 1 / m, dtype=torch.float64)
    out = {"single": [], "batched": {}}
    pot = _have_pot()
    for gamma in (0.1, 1.0):
        costs = router_costs(cfg.problems, n, m, cfg.seed)
        for i in range(cfg.problems):
            c = costs[i]
            t = time.perf_counter()
            res = solve_sparse_ot(c, a, b, k, gamma)
            ours_s = time.perf_counter() - t
            row = {"gamma": gamma, "shape": [n, m], "k": k, "ours_s": ours_s, "ours_D": float(res.value),
                   "ours_primal": float(res.primal), "ours_row_err": float(res.row_error), "ours_iters": res.n_iter}
            if pot:
                plan, alpha, pot_s = pot_solve(c, a, b, k, gamma)
                row.update(pot_s=pot_s, pot_D=float(semi_dual(alpha, c, a, b, k, gamma)[0]),
                           pot_primal=float((plan * c).sum() + 0.5 * gamma * (plan * plan).sum()),
                           pot_row_err=float((plan.sum(1) - a).abs().max()),
                           plan_max_abs_diff=float((plan - res.plan).abs().max()), plan_max=float(plan.max()))
            out["single"].append(row)
    # batched: B problems of (rows experts x batch_cols tokens), as a router solves them
    nb, mb = cfg.batch, cfg.batch_cols
    costs = router_costs(nb, n, mb, cfg.seed + 1)
    ab = torch.full((n,), 1 / n, dtype=torch.float64)
    bb = torch.full((mb,), 1 / mb, dtype=torch.float64)
    batched = {}
    for label, dtype, method, iters in (("newton-f64", torch.float64, "newton", None),
                                        ("newton-f32", torch.float32, "newton", 30),
                                        ("adam20-f32", torch.float32, "adam", 20)):
        c = costs.to(dtype)
        solve_sparse_ot(c[:2], ab.to(dtype), bb.to(dtype), k, 1.0, method=method, max_iter=iters)  # warm-up
        t = time.perf_counter()
        res = solve_sparse_ot(c, ab.to(dtype), bb.to(dtype), k, 1.0, method=method, max_iter=iters)
        sec = time.perf_counter() - t
        d_vals = semi_dual(res.alpha.double(), costs, ab, bb, k, 1.0)[0]
        batched[label] = {"seconds": sec, "D_mean": float(d_vals.mean()), "iters": res.n_iter,
                          "converged": float(res.converged.float().mean()),
                          "row_err_rel_max": float(res.row_error.max() * n)}
    if pot:
        t_total, d_pot = 0.0, []
        for i in range(nb):
            _, alpha, s = pot_solve(costs[i], ab, bb, k, 1.0)
            t_total += s
            d_pot.append(float(semi_dual(alpha, costs[i], ab, bb, k, 1.0)[0]))
        batched["pot"] = {"seconds": t_total, "D_mean": statistics.fmean(d_pot)}
        for label in list(batched):
            if label != "pot":
                batched[label]["speedup_vs_pot"] = t_total / batched[label]["seconds"]
                batched[label]["D_gap_rel_vs_pot"] = (batched["pot"]["D_mean"] - batched[label]["D_mean"]) / abs(
                    batched["pot"]["D_mean"])
    out["batched"] = {"shape": [nb, n, mb], "k": k, "gamma": 1.0, **batched}
    # exact OT limit: k = 1 with tiny gamma vs ot.emd (tokens per expert integral)
    if pot:
        import ot

        c = router_costs(1, n, mb, cfg.seed + 2)[0]
        res = solve_sparse_ot(c, ab, bb, 1, 1e-4)
        emd = torch.as_tensor(ot.emd(ab.numpy(), bb.numpy(), c.numpy()))
        out["k1_vs_emd"] = {"ours_transport_cost": float((res.plan * c).sum()), "emd_cost": float((emd * c).sum()),
                            "ours_row_err": float(res.row_error), "gamma": 1e-4}
    return out


def gate_timings(n_tokens: int = 2048, d: int = 64, experts: int = 16, k: int = 2, reps: int = 10) -> dict:
    """Median forward+backward seconds of each gate on (n_tokens, d), and the ratio to softmax top-k."""
    from routing.config import GATES, GateConfig
    from routing.gates import make_gate

    torch.manual_seed(0)
    x = torch.randn(n_tokens, d)
    out = {}
    for name in GATES + tuple(g + "+" for g in ("topk", "comet", "dselect", "hash")):
        cfg = GateConfig(gate=name.rstrip("+"), experts=experts, k=k, local_search=name.endswith("+"))
        gate = make_gate(cfg, d)
        xg = x.clone().requires_grad_(True)
        times = []
        for r in range(reps + 2):
            t = time.perf_counter()
            o = gate(xg)
            loss = (o.weights * torch.arange(experts, dtype=x.dtype)).sum() + o.aux_loss()
            if loss.requires_grad:  # hash has nothing to differentiate
                loss.backward()
            if r >= 2:
                times.append(time.perf_counter() - t)
        out[name] = statistics.median(times)
    base = out["topk"]
    return {g: {"seconds": s, "ratio_vs_topk": s / base} for g, s in out.items()}


def run_solver_bench(cfg: SolverBenchConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    result = {"config": cfg.__dict__}
    if cfg.solver:
        if not _have_pot():
            print("POT is not installed (pip install -c constraints.txt POT): showing our solver only")
        sol = solver_comparison(cfg)
        result["solver"] = sol
        print(f"single problems ({cfg.rows} x {cfg.cols}, k={cfg.k}, uniform marginals summing to 1):")
        for r in sol["single"]:
            line = f"  gamma {r['gamma']}: ours {r['ours_s'] * 1e3:7.1f} ms D={r['ours_D']:.10f} row_err {r['ours_row_err']:.1e}"
            if "pot_s" in r:
                line += (f" | POT {r['pot_s'] * 1e3:7.1f} ms D={r['pot_D']:.10f} row_err {r['pot_row_err']:.1e}"
                         f" | ratio {r['pot_s'] / r['ours_s']:.2f}x | plan diff {r['plan_max_abs_diff']:.1e}"
                         f" (max {r['plan_max']:.1e})")
            print(line)
        bt = sol["batched"]
        print(f"batched {bt['shape'][0]} problems of {bt['shape'][1]} x {bt['shape'][2]}, k={bt['k']}:")
        for label, v in bt.items():
            if isinstance(v, dict):
                extra = (f" speedup {v['speedup_vs_pot']:.1f}x, D gap {v['D_gap_rel_vs_pot']:.1e}"
                         if "speedup_vs_pot" in v else "")
                print(f"  {label:11s} {v['seconds']:.3f} s  D_mean {v['D_mean']:.10f}{extra}")
        if "k1_vs_emd" in sol:
            e = sol["k1_vs_emd"]
            print(f"k=1, gamma=1e-4 vs ot.emd: transport cost ours {e['ours_transport_cost']:.6f} "
                  f"emd {e['emd_cost']:.6f} (row err {e['ours_row_err']:.1e})")
    if cfg.gates:
        gt = gate_timings()
        result["gates"] = gt
        print("gate forward+backward, 2048 tokens, d=64, E=16, k=2 (median of 10):")
        for g, v in gt.items():
            print(f"  {g:14s} {v['seconds'] * 1e3:8.2f} ms  {v['ratio_vs_topk']:.2f}x topk")
    return result
