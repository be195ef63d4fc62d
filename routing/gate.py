"""The Gate interface: x (N, d) -> GateOutput(allocation, aux_losses, metrics).

The allocation (``workbench.alloc.Allocation``: rows = tokens, units = experts, values = combine
weights) is what flows on, unchanged, into expert dispatch (``routing.moe``), expert parallelism
(``routing.dist``) and a routed SAE; a dense (N, E) view is derived only where a picture or a metric
needs it (``GateOutput.weights`` / ``.mask``). A routed SAE uses a gate the same way with its expert
sub-dictionaries as the units (tokens x experts; expert e owns a slice of latents).

Shared pieces every gate uses: routing metrics (per-expert load, dropped tokens, entropy), the Switch
load-balancing loss and the ST-MoE router z-loss, and the one-line error for shapes a gate cannot route.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from workbench.alloc import Allocation
from workbench.errors import WorkbenchError


class RoutingShapeError(WorkbenchError, ValueError):
    """A gate cannot route this many tokens to this many experts; the message names the fix."""


@dataclass
class GateOutput:
    """What a gate hands to a MoE layer for N tokens and E experts."""

    allocation: Allocation  # dispatched (token, expert) pairs sorted by token; values = combine weights >= 0,
    #                         each token's summing to <= 1 (differentiable)
    aux_losses: dict[str, Tensor] = field(default_factory=dict)  # scalars added to the task loss
    metrics: dict[str, Tensor] = field(default_factory=dict)  # detached, for logging

    @property
    def weights(self) -> Tensor:
        """(N, E) dense combine weights, zero off the dispatch support (for pictures and metrics)."""
        return self.allocation.dense()

    @property
    def mask(self) -> Tensor:
        """(N, E) bool dispatch support (for pictures and metrics)."""
        return self.allocation.mask()

    def aux_loss(self) -> Tensor:
        """Sum of the aux losses (0 when there are none)."""
        total = self.allocation.values.new_zeros(())
        for v in self.aux_losses.values():
            total = total + v
        return total


class Gate(nn.Module):
    """Base class: subclasses implement ``forward(x, ids=None) -> GateOutput``.

    ids (N,) are optional integer token ids (used by the hash gate; ignored by learned gates).
    ``set_progress(p)`` receives the training progress in [0, 1] for gates with schedules.
    ``check_tokens(n)`` raises RoutingShapeError when the gate cannot route n tokens at once.
    """

    def __init__(self, d_in: int, n_experts: int, k: int):
        super().__init__()
        self.d_in, self.n_experts, self.k = d_in, n_experts, k

    def set_progress(self, progress: float) -> None:  # noqa: B027 - optional hook
        pass

    def check_tokens(self, n_tokens: int) -> None:  # noqa: B027 - token-choice gates route any N >= 1
        if n_tokens < 1:
            raise RoutingShapeError(f"{type(self).__name__} got no tokens to route; pass a non-empty batch")

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:  # pragma: no cover
        raise NotImplementedError


def routing_metrics(a: Allocation) -> dict[str, Tensor]:
    """Per-expert load (tokens routed to each expert), its coefficient of variation, the fraction of
    tokens routed nowhere, mean experts per token and the mean entropy of the token weights."""
    with torch.no_grad():
        n, e = a.shape
        dtype = a.values.dtype
        load = a.col_counts().to(dtype)  # (E,)
        per_token = a.row_counts().to(dtype)  # (N,)
        w = a.values.detach()
        w = w / a.with_values(w).row_sums().clamp(min=1e-12)[a.rows]  # (nnz,) each token's weights sum to 1
        ent = -(w * w.clamp(min=1e-12).log()).sum() / max(n, 1)
        return {
            "load": load,
            "load_cv": load.std(unbiased=False) / load.mean().clamp(min=1e-12),
            "frac_dropped": (per_token == 0).to(dtype).mean(),
            "experts_per_token": per_token.mean(),
            "weight_entropy": ent / math.log(max(e, 2)),
        }


def switch_balance_loss(probs: Tensor, a: Allocation, coef: float) -> Tensor:
    """Switch Transformer balance loss coef * E * sum_i f_i P_i.

    f_i = share of dispatched (token, expert) pairs that go to expert i (non-differentiable),
    P_i = mean router probability of expert i; equals coef when routing is uniform."""
    e = probs.shape[1]
    f = a.col_counts().to(probs.dtype)
    f = f / f.sum().clamp(min=1)
    return coef * e * (f.detach() * probs.mean(0)).sum()


def router_z_loss(logits: Tensor, coef: float) -> Tensor:
    """ST-MoE router z-loss coef * mean_n logsumexp(logits_n)^2 (keeps router logits small)."""
    return coef * torch.logsumexp(logits, dim=-1).pow(2).mean()
