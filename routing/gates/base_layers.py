"""BASE layers (Lewis et al. 2021) and S-BASE (Clark et al. 2022): balanced assignment of tokens to experts.

BASE, training: k rounds of an exact balanced assignment. Each round assigns the N tokens to E experts
with at most c = ceil(N/E) tokens each (workbench.alloc.budget_capacity with k = 1), maximising the summed router logits (successive shortest
paths over the experts, routing/assignment.py, on the host: the indices come back to x's device;
the same optimum as scipy's linear_sum_assignment on experts replicated c times, ~40x faster at
N = 2048); experts taken in earlier rounds are excluded, so every token gets k distinct experts and
every expert gets exactly k N / E tokens when E divides N. Evaluation: greedy top-k (as in the paper).
S-BASE: the balanced plan exp(sinkhorn_log(logits)) (rows 1, columns N/E) replaces the assignment;
its top-k per token (workbench.alloc.topk_per_row) is the support, in training and evaluation.
Weights for both: softmax probabilities on the support (renormalised when k > 1), so the router
learns through them.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor, nn

from routing.assignment import balanced_assignment_ssp
from routing.gate import Gate, GateOutput, router_z_loss, routing_metrics
from workbench.alloc import Allocation, budget_capacity, topk_per_row
from workbench.simplex import sinkhorn_log


def balanced_assignment(scores: Tensor, exclude: Tensor | None = None) -> Tensor:
    """(N,) expert per token maximising sum of scores (N, E) with at most ceil(N/E) tokens per expert.

    Exact, by successive shortest paths over the experts (routing.assignment), on the host."""
    n, e = scores.shape
    s = scores.detach().double()
    if exclude is not None:
        s = s.masked_fill(exclude, -torch.inf)
    expert = balanced_assignment_ssp(s.cpu().numpy(), np.full(e, budget_capacity(1, n, e)))
    return torch.from_numpy(expert).to(scores.device)


class _BalancedGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, z_coef: float = 0.001):
        super().__init__(d_in, n_experts, k)
        self.router = nn.Linear(d_in, n_experts, bias=False)
        self.z_coef = z_coef

    def select(self, logits: Tensor) -> Allocation:
        raise NotImplementedError

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        logits = self.router(x)
        probs = logits.softmax(-1)
        chosen = self.select(logits)
        a = chosen.with_values(probs[chosen.rows, chosen.cols])
        if self.k > 1:
            a = a.normalized()
        return GateOutput(a, {"z_loss": router_z_loss(logits, self.z_coef)}, routing_metrics(a))


class BaseGate(_BalancedGate):
    def select(self, logits: Tensor) -> Allocation:
        if not self.training:
            return topk_per_row(logits, self.k)
        n = logits.shape[0]
        taken = torch.zeros_like(logits, dtype=torch.bool)
        cols = []
        for _ in range(self.k):
            e = balanced_assignment(logits, taken)  # (N,)
            taken[torch.arange(n, device=logits.device), e] = True
            cols.append(e)
        cols = torch.stack(cols, 1)  # (N, k)
        rows = torch.arange(n, device=logits.device).repeat_interleave(self.k)
        cols = cols.reshape(-1)
        return Allocation(rows, cols, logits[rows, cols], tuple(logits.shape))


class SBaseGate(_BalancedGate):
    def __init__(self, d_in: int, n_experts: int, k: int, sinkhorn_iters: int = 20, z_coef: float = 0.001):
        super().__init__(d_in, n_experts, k, z_coef)
        self.sinkhorn_iters = sinkhorn_iters

    def select(self, logits: Tensor) -> Allocation:
        with torch.no_grad():
            plan = sinkhorn_log(logits.detach(), n_iters=self.sinkhorn_iters)  # (N, E) log plan
        return topk_per_row(plan, self.k)
