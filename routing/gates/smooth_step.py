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
    """S(t), as the cubic of u = clamp(t, -gamma/2, gamma/2) / gamma: u = -1/2 and 1/2 are exact in
    binary and give exactly 0 and 1, so saturated nodes are exactly hard (and get zero gradient)."""
    u = t.clamp(-gamma / 2, gamma / 2) / gamma
    return u * (1.5 - 2 * u * u) + 0.5


def entropy(p: Tensor, dim: int = -1) -> Tensor:
    """Shannon entropy of distributions p along dim (0 log 0 = 0)."""
    return -(p * p.clamp(min=1e-12).log()).sum(dim)
