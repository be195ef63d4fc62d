"""Approximation: is a dictionary's reconstruction enough for the model's behaviour? (paper Sec. 4.1)

Every function takes per-prompt logit differences ``LD = logit(IO) - logit(S)`` at END, shape
``(N,)``, from runs of the model on the eval prompts:

- ``ld_clean``: the unmodified model;
- ``ld_abl``: every location of the cross-section mean-ablated (``a -> mean(a)``; the mean over the
  eval prompts, as the authors' notebooks do: ``get_dataset_mean`` of the eval activations feeds
  ``compute_mean_ablated_lds`` on the eval prompts);
- ``ld_recon``: every location replaced by the reconstruction ``a_hat``;
- ``ld_int``: every location replaced by ``mean(a) + (a - a_hat)`` (what the dictionary leaves out).

and activation-level metrics on ``a, a_hat: (N, d)`` and codes ``(N, n_features)``.

Each takes ``w`` (bootstrap weights, :mod:`evals.bootstrap`): ``None`` gives the value (a 0-d
tensor; ``float()`` it), a ``(B, N)`` weight matrix gives the ``B`` resampled values.
"""

from __future__ import annotations

import torch

from evals.bootstrap import wmean


def _ratio(num: torch.Tensor, den: torch.Tensor) -> torch.Tensor:
    """num / den, with den kept away from 0 (sign kept) so the ratio stays finite."""
    den = torch.where(den.abs() > 1e-9, den, torch.full_like(den, 1e-9))
    return num / den


def sufficiency(ld_clean: torch.Tensor, ld_recon: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Sufficiency = mean LD with ``a_hat`` patched in / mean clean LD (≈ 1 for a good dictionary).

    Makelov et al. 2024, Sec. 4.1: the reconstructions alone should reproduce the model's IOI behaviour.
    """
    return _ratio(wmean(ld_recon, w), wmean(ld_clean, w))


MIN_ABLATION_EFFECT = 0.1  # necessity is reported as informative only where mean ablation moves LD this much


def ablation_effect(ld_clean: torch.Tensor, ld_abl: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """(LD_clean - LD_abl) / LD_clean (means over prompts): how much mean-ablating the cross-section hurts.

    Necessity divides by |LD_abl - LD_clean|; where ablation barely moves LD (a cross-section that
    carries information the model has a backup for) that ratio is ill-conditioned and says nothing."""
    m_clean = wmean(ld_clean, w)
    return _ratio(m_clean - wmean(ld_abl, w), m_clean)


def necessity(ld_clean: torch.Tensor, ld_abl: torch.Tensor, ld_int: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Necessity = 1 - |LD_abl - LD_int| / |LD_abl - LD_clean| (≈ 1: removing ``a_hat`` acts like ablation).

    Makelov et al. 2024, Sec. 4.1: patch ``mean(a) + (a - a_hat)``, i.e. subtract what the dictionary
    explains; if the dictionary captured everything that matters the model behaves as under mean
    ablation (LD_int = LD_abl). Means over prompts are compared.
    """
    m_abl = wmean(ld_abl, w)
    return 1 - _ratio((m_abl - wmean(ld_int, w)).abs(), (m_abl - wmean(ld_clean, w)).abs())


def ld_recovered(ld_clean: torch.Tensor, ld_abl: torch.Tensor, ld_recon: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """LD recovered as the authors compute it: |LD_recon - LD_abl| / |LD_clean - LD_abl| (means over prompts).

    amakelov/sae, training.py, ``get_logitdiff_loss`` (its "score", despite the function's name): 1 =
    as clean, 0 = as mean ablation. The absolute value also scores 1 for a reconstruction that moves
    LD as far past the ablation in the wrong direction; :func:`ld_recovered_signed` tells them apart.
    """
    m_abl = wmean(ld_abl, w)
    return _ratio((wmean(ld_recon, w) - m_abl).abs(), (wmean(ld_clean, w) - m_abl).abs())


def ld_recovered_signed(ld_clean: torch.Tensor, ld_abl: torch.Tensor, ld_recon: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """(LD_recon - LD_abl) / (LD_clean - LD_abl): like :func:`ld_recovered`, negative when the
    reconstruction moves LD away from the clean value (the "loss recovered" of SAE benchmarks)."""
    m_abl = wmean(ld_abl, w)
    return _ratio(wmean(ld_recon, w) - m_abl, wmean(ld_clean, w) - m_abl)


def mean_of(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of a per-prompt quantity (mean LD, or accuracy of a 0/1 vector)."""
    return wmean(x, w)


def fvu(a: torch.Tensor, a_hat: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Fraction of variance unexplained: sum ||a - a_hat||^2 / sum ||a - mean(a)||^2 over the task."""
    a, a_hat = a.float(), a_hat.float()
    err = wmean(((a - a_hat) ** 2).sum(1), w)
    var = (wmean(a * a, w) - wmean(a, w) ** 2).sum(-1)  # sum over d of the (weighted) variance
    return err / var.clamp_min(1e-12)


def l0(codes: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean number of nonzero codes per activation (N, n_features)."""
    return wmean((codes != 0).float().sum(1), w)


def shrinkage(a: torch.Tensor, a_hat: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean ||a_hat|| / ||a|| (SAEBench-style; < 1 means the dictionary shrinks activations)."""
    return wmean(a_hat.norm(dim=1) / a.norm(dim=1).clamp_min(1e-12), w)


def dead_fraction(codes: torch.Tensor) -> float:
    """Fraction of features never active on the task prompts (no ±: a count over features, not prompts)."""
    return float(((codes != 0).sum(0) == 0).float().mean())


def keep_features(codes: torch.Tensor, features: torch.Tensor, bias: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    """Reconstruction from a subset of the features: ``bias + sum_{j in keep} f_j d_j`` -> (N, d).

    codes: (N, F); features: (F, d); bias: (d,); keep: (F,) bool. With ``keep`` = the interpretable
    features this is the reconstruction whose sufficiency and necessity the paper reports for
    interpretable features; with every feature kept it is the full reconstruction (so the two sit on
    one scale). The authors' ``keep_only_features`` / ``remove_features`` (amakelov/sae,
    sae_interventions.py) subtract the other / the chosen features' contributions from the
    activation itself, which also keeps the SAE's error term; here the error term is treated as the
    full reconstruction treats it (left out for sufficiency, kept for necessity).
    """
    return bias + (codes * keep.to(codes)).to(features) @ features
