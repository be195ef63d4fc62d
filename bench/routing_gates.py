"""Forward + backward time of every gate vs softmax top-k (2048 tokens, d = 64, E = 16, k = 2).

    .venv/bin/python bench/routing_gates.py [--threads 1 --tokens 2048 --reps 10 --device cpu]
"""

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse

import torch

from routing.benchmarks import gate_timings

if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--tokens", type=int, default=2048, help="tokens per call")
    parser.add_argument("--reps", type=int, default=10, help="timed repetitions (median)")
    parser.add_argument("--device", default="cpu", help="torch device of the gates and tokens (cpu, cuda, ...)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for gate, v in gate_timings(n_tokens=args.tokens, reps=args.reps, device=args.device).items():
        print(f"{gate:14s} {v['seconds'] * 1e3:8.2f} ms  {v['ratio_vs_topk']:5.2f}x topk")
