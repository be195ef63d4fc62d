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
uncovered). Such a token gets no gradient from the reconstruction, so nothing teaches any latent to
take it, and a loss that reconstructs it from latents it did not win (as aux_k does for dead latents)
lowers its own value without changing who wins. The coverage loss instead asks each uncovered token u
to clear the bar of the k latents it came closest to winning:
    bar_j  = the smallest pre-activation latent j selected in this batch (Feature Choice: per latent;
             Mutual Choice: one global bar), at least 0
    L_cover = sum_u sum_{j in top-k of pre_uj - bar_j} relu(bar_j - pre_uj) / (U k mean(selected values))
a hinge on the encoder only (W_enc, b_enc; decoder and b_dec untouched). It is 0 when every token has
a latent; the allocation itself and inference are unchanged (the SAE exports the same way).
"""

from __future__ import annotations

import math
from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

from workbench import alloc
from workbench.alloc import Allocation

from sae.kernels import Plan
from sae.model import SAE, SAEOutput


Denominator = Callable[[Tensor], Tensor]  # x -> the batch's sum |x - mean(x)|^2 (global over processes, over world)


def _variance_sum(x: Tensor, den: Denominator | None) -> Tensor:
    return (den(x) if den is not None else (x - x.mean(0)).pow(2).sum()).clamp_min(1e-12)


def fvu(x: Tensor, x_hat: Tensor, den: Denominator | None = None) -> Tensor:
    """Fraction of variance unexplained: sum |x - x_hat|^2 / sum |x - mean(x)|^2 over the batch.

    Data parallel: `den` returns the global batch's sum over the world size, so the mean of the ranks'
    values (and of their gradients, as DDP averages) is the one-process FVU of the global batch.
    """
    return (x - x_hat).pow(2).sum() / _variance_sum(x, den)


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


def aux_loss(sae: SAE, out: SAEOutput, weights: Tensor, k_aux: int, den: Denominator | None = None) -> Tensor:
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
    return (e_hat - e).pow(2).sum() / _variance_sum(e, den)


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


COVER_ROWS = 0.25  # on a GPU the coverage loss takes at most this share of the batch's tokens a step (cover_loss)


def cover_loss(sae: SAE, out: SAEOutput, k: int, fixed: bool | None = None) -> Tensor:
    """Hinge pulling each uncovered token over the bar of the k latents it came closest to winning.

    On a GPU at most ceil(COVER_ROWS * N) uncovered tokens take part in a step (the first ones of the
    shuffled batch): the loss then runs in a fixed-size slot, padded and masked, without reading the
    count back, which would stall the step. More are uncovered only early in training, and the rest
    are reached in later steps. On the CPU, where a read costs nothing, every uncovered token takes
    part; the two agree whenever at most that many tokens are uncovered. fixed: force one way (None: by device)."""
    n, f = out.alloc.shape
    pre = out.pre.detach()  # (N, d_sae)
    on = out.values.detach() > 0  # (nnz,) the pairs that fired
    sel = out.alloc.values.detach().to(pre.dtype)  # (nnz,) their pre-activations
    fired = sel.masked_fill(~on, float("inf"))  # (nnz,) inf where the pair did not fire
    if sae.threshold_kind == "global":  # one bar: a 0-d tensor that broadcasts
        bar = fired.min()
    else:  # per latent
        bar = torch.full_like(pre[0], float("inf")).scatter_reduce(0, out.alloc.cols, fired, "amin")
    bar = bar.nan_to_num(posinf=0.0).clamp_min(0)  # no bar beyond 0 where no pair fired
    if pre.is_cuda if fixed is None else fixed:  # fixed size: uncovered tokens first, then padding (token 0, masked)
        unc = out.l0() == 0  # (N,)
        cap = min(n, max(1, math.ceil(COVER_ROWS * n)))
        rows = alloc.nonzero_fixed(unc, cap)  # (U',) U' = cap
        live = torch.arange(cap, device=unc.device) < unc.sum()  # (U',) real uncovered tokens
    else:
        rows, live = uncovered(out), None  # (U',) U' = U, every uncovered token
    near = (pre[rows] - bar).topk(min(k, f), dim=1).indices  # (U', k) latents closest to winning
    w = F.embedding(near, sae.W_enc.t())  # (U', k, d_in) encoder columns; its backward is one scatter-add
    pre_rc = (w @ out.x_c.detach()[rows].unsqueeze(-1)).squeeze(-1) + sae.b_enc[near]  # (U', k), encoder only
    hinge = (bar[near] if bar.ndim else bar) - pre_rc  # (U', k)
    hinge = hinge.relu() if live is None else hinge.relu() * live.unsqueeze(1)
    n_live = max(1, rows.numel()) if live is None else live.sum().clamp_min(1)
    # mean over the tokens' k hinges, in units of the mean selected pre-activation (0 when nothing fired)
    n_on = on.sum()
    return hinge.sum() * n_on / (n_live * near.shape[1] * (sel * on).sum().clamp_min(1e-12))
