"""Triton kernels for the sparse SAE step on a GPU: gathered dot products and segment sums.

Two primitives cover every sparse sum of :mod:`sae.kernels` (the pairs e = (r_e, c_e) of an
Allocation, sorted by row, or regrouped by latent):

- :func:`sampled_dots`: out[e] = <a[r_e], b[c_e]> (+ bias[c_e]) -- the codes at the chosen pairs
  (a = x_c, b = W_enc^T) and the decoder's gradient w.r.t. the codes (a = dL/dx_hat, b = W_dec).
  One program takes BLOCK_E pairs and walks d in BLOCK_D slices, reading rows of a and b coalesced
  and accumulating in float32 (torch's CSR ``sampled_addmm`` is the fallback).
- :func:`segment_sum`: out[s] = sum over segment s of w[e] * table[idx[e]] -- the decoder
  (segments = tokens) and the weight gradients (segments = latents). One program per (segment,
  BLOCK_D slice of the output row); ``F.embedding_bag`` is the fallback.

Used whenever Triton imports and the tensors are on a CUDA device (``WORKBENCH_TRITON=0`` turns them off, a
list such as ``dots`` picks). On an H200 they were 1.05-1.16x faster than torch's ``embedding_bag`` / CSR
``sampled_addmm`` at the first of issue 14's shapes and as fast at the other two, and cuSPARSE's sampled
product once ran 7x slower than usual (15.5 ms a call at 2048 / 65536 / k 64 / 8192), which the Triton
kernel was not seen to do (docs/sae.md). ``TRITON_INTERPRET=1`` runs the same kernels on the CPU, which is how
tests/sae/test_triton_ops.py checks them against the torch path without a GPU.
"""

from __future__ import annotations

import os

import torch
from torch import Tensor

from workbench.triton_env import on_kernel_device, tl, triton

KINDS = ("dots", "bag")
_env = os.environ.get("WORKBENCH_TRITON", "1")
# which kernels run in Triton on a GPU: WORKBENCH_TRITON=1 (both, the default), 0 (none: torch's
# embedding_bag and sampled_addmm) or a list such as "dots"
KERNELS = set(KINDS) if _env == "1" else set() if _env == "0" else {k for k in _env.split(",") if k in KINDS}


def usable(t: Tensor, kind: str) -> bool:
    """Whether the Triton kernel `kind` runs for tensors like t (CUDA, or the interpreter on the CPU)."""
    return kind in KERNELS and on_kernel_device(t)


if triton is not None:

    @triton.jit
    def _sampled_dots_kernel(a_ptr, b_ptr, rows_ptr, cols_ptr, bias_ptr, out_ptr, nnz, stride_a, stride_b, d: tl.constexpr,
                             HAS_BIAS: tl.constexpr, BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        e = tl.program_id(0) * BLOCK_E + tl.arange(0, BLOCK_E)  # (BLOCK_E,) pair indices
        live = e < nnz
        r = tl.load(rows_ptr + e, mask=live, other=0).to(tl.int64)
        c = tl.load(cols_ptr + e, mask=live, other=0).to(tl.int64)
        acc = tl.zeros((BLOCK_E,), dtype=tl.float32)
        for d0 in range(0, d, BLOCK_D):
            j = d0 + tl.arange(0, BLOCK_D)
            m = live[:, None] & (j < d)[None, :]
            av = tl.load(a_ptr + r[:, None] * stride_a + j[None, :], mask=m, other=0.0)  # (BLOCK_E, BLOCK_D)
            bv = tl.load(b_ptr + c[:, None] * stride_b + j[None, :], mask=m, other=0.0)
            acc += tl.sum(av.to(tl.float32) * bv.to(tl.float32), axis=1)
        if HAS_BIAS:
            acc += tl.load(bias_ptr + c, mask=live, other=0.0).to(tl.float32)
        tl.store(out_ptr + e, acc, mask=live)

    @triton.jit
    def _segment_sum_kernel(idx_ptr, w_ptr, table_ptr, starts_ptr, ends_ptr, out_ptr, stride_t, stride_o, d: tl.constexpr,
                            BLOCK_E: tl.constexpr, BLOCK_D: tl.constexpr):
        s = tl.program_id(0)  # segment
        j = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)  # (BLOCK_D,) output columns
        mj = j < d
        start = tl.load(starts_ptr + s)
        end = tl.load(ends_ptr + s)
        acc = tl.zeros((BLOCK_D,), dtype=tl.float32)
        for e0 in range(start, end, BLOCK_E):
            e = e0 + tl.arange(0, BLOCK_E)
            me = e < end
            i = tl.load(idx_ptr + e, mask=me, other=0).to(tl.int64)
            w = tl.load(w_ptr + e, mask=me, other=0.0).to(tl.float32)
            t = tl.load(table_ptr + i[:, None] * stride_t + j[None, :], mask=me[:, None] & mj[None, :], other=0.0)
            acc += tl.sum(t.to(tl.float32) * w[:, None], axis=0)
        tl.store(out_ptr + s * stride_o + j, acc, mask=mj)


def _rowmajor(t: Tensor) -> Tensor:
    """t with unit stride along its last dimension (rows read coalesced)."""
    return t if t.stride(-1) == 1 else t.contiguous()


def sampled_dots(a: Tensor, b: Tensor, rows: Tensor, cols: Tensor, bias: Tensor | None = None,
                 block_e: int = 64, block_d: int = 64) -> Tensor:
    """(nnz,) float32: <a[rows[e]], b[cols[e]]> (+ bias[cols[e]]); a: (N, d), b: (F, d)."""
    a, b = _rowmajor(a), _rowmajor(b)
    nnz, d = rows.numel(), a.shape[1]
    out = torch.empty(nnz, dtype=torch.float32, device=a.device)
    if nnz == 0:
        return out
    grid = (triton.cdiv(nnz, block_e),)
    _sampled_dots_kernel[grid](a, b, rows, cols, bias if bias is not None else out, out, nnz, a.stride(0), b.stride(0), d,
                               HAS_BIAS=bias is not None, BLOCK_E=block_e, BLOCK_D=block_d)
    return out


def segment_sum(idx: Tensor, table: Tensor, offsets: Tensor, weights: Tensor, total: int | None = None,
                block_e: int = 32, block_d: int = 128) -> Tensor:
    """(len(offsets), d) float32: out[s] = sum_{e in segment s} weights[e] * table[idx[e]].

    Segment s holds pairs offsets[s] .. offsets[s+1] (the last one ends at `total`, default idx.numel()),
    as ``F.embedding_bag(idx, table, offsets, mode="sum", per_sample_weights=weights)``."""
    table = _rowmajor(table)
    n_seg, d = offsets.numel(), table.shape[1]
    out = torch.empty(n_seg, d, dtype=torch.float32, device=table.device)
    if n_seg == 0:
        return out
    end = torch.full((1,), idx.numel() if total is None else total, dtype=offsets.dtype, device=offsets.device)
    ends = torch.cat([offsets[1:], end])
    grid = (n_seg, triton.cdiv(d, block_d))
    _segment_sum_kernel[grid](idx, weights, table, offsets, ends, out, table.stride(0), out.stride(0), d,
                              BLOCK_E=block_e, BLOCK_D=block_d)
    return out
