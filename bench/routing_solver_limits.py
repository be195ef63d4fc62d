"""Solver limits: sparsity-constrained OT vs exact OT (ot.emd) as k -> 1 and vs Sinkhorn; balanced
assignment (BASE's successive shortest paths, routing.assignment) vs scipy and the alternatives.

    .venv/bin/python bench/routing_solver_limits.py [--rows 16 --cols 512 --problems 4 --threads 1
        --json runs/solver-limits.json]

Part 1 (routing.benchmarks.ot_limits): P router-cost problems (16 experts x 512 tokens, marginals summing
to 1); our batched sparse-OT solver (default BFGS) for k = 1, 2, 4, 8, 16 and gamma = 1000, 100, 10, 1, 0.01
(gamma = 512 is vmoe's gamma = 1 with unit column marginals); our batched log-domain Sinkhorn
(workbench.simplex.sinkhorn_log) and POT's `ot.sinkhorn(method="sinkhorn_log")`
for eps = 0.1, 0.01, 0.001; each against `ot.emd`: transport-cost gap, row-marginal error, entries per
column holding 99% of its mass, time. Part 2 (routing.benchmarks.assignment_limits): 512 x 16 and
2048 x 16 balanced assignments by scipy (the reference optimum), ours (the BASE gate's solver, also on
skewed logits against scipy), ot.emd as a transportation problem,
sparse OT with k = 1, S-BASE's Sinkhorn top-1 and greedy argmax: time, summed-logit gap to scipy's
optimum, max load. Needs POT (pip install -c constraints.txt POT).
"""

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json

import torch

from routing.benchmarks import assignment_limits, ot_limits, print_limits

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", type=int, default=16, help="experts (OT rows)")
    parser.add_argument("--cols", type=int, default=512, help="tokens per OT problem")
    parser.add_argument("--problems", type=int, default=4, help="random problems (batched for our solvers)")
    parser.add_argument("--assign-sizes", default="512x16,2048x16", help="tokens x experts of the assignments")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    ks = tuple(k for k in (1, 2, 4, 8, 16) if k <= args.rows)
    res = {"ot": ot_limits(args.rows, args.cols, args.problems, ks=ks, seed=args.seed)}
    sizes = tuple(tuple(int(v) for v in s.split("x")) for s in args.assign_sizes.split(",") if s)
    res["assignment"] = assignment_limits(sizes, seed=args.seed)
    print_limits(res["ot"], res["assignment"])
    if args.json:
        with open(args.json, "w") as f:
            json.dump(res, f, indent=2)
