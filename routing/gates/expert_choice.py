"""Expert Choice gate (Zhou et al. 2022): each expert takes its top-c tokens.

    probs = softmax(W x) over experts   (N, E)
    c = ceil(capacity_factor * N * k / E)   (same compute as token-choice top-k; workbench.alloc.budget_capacity)
    support = top-c tokens per expert (workbench.alloc.topk_per_col); weights = probs on the support
A token may get 0..E experts; every expert gets exactly c tokens (perfect balance by construction).
"""

from __future__ import annotations

from torch import Tensor, nn

from routing.gate import Gate, GateOutput, RoutingShapeError, router_z_loss, routing_metrics
from workbench.alloc import budget_capacity, topk_per_col


class ExpertChoiceGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, capacity_factor: float = 1.0, z_coef: float = 0.001):
        super().__init__(d_in, n_experts, k)
        self.router = nn.Linear(d_in, n_experts, bias=False)
        self.capacity_factor, self.z_coef = capacity_factor, z_coef

    def check_tokens(self, n_tokens: int) -> None:
        if n_tokens < self.n_experts:
            raise RoutingShapeError(
                f"expert-choice routes {n_tokens} tokens to {self.n_experts} experts: every expert must pick at "
                f"least one token, so a batch needs at least as many tokens as experts; raise the batch size "
                f"to {self.n_experts} or more, or use fewer experts")

    def capacity(self, n_tokens: int) -> int:
        """c = ceil(cf * N * k / E), at most N."""
        return min(n_tokens, budget_capacity(self.k, n_tokens, self.n_experts, self.capacity_factor))

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        self.check_tokens(x.shape[0])
        logits = self.router(x)
        probs = logits.softmax(-1)
        a = topk_per_col(probs, self.capacity(x.shape[0]))  # values = probs on the support
        return GateOutput(a, {"z_loss": router_z_loss(logits, self.z_coef)}, routing_metrics(a))
