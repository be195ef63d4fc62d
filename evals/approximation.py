"""Approximation: is a dictionary's reconstruction enough for the model's behaviour? (paper Sec. 4.1)

Every function takes per-prompt logit differences ``LD = logit(IO) - logit(S)`` at END, shape
``(N,)``, from runs of the model on the eval prompts:

- ``ld_clean``: the unmodified model;
- ``ld_abl``: every location of the cross-section mean-ablated (``a -> mean(a)`` over train prompts);
- ``ld_recon``: every location replaced by the reconstruction ``a_hat``;
- ``ld_int``: every location replaced by ``mean(a) + (a - a_hat)`` (what the dictionary leaves out).

and activation-level metrics on ``a, a_hat: (N, d)`` and codes ``(N, n_features)``.
"""

from __future__ import annotations

import torch


def sufficiency(ld_clean: torch.Tensor, ld_recon: torch.Tensor) -> float:
    """Sufficiency = mean LD with ``a_hat`` patched in / mean clean LD (≈ 1 for a good dictionary).

    Makelov et al. 2024, Sec. 4.1: the reconstructions alone should reproduce the model's IOI behaviour.
    """
    return float(ld_recon.mean() / ld_clean.mean())


def necessity(ld_clean: torch.Tensor, ld_abl: torch.Tensor, ld_int: torch.Tensor) -> float:
    """Necessity = 1 - |LD_abl - LD_int| / |LD_abl - LD_clean| (≈ 1: removing ``a_hat`` acts like ablation).

    Makelov et al. 2024, Sec. 4.1: patch ``mean(a) + (a - a_hat)``, i.e. subtract what the dictionary
    explains; if the dictionary captured everything that matters the model behaves as under mean
    ablation (LD_int = LD_abl). Means over prompts are compared.
    """
    denom = float((ld_abl.mean() - ld_clean.mean()).abs())
    return float(1 - (ld_abl.mean() - ld_int.mean()).abs() / max(denom, 1e-9))


def ld_recovered(ld_clean: torch.Tensor, ld_abl: torch.Tensor, ld_recon: torch.Tensor) -> float:
    """LD recovered = (LD_recon - LD_abl) / (LD_clean - LD_abl): 1 = as clean, 0 = as mean ablation.

    The paper's approximation score for SAEs (Sec. 4.1), the logit-difference analogue of the "loss
    recovered" of SAE benchmarks.
    """
    denom = float(ld_clean.mean() - ld_abl.mean())
    return float((ld_recon.mean() - ld_abl.mean()) / (denom if abs(denom) > 1e-9 else 1e-9))


def fvu(a: torch.Tensor, a_hat: torch.Tensor) -> float:
    """Fraction of variance unexplained: sum ||a - a_hat||^2 / sum ||a - mean(a)||^2 over the task."""
    return float(((a - a_hat) ** 2).sum() / ((a - a.mean(0)) ** 2).sum().clamp_min(1e-12))


def l0(codes: torch.Tensor) -> float:
    """Mean number of nonzero codes per activation (N, n_features) -> float."""
    return float((codes != 0).float().sum(1).mean())


def shrinkage(a: torch.Tensor, a_hat: torch.Tensor) -> float:
    """Mean ||a_hat|| / ||a|| (SAEBench-style; < 1 means the dictionary shrinks activations)."""
    return float((a_hat.norm(dim=1) / a.norm(dim=1).clamp_min(1e-12)).mean())


def dead_fraction(codes: torch.Tensor) -> float:
    """Fraction of features never active on the task prompts."""
    return float(((codes != 0).sum(0) == 0).float().mean())
