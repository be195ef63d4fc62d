"""Sparse encoder/decoder kernels: after the one dense encoder matmul, touch only active pairs.

An :class:`~workbench.alloc.Allocation` lists the nnz active (token, latent) pairs of a batch,
sorted by token. With it, a training step costs one dense ``N x d_in x d_sae`` matmul plus
``O(nnz * d_in)`` work, instead of three dense matmuls (forward, two backward) of that size:

forward
    values[e] = ReLU(pre[r_e, c_e])                       (already computed by the dense matmul)
    x_hat[r]  = sum_{e: r_e = r} values[e] * W_dec[c_e]    (embedding_bag over each token's pairs)
backward (g_hat = dL/dx_hat, g = dL/dvalues masked by values > 0)
    dL/dvalues[e] = <g_hat[r_e], W_dec[c_e]>              (sampled dense-dense product, CSR)
    dL/dW_dec[c]  = sum_{e: c_e = c} values[e] * g_hat[r_e]  (embedding_bag over each latent's pairs)
    dL/dx_c[r]    = sum_{e: r_e = r} g[e] * W_enc[:, c_e]   (embedding_bag over each token's pairs)
    dL/dW_enc[:, c] = sum_{e: c_e = c} g[e] * x_c[r_e]      (embedding_bag over each latent's pairs)
    dL/db_enc[c]  = sum_{e: c_e = c} g[e]

All four sums are ``F.embedding_bag(indices, table, offsets, per_sample_weights)``: gather rows of a
table and add them with weights, bag by bag, without materialising the (nnz, d_in) product.
Same idea as EleutherAI sparsify's fused encoder (one custom autograd.Function per step of the
SAE); our own code. :func:`decode_dense` / ``codes @ W_dec`` in ``sae.model`` is the dense
reference the tests compare against.
"""

from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench.alloc import Allocation

from sae import triton_ops


class Plan:
    """Index bookkeeping for one Allocation, shared by the encoder and decoder kernels.

    rows, cols: (nnz,) sorted by row. Row-wise bags (for per-token sums) come straight from the
    Allocation; column-wise bags (per-latent sums) use its group-by-unit (``Allocation.by_unit``,
    one argsort of cols, computed lazily and only when a weight gradient needs it).
    """

    def __init__(self, alloc: Allocation):
        self.alloc = alloc
        self.rows, self.cols = alloc.rows, alloc.cols
        self.n_rows, self.n_units = alloc.shape
        counts = alloc.row_counts()  # (N,)
        ends = torch.cumsum(counts, 0)
        self.row_offsets = ends - counts  # (N,) start of each token's pairs
        self.crow = torch.cat([ends.new_zeros(1), ends])  # (N+1,) CSR row pointer

    @property
    def by_col(self) -> tuple[Tensor, Tensor, Tensor]:
        """(order, rows[order], col_offsets): the pairs regrouped latent by latent."""
        g = self.alloc.by_unit
        return g.order, g.rows, g.offsets


def _bag(indices: Tensor, table: Tensor, offsets: Tensor, weights: Tensor) -> Tensor:
    """out[b] = sum over bag b of weights[e] * table[indices[e]]  -> (len(offsets), table.shape[1])."""
    if triton_ops.usable(table, "bag") and table.dtype == weights.dtype == torch.float32:
        return triton_ops.segment_sum(indices, table, offsets, weights)
    return F.embedding_bag(indices, table.contiguous(), offsets, mode="sum", per_sample_weights=weights)


def sampled_dots(a: Tensor, b: Tensor, plan: Plan) -> Tensor:
    """out[e] = <a[r_e], b[c_e]> for every active pair; a: (N, d), b: (F, d) -> (nnz,)."""
    if triton_ops.usable(a, "dots") and a.dtype == b.dtype == torch.float32:
        return triton_ops.sampled_dots(a, b, plan.rows, plan.cols)
    if a.device.type in ("cpu", "cuda") and plan.rows.numel() > 0:
        with warnings.catch_warnings():  # "CSR support is in beta": we only use sampled_addmm
            warnings.simplefilter("ignore", UserWarning)
            pattern = torch.sparse_csr_tensor(plan.crow, plan.cols, a.new_zeros(plan.cols.numel()),
                                              (plan.n_rows, plan.n_units), check_invariants=False)
        return torch.sparse.sampled_addmm(pattern, a.contiguous(), b.t(), beta=0.0).values()
    return (a[plan.rows] * b[plan.cols]).sum(-1)


class _EncodeAt(torch.autograd.Function):
    """values = ReLU(x_c @ W_enc + b_enc) at the plan's pairs (forward values precomputed).

    With x_c = x - b_dec and x a constant (training data), pass x_c detached and b_dec separately:
    dL/db_dec = -sum_r dL/dx_c[r] = -W_enc @ dL/db_enc, a matrix-vector product instead of the
    (N, d_in) gather-sum over every token's pairs (and the transposed copy of W_enc it reads).
    """

    @staticmethod
    def forward(ctx, x_c: Tensor, W_enc: Tensor, b_enc: Tensor, values: Tensor, plan: Plan,
                b_dec: Tensor | None = None) -> Tensor:
        ctx.plan = plan
        ctx.save_for_backward(x_c, W_enc, values)
        return values.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        x_c, W_enc, values = ctx.saved_tensors
        plan: Plan = ctx.plan
        g = g * (values > 0)  # ReLU'(pre)  (nnz,)
        gx = gW = gb = gbd = None
        if ctx.needs_input_grad[0]:
            gx = _bag(plan.cols, W_enc.t(), plan.row_offsets, g)  # (N, d_in)
        if ctx.needs_input_grad[1]:
            order, rows_c, col_offsets = plan.by_col
            gW = _bag(rows_c, x_c, col_offsets, g[order]).t()  # (d_in, d_sae)
        if ctx.needs_input_grad[2] or ctx.needs_input_grad[5]:
            gb = torch.zeros(plan.n_units, dtype=g.dtype, device=g.device).index_add_(0, plan.cols, g)  # (d_sae,)
            if ctx.needs_input_grad[5]:
                gbd = -(W_enc @ gb)  # (d_in,)
        return gx, gW, gb if ctx.needs_input_grad[2] else None, None, None, gbd


class _DecodeAt(torch.autograd.Function):
    """x_hat[r] = sum of values[e] * W_dec[c_e] over token r's pairs (no bias)."""

    @staticmethod
    def forward(ctx, values: Tensor, W_dec: Tensor, plan: Plan) -> Tensor:
        ctx.plan = plan
        ctx.save_for_backward(values, W_dec)
        return _bag(plan.cols, W_dec, plan.row_offsets, values)  # (N, d_in)

    @staticmethod
    def backward(ctx, g_hat: Tensor):
        values, W_dec = ctx.saved_tensors
        plan: Plan = ctx.plan
        gv = gW = None
        if ctx.needs_input_grad[0]:
            gv = sampled_dots(g_hat, W_dec, plan)  # (nnz,)
        if ctx.needs_input_grad[1]:
            order, rows_c, col_offsets = plan.by_col
            gW = _bag(rows_c, g_hat, col_offsets, values[order])  # (d_sae, d_in)
        return gv, gW, None


def encode_at(x_c: Tensor, W_enc: Tensor, b_enc: Tensor, alloc: Allocation, plan: Plan,
              b_dec: Tensor | None = None) -> Tensor:
    """(nnz,) ReLU'd pre-activations at the allocation's pairs, differentiable w.r.t. x_c, W_enc, b_enc.

    b_dec: when x_c = x - b_dec for an x that needs no gradient, pass x_c detached and b_dec here: its
    gradient then costs one matrix-vector product (see _EncodeAt).

    alloc.values must hold the pre-activations ``(x_c @ W_enc + b_enc)[rows, cols]`` (as the
    allocation functions return them); only their ReLU is recomputed here. When they are of a lower
    precision than x_c (a bfloat16 selection, ``SAEConfig.precision``), the pre-activations at the
    pairs are recomputed in x_c's precision first: O(nnz d) work, so the codes are exact.
    """
    pre = alloc.values.detach()
    if pre.dtype != x_c.dtype:
        pre = sampled_dots(x_c.detach(), W_enc.detach().t(), plan) + b_enc.detach()[plan.cols]  # (nnz,)
    return _EncodeAt.apply(x_c, W_enc, b_enc, pre.relu(), plan, b_dec)


def decode_at(values: Tensor, W_dec: Tensor, plan: Plan) -> Tensor:
    """(N, d_in) sum over each token's active pairs of value * decoder row (no bias)."""
    return _DecodeAt.apply(values, W_dec, plan)


def decode_dense(values: Tensor, W_dec: Tensor, alloc: Allocation) -> Tensor:
    """Reference: scatter values into an (N, d_sae) code matrix and multiply by W_dec."""
    codes = values.new_zeros(alloc.shape).index_put((alloc.rows, alloc.cols), values)  # (N, d_sae)
    return codes @ W_dec
