"""The smooth-step function of DSelect-k and COMET (Hazimeh et al. 2020, 2021).

    S(t) = 0                                   if t <= -gamma/2
           1                                   if t >=  gamma/2
           -2 t^3 / gamma^3 + 3 t / (2 gamma) + 1/2   otherwise
C^1, and exactly 0 or 1 outside [-gamma/2, gamma/2], so trained selectors become exactly hard.
"""

from __future__ import annotations

import torch
from torch import Tensor


def smooth_step(t: Tensor, gamma: float) -> Tensor:
    inner = -2 * t.pow(3) / gamma**3 + 3 * t / (2 * gamma) + 0.5
    return torch.where(t <= -gamma / 2, torch.zeros_like(t), torch.where(t >= gamma / 2, torch.ones_like(t), inner))


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy of distributions p along dim (0 log 0 = 0)."""
    return -(p * p.clamp(min=1e-12).log()).sum(dim)
