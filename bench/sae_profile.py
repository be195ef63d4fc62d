"""Where one SAE training step spends its time: torch.profiler over a few of our train_step calls.

    python bench/sae_profile.py --device cuda --d-in 768 --d-sae 24576 --k 32 --batch 4096

Prints the profiler's table of the most expensive kernels (GPU time on CUDA, CPU time otherwise) for
--steps steps after --warmup untimed ones, on the planted data of bench/sae_throughput.py, with the
same trainer rows (--arch, --precision; Triton kernels as sae.triton_ops finds them).
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from sae_throughput import Ours, planted_data  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--d-in", type=int, default=768)
    p.add_argument("--d-sae", type=int, default=24576)
    p.add_argument("--k", type=int, default=32)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--arch", default="topk")
    p.add_argument("--precision", default="auto")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--rows", type=int, default=25, help="kernels listed")
    p.add_argument("--syncs", action="store_true",
                   help="CUDA: also list the lines of one step that make the host wait for the GPU (torch's sync debug mode)")
    a = p.parse_args(argv)
    a.lr, a.steps_total = 2e-4 / (a.d_sae / 2 ** 14) ** 0.5, a.warmup + a.steps
    a.steps = a.steps_total  # Ours reads a.steps for its schedule
    data = planted_data(4, a.batch, a.d_in, n_atoms=2 * a.d_sae, k_true=a.k, seed=0, device=a.device)
    t = Ours(a, data[0], arch=a.arch, precision=a.precision)
    cuda = a.device.startswith("cuda")
    for i in range(a.warmup):
        t.step(data[i % 4])
    if cuda:
        torch.cuda.synchronize()
    if cuda and a.syncs:
        import collections
        import warnings

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            torch.cuda.set_sync_debug_mode("warn")
            t.step(data[0])
            torch.cuda.set_sync_debug_mode("default")
        where = collections.Counter(f"{w.filename.split('/')[-2]}/{w.filename.split('/')[-1]}:{w.lineno}" for w in caught
                                    if "synchroniz" in str(w.message))
        print(f"{a.arch}: {sum(where.values())} device syncs in one step" + "".join(f"\n  {n}x {k}" for k, n in where.items()))
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if cuda else [])
    with torch.profiler.profile(activities=acts) as prof:
        for i in range(a.steps_total - a.warmup):
            t.step(data[i % 4])
        if cuda:
            torch.cuda.synchronize()
    key = "self_cuda_time_total" if cuda else "self_cpu_time_total"
    print(f"{a.arch} d_in {a.d_in} d_sae {a.d_sae} k {a.k} batch {a.batch} precision {a.precision}, "
          f"{a.steps_total - a.warmup} steps on {a.device}")
    print(prof.key_averages().table(sort_by=key, row_limit=a.rows, max_name_column_width=70))
    return 0


if __name__ == "__main__":
    sys.exit(main())
