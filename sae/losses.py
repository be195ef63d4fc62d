"""Training losses: reconstruction (FVU), L1 (relu-l1), the auxiliary losses aux_k and aux_zipf, and
the coverage loss.

All losses compare the input and its reconstruction in the space the SAE works in (``out.x_in``,
``out.x_hat_in``: per-token normalised for ``normalize="per_token"``). The auxiliary losses
reconstruct the main reconstruction's residual ``e = x - x_hat`` (detached) from latents the main
allocation neglects, so those latents receive gradient again:

aux_k (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", arXiv 2406.04093):
    e_hat = sum over the top-k_aux *dead* latents (by pre-activation) of ReLU(pre_i) W_dec[i]
    L_aux = |e - e_hat|^2 / |e - mean(e)|^2          (normalised MSE over the batch)
    total = L + aux_coeff * L_aux   (paper: aux_coeff = 1/32, k_aux = d_in / 2)

aux_zipf (ours: the Mutual/Feature Choice paper, arXiv 2411.02124, describes a Zipf-shaped loss
for "dying" as well as dead latents, but its exact definition could not be checked; this is our
generalisation of aux_k, see docs/sae.md):
    p_i   = usage of latent i (SAE.usage(): its running density; for Feature Choice, whose
            capacities fix the densities, its running share of the activation mass), sum_i p_i ~ k
    r_i   = rank of p_i (1 = most used);  t_i = c * r_i^-alpha with c such that sum_i t_i = k
    w_i   = 1 if latent i is dead (fired on none of the last dead_window tokens, the one definition
            of dead), else clamp((t_i - p_i) / t_i, 0, 1)   (0 at or above its target)
    e_hat = sum over the top-k_aux latents of w_i * pre_i of  w_i ReLU(pre_i) W_dec[i]
    L_aux as above.
With w_i = [dead_i] aux_zipf is exactly aux_k: both are :func:`aux_loss` with different weights.

coverage (ours, for Feature and Mutual Choice): a batch allocation over columns or over the whole
matrix can leave a token with no latent at all (uniform Feature Choice left ~20% of toy-ioi's tokens
uncovered). Such a token gets no encoder gradient, so nothing teaches any latent to win it. The
coverage loss gives each uncovered token its own top-k latents (by pre-activation, as TopK would)
and reconstructs its residual from them:
    L_cover = sum_{u uncovered} |e_u - e_hat_u|^2 / sum_u |e_u|^2,   total += cover_coeff * L_cover
so their pre-activations on these tokens rise until the allocation picks them. The allocation and
inference are unchanged (an SAE trained with it exports the same way).
"""

from __future__ import annotations

import torch
from torch import Tensor

from workbench import alloc
from workbench.alloc import Allocation

from sae.kernels import Plan
from sae.model import SAE, SAEOutput


def fvu(x: Tensor, x_hat: Tensor) -> Tensor:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the batch."""
    return (x - x_hat).pow(2).sum() / (x - x.mean(0)).pow(2).sum().clamp_min(1e-12)


def l1_penalty(out: SAEOutput) -> Tensor:
    """Mean over tokens of sum_i f_i (decoder rows have unit norm, so no |W_dec_i| factor)."""
    return out.values.sum() / out.alloc.shape[0]


def zipf_weights(density: Tensor, k: float, alpha: float = 1.0) -> Tensor:
    """(d_sae,) deficit weights w_i = clamp((t_i - p_i) / t_i, 0, 1) against the Zipf target t."""
    f = density.numel()
    order = torch.argsort(density, descending=True, stable=True)
    ranks = torch.empty_like(order)
    ranks[order] = torch.arange(1, f + 1, device=density.device)
    t = ranks.to(density).pow(-alpha)
    t = t * (k / t.sum())  # sum_i t_i = k (the mean L0)
    return ((t - density) / t).clamp(0, 1)


def aux_loss(sae: SAE, out: SAEOutput, weights: Tensor, k_aux: int) -> Tensor:
    """Normalised MSE of reconstructing e = x_in - x_hat_in (detached) from the top-k_aux latents of w * pre.

    weights: (d_sae,) in [0, 1]; only latents with w_i > 0 take part (0/1 dead mask = aux_k).
    """
    cand = torch.nonzero(weights > 0).squeeze(1)  # (n_cand,)
    if cand.numel() == 0:
        return out.x_in.new_zeros(())
    pre = out.pre.detach()  # (N, d_sae)
    scores = pre[:, cand] * weights[cand]  # (N, n_cand)
    sub = alloc.topk_per_row(scores, min(k_aux, cand.numel()))
    cols = cand[sub.cols]
    a = Allocation(sub.rows, cols, pre[sub.rows, cols], tuple(pre.shape))
    plan = Plan(a) if out.plan is not None else None
    values = sae.values_at(out.pre, out.x_c, a, plan) * weights[cols]  # (nnz,)
    e = (out.x_in - out.x_hat_in).detach()  # (N, d_in)
    e_hat = sae.decode_pairs(values, a, plan)
    return (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum().clamp_min(1e-12)


def aux_weights(kind: str, sae: SAE, dead_window: int) -> Tensor | None:
    """The latent weights of the configured auxiliary loss (None for --aux none)."""
    dead = sae.dead_mask(dead_window)
    if kind == "aux_k":
        return dead.to(sae.W_dec.dtype)
    if kind == "aux_zipf":
        return zipf_weights(sae.usage(), sae.cfg.k, sae.cfg.zipf_alpha).masked_fill(dead, 1.0)
    return None


def uncovered(out: SAEOutput) -> Tensor:
    """(n_uncovered,) tokens of the batch with no active latent."""
    return torch.nonzero(out.l0() == 0).squeeze(1)


def cover_loss(sae: SAE, out: SAEOutput, k: int) -> Tensor:
    """Reconstruct each uncovered token's residual from its own top-k latents (see the module docstring)."""
    rows = uncovered(out)  # (U,) sorted
    if rows.numel() == 0:
        return out.x_in.new_zeros(())
    pre = out.pre.detach()  # (N, d_sae)
    sub = alloc.topk_per_row(pre[rows], min(k, pre.shape[1]))  # rows index into `rows`
    r, c = rows[sub.rows], sub.cols
    a = Allocation(r, c, pre[r, c], tuple(pre.shape))
    plan = Plan(a) if out.plan is not None else None
    values = sae.values_at(out.pre, out.x_c, a, plan)  # (U * k,)
    e = (out.x_in - out.x_hat_in).detach()[rows]  # (U, d_in)
    e_hat = sae.decode_pairs(values, a, plan)[rows]
    return (e_hat - e).pow(2).sum() / e.pow(2).sum().clamp_min(1e-12)
