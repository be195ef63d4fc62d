"""Top-m of every row for a small m, as one Triton kernel on a GPU (torch.topk elsewhere).

Feature Choice and Expert Choice keep, for each unit, its top-m tokens of the batch, with m = k N /
n_units usually a handful (3-6 for the SAE shapes of issue 14). ``torch.topk`` runs a radix select per
row whatever m is; for a small m it is cheaper to hold the row in registers and take the maximum m
times: the row is read from memory once. :func:`row_topk_small` does that, one program per row of a
row-contiguous (rows, n) matrix with n up to :data:`MAX_N`, and returns the values and indices best
first (as ``torch.topk(..., sorted=True)``; among equal values, which one comes first may differ).

Used by :func:`workbench.alloc.topk_per_col` (through ``_topk_cols``) on CUDA tensors when Triton imports; ``TRITON_INTERPRET=1``
runs the same kernel on the CPU, which is how tests/workbench/test_topk_small.py checks it.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from workbench.triton_env import on_kernel_device, tl, triton

MAX_M = 16  # larger m: torch.topk (m reductions per row stop paying)
MAX_N = 16384  # longer rows do not fit one program's registers
ENABLED = os.environ.get("WORKBENCH_TOPK_SMALL", "1") != "0"  # 0: always torch.topk (for benchmarks)


def usable(x: Tensor, m: int) -> bool:
    """Whether :func:`row_topk_small` runs its kernel for x (rows, n) and m."""
    return (ENABLED and on_kernel_device(x) and x.ndim == 2 and 0 < m <= MAX_M
            and m <= x.shape[1] <= MAX_N and x.dtype in (torch.float32, torch.bfloat16, torch.float16))


if triton is not None:

    @triton.jit
    def _row_topk_kernel(x_ptr, vals_ptr, idx_ptr, n, stride_row, M: tl.constexpr, BLOCK: tl.constexpr):
        r = tl.program_id(0).to(tl.int64)
        j = tl.arange(0, BLOCK)
        x = tl.load(x_ptr + r * stride_row + j, mask=j < n, other=float("-inf")).to(tl.float32)  # (BLOCK,)
        for i in tl.static_range(M):
            v, at = tl.max(x, axis=0, return_indices=True)
            tl.store(vals_ptr + r * M + i, v)
            tl.store(idx_ptr + r * M + i, at.to(tl.int64))
            x = tl.where(j == at, float("-inf"), x)


def row_topk_small(x: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """(values, indices), each (rows, m), of the m largest entries of each row of x (rows, n), best first.

    Values keep x's dtype. Falls back to ``x.topk(m, dim=1, sorted=True)`` where the kernel does not run."""
    if not usable(x, m):
        return x.topk(m, dim=1, sorted=True)
    if x.stride(1) != 1:
        x = x.contiguous()
    rows, n = x.shape
    vals = torch.empty(rows, m, dtype=torch.float32, device=x.device)
    idx = torch.empty(rows, m, dtype=torch.long, device=x.device)
    if rows:
        block = triton.next_power_of_2(n)
        _row_topk_kernel[(rows,)](x, vals, idx, n, x.stride(0), M=m, BLOCK=block,
                                  num_warps=4 if block <= 2048 else 8 if block <= 8192 else 16)
    return vals.to(x.dtype), idx
