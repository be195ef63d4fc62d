"""The Gate interface: x (N, d) -> GateOutput(weights (N, E), mask (N, E), aux_losses, metrics).

Shared pieces every gate uses: routing metrics (per-expert load, dropped tokens, entropy), the Switch
load-balancing loss and the ST-MoE router z-loss.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from workbench.alloc import Allocation


@dataclass
class GateOutput:
    """What a gate hands to a MoE layer for N tokens and E experts."""

    weights: Tensor  # (N, E) combine weights, zero off the dispatch mask, >= 0, each row sums to <= 1
    mask: Tensor  # (N, E) bool: which experts run on which token (the dispatch support)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # scalars added to the task loss
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached, for logging
    indices: Tensor | None = None  # (N, k) chosen experts, for gates with exactly k per token

    def allocation(self) -> Allocation:
        """The dispatch support as an Allocation (rows = tokens, cols = experts, values = weights)."""
        rows, cols = torch.nonzero(self.mask, as_tuple=True)
        return Allocation(rows, cols, self.weights[rows, cols], tuple(self.mask.shape))

    def aux_loss(self) -> Tensor:
        """Sum of the aux losses (0 when there are none)."""
        total = self.weights.new_zeros(())
        for v in self.aux_losses.values():
            total = total + v
        return total


class Gate(nn.Module):
    """Base class: subclasses implement ``forward(x, ids=None) -> GateOutput``.

    ids (N,) are optional integer token ids (used by the hash gate; ignored by learned gates).
    ``set_progress(p)`` receives the training progress in [0, 1] for gates with schedules.
    """

    def __init__(self, d_in: int, n_experts: int, k: int):
        super().__init__()
        self.d_in, self.n_experts, self.k = d_in, n_experts, k

    def set_progress(self, progress: float) -> None:  # noqa: B027 - optional hook
        pass

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:  # pragma: no cover
        raise NotImplementedError


def routing_metrics(weights: Tensor, mask: Tensor) -> dict[str, Tensor]:
    """Per-expert load (tokens routed to each expert), its coefficient of variation, the fraction of
    tokens routed nowhere, mean experts per token and the mean entropy of the token weights."""
    with torch.no_grad():
        load = mask.sum(0).to(weights.dtype)  # (E,)
        per_token = mask.sum(1).to(weights.dtype)  # (N,)
        w = weights / weights.sum(1, keepdim=True).clamp(min=1e-12)
        ent = -(w * w.clamp(min=1e-12).log()).sum(1).mean()
        return {
            "load": load,
            "load_cv": load.std(unbiased=False) / load.mean().clamp(min=1e-12),
            "frac_dropped": (per_token == 0).to(weights.dtype).mean(),
            "experts_per_token": per_token.mean(),
            "weight_entropy": ent / math.log(max(weights.shape[1], 2)),
        }


def switch_balance_loss(probs: Tensor, mask: Tensor, coef: float) -> Tensor:
    """Switch Transformer balance loss coef * E * sum_i f_i P_i.

    f_i = share of dispatched (token, expert) pairs that go to expert i (non-differentiable),
    P_i = mean router probability of expert i; equals coef when routing is uniform."""
    e = probs.shape[1]
    f = mask.to(probs.dtype).sum(0)
    f = f / f.sum().clamp(min=1)
    return coef * e * (f.detach() * probs.mean(0)).sum()


def router_z_loss(logits: Tensor, coef: float) -> Tensor:
    """ST-MoE router z-loss coef * mean_n logsumexp(logits_n)^2 (keeps router logits small)."""
    return coef * torch.logsumexp(logits, dim=-1).pow(2).mean()


def renormalize(weights: Tensor) -> Tensor:
    """Scale each row of (N, E) weights to sum 1 (rows of zeros stay zero)."""
    return weights / weights.sum(-1, keepdim=True).clamp(min=1e-12)
