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
import warnings

import numpy as np
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
    from routing.ot_duals import semi_dual
    from routing.sparse_ot import solve_sparse_ot

    n, m, k = cfg.rows, cfg.cols, cfg.k
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((m,), 1 / m, dtype=torch.float64)
    out = {"single": [], "batched": {}}
    pot = _have_pot()
    comp = _compiles(n * m)
    solve_sparse_ot(router_costs(1, n, m, cfg.seed + 99)[0], a, b, k, 1.0, compile=comp)  # builds, untimed
    for gamma in (0.1, 1.0):
        costs = router_costs(cfg.problems, n, m, cfg.seed)
        for i in range(cfg.problems):
            c = costs[i]
            runs = [lambda: solve_sparse_ot(c, a, b, k, gamma, compile=comp)]
            if pot:
                runs.append(lambda: pot_solve(c, a, b, k, gamma))
            (ours_s, res), *pot_run = _best_of(cfg.repeats, *runs)
            row = {"gamma": gamma, "shape": [n, m], "k": k, "ours_s": ours_s, "ours_D": float(res.value),
                   "ours_primal": float(res.primal), "ours_row_err": float(res.row_error), "ours_iters": res.n_iter}
            if pot:
                pot_s, (plan, alpha, _) = pot_run[0]
                row.update(pot_s=pot_s, pot_D=float(semi_dual(alpha, c, a, b, k, gamma)[0]),
                           pot_primal=float((plan * c).sum() + 0.5 * gamma * (plan * plan).sum()),
                           pot_row_err=float((plan.sum(1) - a).abs().max()),
                           plan_max_abs_diff=float((plan - res.plan).abs().max()), plan_max=float(plan.max()))
            out["single"].append(row)
    # batched: B problems of (rows experts x batch_cols tokens), as a router solves them, under both
    # marginal conventions: summing to 1 (POT's) and vmoe's (1 per token, G/E per expert)
    nb, mb = cfg.batch, cfg.batch_cols
    costs = router_costs(nb, n, mb, cfg.seed + 1)
    out["batched"] = {}
    for convention, row_mass, col_mass in (("sum-1", 1 / n, 1 / mb), ("vmoe", mb / n, 1.0)):
        ab = torch.full((n,), row_mass, dtype=torch.float64)
        bb = torch.full((mb,), col_mass, dtype=torch.float64)
        out["batched"][convention] = {"shape": [nb, n, mb], "k": k, "gamma": 1.0, "a_i": row_mass, "b_j": col_mass,
                                      **_batched_case(costs, ab, bb, k, cfg.repeats, pot, cfg.device)}
    # exact OT limit: k = 1 with tiny gamma vs ot.emd (tokens per expert integral)
    if pot:
        import ot

        c = router_costs(1, n, mb, cfg.seed + 2)[0]
        ab, bb = torch.full((n,), 1 / n, dtype=torch.float64), torch.full((mb,), 1 / mb, dtype=torch.float64)
        res = solve_sparse_ot(c, ab, bb, 1, 1e-4)
        emd = torch.as_tensor(ot.emd(ab.numpy(), bb.numpy(), c.numpy()))
        out["k1_vs_emd"] = {"ours_transport_cost": float((res.plan * c).sum()), "emd_cost": float((emd * c).sum()),
                            "ours_row_err": float(res.row_error), "gamma": 1e-4}
    return out


BATCHED_SOLVERS = (  # label, dtype, method, compile, backend ("auto": the C solve on the CPU, routing/ot_native.py)
    ("bfgs-f64", torch.float64, "bfgs", True, "auto"),
    ("bfgs-f64-torch", torch.float64, "bfgs", True, "torch"),
    ("bfgs-f64-eager", torch.float64, "bfgs", False, "torch"),
    ("newton-f64", torch.float64, "newton", True, "torch"),
    ("bfgs-f32", torch.float32, "bfgs", True, "auto"),
    ("bfgs-f32-torch", torch.float32, "bfgs", True, "torch"),
    ("adam20-f32", torch.float32, "adam", True, "torch"),
)


def _best_of(repeats: int, *fns) -> list[tuple[float, object]]:
    """For each fn, (its fastest wall time over `repeats` calls, its last result); the calls alternate between
    the fns (A B A B ...) so that a machine whose speed drifts during the run slows both sides alike."""
    best, out = [float("inf")] * len(fns), [None] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            t = time.perf_counter()
            out[i] = fn()
            best[i] = min(best[i], time.perf_counter() - t)
    return list(zip(best, out))


def _compiles(numel: int) -> bool:
    """The benches compile (before timing) what solve_sparse_ot's compile="auto" compiles in a long run."""
    from routing.sparse_ot import COMPILE_MIN_NUMEL

    return numel >= COMPILE_MIN_NUMEL


def _sync(device: str) -> None:
    """Wait for queued kernels, so a timer around a solve on an accelerator measures the solve."""
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)


def _batched_case(costs, ab, bb, k: int, repeats: int, pot: bool, device: str = "cpu") -> dict:
    """Every solver in BATCHED_SOLVERS on the whole batch (best of `repeats`, after a warm-up that also
    compiles), and POT problem by problem; D of each solution is evaluated in float64 by one function."""
    from routing.ot_duals import semi_dual
    from routing.sparse_ot import solve_sparse_ot

    res_out = {}
    if pot:
        t_total, d_pot = 0.0, []
        for i in range(costs.shape[0]):
            _, alpha, s = pot_solve(costs[i], ab, bb, k, 1.0)
            t_total += s
            d_pot.append(semi_dual(alpha, costs[i], ab, bb, k, 1.0)[0])
        res_out["pot"] = {"seconds": t_total, "D_mean": float(torch.stack(d_pot).mean())}
    for label, dtype, method, comp, backend in BATCHED_SOLVERS:
        comp = comp and _compiles(costs.numel())
        c, a, b = (x.to(device, dtype) for x in (costs, ab, bb))
        solve_sparse_ot(c, a, b, k, 1.0, method=method, compile=comp, backend=backend)  # warm-up (and compilation)
        times = []
        for _ in range(repeats):
            _sync(device)
            t = time.perf_counter()
            res = solve_sparse_ot(c, a, b, k, 1.0, method=method, compile=comp, backend=backend)
            _sync(device)
            times.append(time.perf_counter() - t)
        d_vals = semi_dual(res.alpha.double().cpu(), costs, ab, bb, k, 1.0)[0]
        row = {"seconds": min(times), "seconds_all": times, "D_mean": float(d_vals.mean()), "iters": res.n_iter,
               "converged": float(res.converged.float().mean()), "row_err_rel_max": float(res.row_error.max().cpu() / ab[0])}
        if pot:
            gap = (torch.stack(d_pot) - d_vals) / torch.stack(d_pot).abs()  # > 0: POT's objective is higher
            row.update(speedup_vs_pot=res_out["pot"]["seconds"] / row["seconds"], D_gap_rel_max=float(gap.max()),
                       D_gap_rel_median=float(gap.median()), frac_at_least_pot=float((gap <= 1e-9).float().mean()))
        res_out[label] = row
    return res_out


def gate_timings(n_tokens: int = 2048, d: int = 64, experts: int = 16, k: int = 2, reps: int = 10,
                 device: str = "cpu") -> dict:
    """Median forward+backward seconds of each gate on (n_tokens, d), and the ratio to softmax top-k."""
    from routing.config import GATES, GateConfig
    from routing.gates import make_gate

    torch.manual_seed(0)
    x = torch.randn(n_tokens, d, device=device)
    out = {}
    for name in GATES + tuple(g + "+" for g in ("topk", "comet", "dselect", "hash")):
        cfg = GateConfig(gate=name.rstrip("+"), experts=experts, k=k, local_search=name.endswith("+"))
        gate = make_gate(cfg, d).to(device)
        xg = x.clone().requires_grad_(True)
        times = []
        for r in range(reps + 2):
            _sync(device)
            t = time.perf_counter()
            o = gate(xg)
            loss = (o.weights * torch.arange(experts, dtype=x.dtype, device=device)).sum() + o.aux_loss()
            if loss.requires_grad:  # hash has nothing to differentiate
                loss.backward()
            _sync(device)
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
        for convention, bt in sol["batched"].items():
            print(f"batched {bt['shape'][0]} problems of {bt['shape'][1]} x {bt['shape'][2]}, k={bt['k']}, gamma 1, "
                  f"marginals {convention} (a_i {bt['a_i']:.4g}, b_j {bt['b_j']:.4g}), ours on {cfg.device}; "
                  "D gap > 0 = POT higher:")
            for label, v in bt.items():
                if isinstance(v, dict):
                    extra = (f"  {v['speedup_vs_pot']:5.1f}x POT  D gap max {v['D_gap_rel_max']:8.1e} median "
                             f"{v['D_gap_rel_median']:8.1e}  >= POT on {v['frac_at_least_pot']:.0%}  "
                             f"iters {v['iters']}  row err {v['row_err_rel_max']:.1e}" if "speedup_vs_pot" in v else "")
                    print(f"  {label:15s} {v['seconds'] * 1e3:8.1f} ms{extra}")
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


# ---- limits: sparse OT vs exact OT (k -> 1) and Sinkhorn; balanced assignment vs scipy -----------------
def _col_support_99(plan: torch.Tensor, b: torch.Tensor) -> float:
    """Mean number of entries per column needed to hold 99% of the column's mass (plan (..., n, m))."""
    vals = plan.transpose(-1, -2).sort(-1, descending=True).values  # (..., m, n)
    cum = vals.cumsum(-1)
    return float(((cum < 0.99 * b.unsqueeze(-1)).sum(-1) + 1).clamp(max=plan.shape[-2]).float().mean())


def ot_limits(n: int = 16, m: int = 512, problems: int = 4, ks=(1, 2, 4, 8, 16), gammas=(1000.0, 100.0, 10.0, 1.0, 0.01),
              epsilons=(0.1, 0.01, 0.001), sinkhorn_iters=(100, 1000), seed: int = 0) -> dict:
    """Sparse OT (ours, batched, default BFGS, f64) as k -> 1 and Sinkhorn (ours, batched; POT's per problem) vs ot.emd.

    Same router costs as the solver bench (-softmax of N(0, 4) logits, n experts x m tokens), uniform
    marginals summing to 1, so the regulariser acts per column through gamma * b_j = gamma / m: gamma = m
    here is vmoe's setting (b_j = 1, gamma = 1), and gamma <= 1 is already close to unregularised OT.
    For every method: transport cost <T, C> minus exact OT's (>= 0 up to
    row-marginal errors; exact OT's cost is about -0.5 here), the max row-marginal error relative to a_i,
    the mean number of entries per column holding 99% of its mass, and wall time for all problems.
    """
    import ot

    from routing.sparse_ot import solve_sparse_ot
    from workbench.simplex import sinkhorn_log

    costs = router_costs(problems, n, m, seed)
    a = torch.full((n,), 1 / n, dtype=torch.float64)
    b = torch.full((m,), 1 / m, dtype=torch.float64)
    t = time.perf_counter()
    emd = torch.stack([torch.as_tensor(ot.emd(a.numpy(), b.numpy(), c.numpy())) for c in costs])
    emd_s = time.perf_counter() - t
    emd_cost = (emd * costs).sum((-2, -1))

    def row(plan, seconds, **extra):
        cost = (plan * costs).sum((-2, -1))
        return {"cost_gap": float((cost - emd_cost).mean()), "cost_gap_max": float((cost - emd_cost).max()),
                "row_err_rel": float((plan.sum(-1) - a).abs().max() / a.max()),
                "support99": _col_support_99(plan, b), "seconds": seconds, **extra}

    out = {"shape": [problems, n, m], "emd": {"seconds": emd_s, "cost_mean": float(emd_cost.mean()),
                                              "support99": _col_support_99(emd, b)}, "sparse_ot": [], "sinkhorn": []}
    for gamma in gammas:
        for k in ks:
            solve_sparse_ot(costs, a, b, k, gamma, compile=_compiles(costs.numel()))  # warm-up, compiles
            t = time.perf_counter()
            res = solve_sparse_ot(costs, a, b, k, gamma, compile=_compiles(costs.numel()))
            sec = time.perf_counter() - t
            out["sparse_ot"].append(row(res.plan, sec, gamma=gamma, k=k, iters=res.n_iter,
                                        converged=float(res.converged.double().mean()),
                                        primal_gap=float((res.primal - emd_cost).mean())))
    for eps in epsilons:
        for iters in sinkhorn_iters:
            t = time.perf_counter()
            plan = sinkhorn_log(-costs / eps, a.log(), b.log(), n_iters=iters).exp()
            sec = time.perf_counter() - t
            out["sinkhorn"].append(row(plan, sec, impl="ours", eps=eps, iters=iters))
        t = time.perf_counter()
        with contextlib.redirect_stdout(io.StringIO()), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            plans = [torch.as_tensor(ot.sinkhorn(a.numpy(), b.numpy(), c.numpy(), eps, method="sinkhorn_log",
                                                 numItermax=max(sinkhorn_iters), stopThr=1e-9)) for c in costs]
        out["sinkhorn"].append(row(torch.stack(plans), time.perf_counter() - t, impl="pot", eps=eps,
                                   iters=max(sinkhorn_iters)))
    return out


def assignment_limits(sizes=((512, 16), (2048, 16)), seed: int = 0, sinkhorn_iters: int = 20) -> dict:
    """Balanced assignment of N tokens to E experts (N/E each), maximising the summed router logits.

    Methods: scipy `linear_sum_assignment` on experts replicated N/E times (the reference optimum),
    ours by successive shortest paths over the experts (`routing.assignment`, what the BASE gate runs),
    both also on skewed logits (+ 3 on expert 0: most tokens want one expert), exact OT as a
    transportation problem (`ot.emd`, a = N/E per expert, b = 1 per token; its vertex solutions are
    assignments), our sparse OT with k = 1 (one expert per token by construction;
    balanced when the row marginals converge), S-BASE (top-1 of 20 Sinkhorn iterations, approximate
    balance) and greedy argmax (no balance). Reported: seconds, summed logit of the assignment
    relative to scipy's optimum, max tokens per expert / (N/E).
    """
    import ot

    from scipy.optimize import linear_sum_assignment

    from routing.assignment import balanced_assignment_ssp
    from routing.sparse_ot import solve_sparse_ot
    from workbench.simplex import sinkhorn_log

    out = {}
    for n_tok, e in sizes:
        g = torch.Generator().manual_seed(seed)
        logits = 2 * torch.randn(n_tok, e, generator=g, dtype=torch.float64)
        cap = n_tok // e
        res = {}

        skewed = logits.clone()
        skewed[:, 0] += 3.0

        def record(name, expert, seconds, scores=logits, **extra):
            load = torch.bincount(expert, minlength=e)
            res[name] = {"seconds": seconds, "score": float(scores[torch.arange(n_tok), expert].sum()),
                         "max_load_ratio": float(load.max()) / cap, "balanced": bool((load == cap).all()), **extra}

        def scipy_lsa(scores):
            rows, cols = linear_sum_assignment(np.repeat(scores.numpy(), cap, axis=1), maximize=True)
            return torch.as_tensor(cols[np.argsort(rows)] // cap)

        def ours_ssp(scores):
            return torch.as_tensor(balanced_assignment_ssp(scores.numpy(), np.full(e, cap)))

        for suffix, scores in (("", logits), ("_skewed", skewed)):
            for name, fn in (("scipy_lsa", scipy_lsa), ("ours_ssp", ours_ssp)):
                t = time.perf_counter()
                ex = fn(scores)
                record(name + suffix, ex, time.perf_counter() - t, scores=scores)
        t = time.perf_counter()
        plan = ot.emd(np.full(e, float(cap)), np.ones(n_tok), (-logits.T).numpy().copy())
        ex = torch.as_tensor(plan.argmax(0))
        record("ot_emd", ex, time.perf_counter() - t, integral=bool(((plan > 1e-9) & (plan < 1 - 1e-9)).sum() == 0))
        a = torch.full((e,), 1 / e, dtype=torch.float64)
        b = torch.full((n_tok,), 1 / n_tok, dtype=torch.float64)
        for gamma in (1.0, 1e-2):
            solve_sparse_ot(-logits.T, a, b, 1, gamma, compile=_compiles(logits.numel()))  # warm-up, compiles
            t = time.perf_counter()
            sol = solve_sparse_ot(-logits.T, a, b, 1, gamma, compile=_compiles(logits.numel()))
            record(f"sparse_ot_k1_g{gamma:g}", sol.plan.argmax(0), time.perf_counter() - t,
                   row_err_rel=float(sol.row_error / a[0]), converged=bool(sol.converged))
        t = time.perf_counter()
        ex = sinkhorn_log(logits, n_iters=sinkhorn_iters).argmax(-1)
        record("s_base_sinkhorn20_top1", ex, time.perf_counter() - t)
        t = time.perf_counter()
        record("greedy_argmax", logits.argmax(-1), time.perf_counter() - t)
        for name, v in res.items():  # against scipy's optimum of the same logits
            best = res["scipy_lsa_skewed" if name.endswith("_skewed") else "scipy_lsa"]["score"]
            v["score_rel_gap"] = (best - v["score"]) / abs(best)
        out[f"{n_tok}x{e}"] = res
    return out


def print_limits(ot_res: dict | None, asg: dict | None) -> None:
    if ot_res:
        p, n, m = ot_res["shape"]
        e = ot_res["emd"]
        print(f"sparse OT / Sinkhorn vs exact OT ({p} problems of {n} x {m}, ot.emd cost {e['cost_mean']:.6f}, "
              f"{e['seconds'] * 1e3:.0f} ms for all, 99%-support {e['support99']:.2f}/column):")
        print("  method                 cost gap   (max)      row err   99%-supp  ms (all)")
        for r in ot_res["sparse_ot"]:
            print(f"  sparse-ot g={r['gamma']:<5g} k={r['k']:<2d}  {r['cost_gap']:9.2e} ({r['cost_gap_max']:8.2e})"
                  f"  {r['row_err_rel']:8.1e}  {r['support99']:8.2f}  {r['seconds'] * 1e3:8.1f}")
        for r in ot_res["sinkhorn"]:
            print(f"  sinkhorn {r['impl']:4s} e={r['eps']:<5g} it={r['iters']:<4d} {r['cost_gap']:9.2e} "
                  f"({r['cost_gap_max']:8.2e})  {r['row_err_rel']:8.1e}  {r['support99']:8.2f}  {r['seconds'] * 1e3:8.1f}")
    if asg:
        for size, res in asg.items():
            print(f"balanced assignment {size} (tokens x experts), score = summed logits:")
            for name, v in res.items():
                print(f"  {name:24s} {v['seconds'] * 1e3:9.1f} ms  score gap {v['score_rel_gap']:9.2e}"
                      f"  max load {v['max_load_ratio']:.3f}x  balanced {v['balanced']}")
