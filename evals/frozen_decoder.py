"""The frozen-decoder comparison: does the SAE objective prefer the SAE's dictionary to the supervised one?

When an SAE occludes or over-splits an attribute (paper Sec. 5), either training missed the
supervised solution or the objective prefers what it found. The comparison freezes a decoder to the
supervised feature directions (the unit-normalised mean-dictionary vectors ``u_{i,v}``, one per
attribute value; ``b_dec`` = the mean activation) and asks how well it reconstructs the task
activations with k active codes, the SAE's own budget. If even the best k-sparse codes on the
supervised directions reconstruct *worse* than the SAE does, the reconstruction objective itself
favours the SAE's dictionary; if they reconstruct better, the SAE's training did not find them.

The authors' code has the setting (amakelov/sae, sae_variants.py ``VanillaAutoEncoder`` and
training.py ``train_vanilla`` take ``freeze_decoder``: the decoder keeps its rows and skips the
unit-norm step) but not the experiment. Instead of training an encoder against the frozen decoder
(whose result would depend on that training), the codes here are the best the decoder allows, found
by non-negative orthogonal matching pursuit (k greedy picks of the direction most aligned with the
residual, each followed by a least-squares refit of the picked codes, clamped at 0). A trained
encoder can only approach that, so "the SAE reconstructs better" is the conservative conclusion.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class FrozenDecoder:
    """A Dictionary: the given unit directions as decoder rows, codes by non-negative OMP with k picks."""

    decoder: torch.Tensor  # (F, d) unit rows
    b_dec: torch.Tensor  # (d,)
    k: int

    @property
    def features(self) -> torch.Tensor:
        return self.decoder

    def encode(self, a: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
        """(N, d) -> (N, F) non-negative codes with at most k nonzeros each."""
        return torch.cat([_nn_omp(a[i:i + chunk].to(self.decoder) - self.b_dec, self.decoder, self.k)
                          for i in range(0, len(a), chunk)]) if len(a) else a.new_zeros(0, len(self.decoder))

    def decode(self, codes: torch.Tensor) -> torch.Tensor:
        return self.b_dec + codes.to(self.decoder) @ self.decoder


def _nn_omp(x: torch.Tensor, dec: torch.Tensor, k: int) -> torch.Tensor:
    """Non-negative orthogonal matching pursuit of x: (N, d) on unit rows dec: (F, d) -> codes (N, F).

    A row with no direction left at a positive alignment picks the appended zero direction (index F),
    whose refit code is 0, so every row keeps the same number of picks.
    """
    n, f = len(x), len(dec)
    null = torch.cat([dec, torch.zeros(1, dec.shape[1], device=dec.device, dtype=dec.dtype)])  # (F + 1, d)
    rows = torch.arange(n, device=x.device)
    picked = torch.zeros(n, 0, dtype=torch.long, device=x.device)
    used = torch.zeros(n, f, dtype=torch.bool, device=x.device)
    coef = torch.zeros(n, 0, device=x.device, dtype=x.dtype)
    resid = x
    for _ in range(min(k, f)):
        score = (resid @ dec.T).masked_fill(used, float("-inf"))  # (N, F) alignment with the residual
        best, j = score.max(1)
        ok = best > 1e-9
        if not ok.any():
            break
        used[rows[ok], j[ok]] = True
        picked = torch.cat([picked, torch.where(ok, j, torch.full_like(j, f))[:, None]], 1)
        basis = null[picked]  # (N, s, d)
        gram = basis @ basis.transpose(1, 2) + 1e-6 * torch.eye(picked.shape[1], device=x.device, dtype=x.dtype)
        coef = torch.linalg.solve(gram, basis @ x[:, :, None])[:, :, 0].clamp_min(0)  # (N, s): refit, then >= 0
        resid = x - (coef[:, :, None] * basis).sum(1)
    codes = torch.zeros(n, f + 1, device=x.device, dtype=x.dtype)
    if picked.shape[1]:
        codes.scatter_add_(1, picked, coef)
    return codes[:, :f]


def frozen_decoder(acts: torch.Tensor, directions: torch.Tensor, k: int) -> FrozenDecoder:
    """The supervised directions (F, d) as a frozen decoder (normalised; zero rows dropped), b_dec = mean of acts (N, d)."""
    dirs = directions.float()
    dirs = dirs[dirs.norm(dim=1) > 1e-8]
    return FrozenDecoder(dirs / dirs.norm(dim=1, keepdim=True), acts.float().mean(0), k)
