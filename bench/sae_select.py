"""The allocation step alone: ways to pick the active pairs of an (N, d_sae) pre-activation matrix, timed.

    python bench/sae_select.py --device cuda            # issue 14's three shapes
    python bench/sae_select.py --device cpu --shapes small

For each shape, on random bfloat16 pre-activations laid out as the SAE writes them (row-major for TopK
and Mutual Choice, column-major for Feature Choice), the median time of each way to select, and
whether it selects the same set (the sum of the selected values equals the reference's):

- TopK, each row's top k: ``torch.topk`` (the default), in float32, and in two stages (top k of each
  chunk of L columns, then top k of the chunks' winners: exact, fewer elements per radix select)
- Feature Choice, each column's top m (m = kN/d_sae, uniform): ``torch.topk`` along the columns as
  alloc.topk_per_col did, unsorted, m rounds of a column max, two stages, and the Triton kernel of
  workbench/topk_small.py
- Mutual Choice, the kN largest entries: ``alloc.topk_global`` (sampled threshold, candidates,
  exact top-K), ``torch.topk`` over the flattened matrix, and per-row top-c candidates first
- the library calls as the SAEs make them: alloc.topk_per_row / topk_per_col / topk_global
"""

from __future__ import annotations

import workbench.threads  # noqa: F401 - first: OMP_WAIT_POLICY=PASSIVE before torch loads (docs/threads.md)

import argparse
import statistics
import sys
import time

import torch

from workbench import alloc, topk_small

SHAPES = {"issue": ((24576, 32, 4096), (98304, 64, 4096), (65536, 64, 8192)),  # d_sae, k, N
          "small": ((4096, 16, 1024), (8192, 32, 512))}


def timed(fn, device: str, reps: int) -> float:
    """Median milliseconds of fn() over reps calls after 2 warm-up calls."""
    cuda = device.startswith("cuda")
    for _ in range(2):
        fn()
    out = []
    for _ in range(reps):
        if cuda:
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            fn()
            b.record()
            b.synchronize()
            out.append(a.elapsed_time(b))
        else:
            t0 = time.perf_counter()
            fn()
            out.append(1000 * (time.perf_counter() - t0))
    return statistics.median(out)


def two_stage_rows(x: torch.Tensor, k: int, chunk: int) -> torch.Tensor:
    """(N, k) column indices of each row's top k, via the top k of each chunk of `chunk` columns."""
    n, f = x.shape
    g = f // chunk
    v, i = x.view(n, g, chunk).topk(k, dim=2, sorted=False)  # (N, g, k)
    i = i + (torch.arange(g, device=x.device) * chunk)[None, :, None]
    _, j = v.reshape(n, g * k).topk(k, dim=1, sorted=False)
    return i.reshape(n, g * k).gather(1, j)


def iter_max_cols(pre: torch.Tensor, m: int) -> torch.Tensor:
    """(m, f) row indices of each column's top m by m rounds of a column max."""
    work = pre.clone()
    out = []
    for _ in range(m):
        idx = work.argmax(dim=0)  # (f,)
        out.append(idx)
        work.scatter_(0, idx[None, :], float("-inf"))
    return torch.stack(out)


def rows_then_global(x: torch.Tensor, budget: int, c: int) -> torch.Tensor:
    """Flat indices of the budget largest entries among each row's top c (exact when no row has more
    than c of the global top budget)."""
    n, f = x.shape
    v, i = x.topk(c, dim=1, sorted=False)  # (N, c)
    _, j = v.reshape(-1).topk(budget, sorted=False)
    return (j // c) * f + i.reshape(-1)[j]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda")
    p.add_argument("--shapes", choices=tuple(SHAPES), default="issue")
    p.add_argument("--reps", type=int, default=15)
    a = p.parse_args(argv)
    dev = a.device
    if dev.startswith("cuda"):
        print(f"device {torch.cuda.get_device_name(dev)}, torch {torch.__version__}")
    print(f"Triton small top-m kernel usable: {topk_small.triton is not None}")
    for f, k, n in SHAPES[a.shapes]:
        g = torch.Generator(device=dev).manual_seed(0)
        row = torch.randn(n, f, generator=g, device=dev).bfloat16()  # (N, f) row-major
        col = row.t().contiguous().t()  # (N, f) column-major: what the FC encoder writes
        m = -(-k * n // f)
        budget = k * n
        print(f"\nd_sae {f}, k {k}, N {n}  (FC m = {m}; MC budget {budget:,})")

        def report(name, fn, ref_sum=None, sel=None):
            ms = timed(fn, dev, a.reps)
            same = ""
            if sel is not None and ref_sum is not None:
                s = sel().float().sum().item()
                same = "  same set" if abs(s - ref_sum) <= 1e-3 * abs(ref_sum) + 1e-2 else f"  DIFFERENT (sum {s:.2f} vs {ref_sum:.2f})"
            print(f"  {name:<46} {ms:8.3f} ms{same}", flush=True)

        # TopK
        ref = row.float().gather(1, row.topk(k, dim=1).indices).sum().item()
        report("topk rows: torch.topk bf16", lambda: row.topk(k, dim=1, sorted=False))
        r32 = row.float()
        report("topk rows: torch.topk fp32", lambda: r32.topk(k, dim=1, sorted=False))
        for chunk in (1024, 2048, 4096, 8192):
            if f % chunk == 0 and chunk >= k:
                report(f"topk rows: two stages, chunks of {chunk}", lambda c=chunk: two_stage_rows(row, k, c), ref,
                       lambda c=chunk: row.float().gather(1, two_stage_rows(row, k, c)))
        report("alloc.topk_per_row", lambda: alloc.topk_per_row(row, k))
        # Feature Choice
        ref = col.float().gather(0, col.topk(m, dim=0).indices).sum().item()
        report("fc cols: torch.topk dim 0 sorted (before)", lambda: col.topk(m, dim=0, sorted=True))
        report("fc cols: torch.topk dim 0 unsorted", lambda: col.topk(m, dim=0, sorted=False))
        report("fc cols: m rounds of a column max", lambda: iter_max_cols(col, m), ref,
               lambda: col.float().gather(0, iter_max_cols(col, m)))
        if topk_small.usable(col.t(), m):
            report("fc cols: Triton small top-m", lambda: topk_small.row_topk_small(col.t(), m), ref,
                   lambda: col.float().gather(0, topk_small.row_topk_small(col.t(), m)[1].t()))
        known = (budget // f, budget // f + (budget % f > 0), budget)
        caps = alloc.uniform_capacities(budget, f).to(dev)
        for on in (False, True):
            topk_small.ENABLED = on
            report(f"alloc.topk_per_col (uniform, small kernel {'on' if on else 'off'})",
                   lambda: alloc.topk_per_col(col, caps, known))
        topk_small.ENABLED = True
        # Mutual Choice
        flat = row.reshape(-1)
        ref = flat.float()[flat.topk(budget, sorted=False).indices].sum().item()
        report("mc: alloc.topk_global (before)", lambda: alloc.topk_global(row, budget), ref,
               lambda: alloc.topk_global(row, budget).values.float())
        report("mc: torch.topk over all entries", lambda: flat.topk(budget, sorted=False))
        for c in (2 * k, 4 * k):
            report(f"mc: per-row top {c}, then global", lambda c=c: rows_then_global(row, budget, c), ref,
                   lambda c=c: flat.float()[rows_then_global(row, budget, c)])
        del row, col, r32
        if dev.startswith("cuda"):
            torch.cuda.empty_cache()
    return 0


if __name__ == "__main__":
    sys.exit(main())
