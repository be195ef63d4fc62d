"""Sparsity-constrained OT: our solver vs POT on the same problems (time + objective).

    .venv/bin/python bench/routing_solver.py [--batch 64 --batch-cols 512 --cols 2048 --threads 1]

Same as `workbench moe solve-bench --gates false`; prints single-problem rows (16 x 2048, k=2,
gamma 0.1 and 1), the batched case (64 problems of 16 experts x 512 tokens) with the speed-up over
POT's per-problem loop, and the k=1 / small-gamma comparison with exact OT (ot.emd). Rows without a
suffix are the default solve (on the CPU: the C BFGS of routing/ot_native.py); "-torch" rows are the
torch.compile'd BFGS, "-eager" the same uncompiled. Every time is the best of --repeats calls, POT's too (single problems: ours and POT's calls alternate).
"""

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import json
import sys

from routing.benchmarks import run_solver_bench
from routing.config import SolverBenchConfig
from workbench.config import add_arguments, from_args

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_arguments(parser, SolverBenchConfig, skip=("gates", "solver"))
    parser.add_argument("--json", default="", help="also write the numbers to this JSON file")
    args = parser.parse_args()
    result = run_solver_bench(from_args(SolverBenchConfig, args, gates=False))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)
    sys.exit(0)
