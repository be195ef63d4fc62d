"""Expert Choice gate (Zhou et al. 2022): each expert takes its top-c tokens.

    probs = softmax(W x) over experts   (N, E)
    c = ceil(capacity_factor * N * k / E)   (same compute as token-choice top-k)
    support = top-c tokens per expert (workbench.alloc.topk_per_col); weights = probs on the support
A token may get 0..E experts; every expert gets exactly c tokens (perfect balance by construction).
"""

from __future__ import annotations

import math

from torch import Tensor, nn

from routing.gate import Gate, GateOutput, router_z_loss, routing_metrics
from workbench.alloc import topk_per_col


def expert_capacity(n_tokens: int, n_experts: int, k: int, capacity_factor: float) -> int:
    """c = ceil(cf * N * k / E), clipped to [1, N]."""
    return max(1, min(n_tokens, math.ceil(capacity_factor * n_tokens * k / n_experts)))


class ExpertChoiceGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, capacity_factor: float = 1.0, z_coef: float = 0.001):
        super().__init__(d_in, n_experts, k)
        self.router = nn.Linear(d_in, n_experts, bias=False)
        self.capacity_factor, self.z_coef = capacity_factor, z_coef

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        logits = self.router(x)
        probs = logits.softmax(-1)
        cap = expert_capacity(x.shape[0], self.n_experts, self.k, self.capacity_factor)
        alloc = topk_per_col(probs, cap)
        weights, mask = alloc.dense(), alloc.mask()
        return GateOutput(weights, mask, {"z_loss": router_z_loss(logits, self.z_coef)},
                          routing_metrics(weights, mask))
