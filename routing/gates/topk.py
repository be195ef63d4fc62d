"""Softmax Top-k gate (Shazeer et al. 2017; Switch/ST-MoE losses).

    logits = W x (+ eps * softplus(W_noise x), eps ~ N(0, 1), when noisy and training)   (N, E)
    probs = softmax(logits);  support = top-k of probs per token (workbench.alloc.topk_per_row)
    weights = probs on the support, renormalised to sum 1 when k > 1
    aux: Switch balance alpha * E * sum_i f_i P_i;  z-loss beta * mean(logsumexp(logits)^2)
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from routing.gate import Gate, GateOutput, router_z_loss, routing_metrics, switch_balance_loss
from workbench.alloc import topk_per_row


class TopKGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, noisy: bool = False, balance_coef: float = 0.01,
                 z_coef: float = 0.001):
        super().__init__(d_in, n_experts, k)
        self.router = nn.Linear(d_in, n_experts, bias=False)
        self.noise = nn.Linear(d_in, n_experts, bias=False) if noisy else None
        self.balance_coef, self.z_coef = balance_coef, z_coef

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        logits = self.router(x)  # (N, E)
        if self.noise is not None and self.training:
            logits = logits + torch.randn_like(logits) * F.softplus(self.noise(x))
        probs = logits.softmax(-1)
        chosen = topk_per_row(probs, self.k)  # values = probs on the support
        a = chosen.normalized() if self.k > 1 else chosen
        aux = {"balance": switch_balance_loss(probs, chosen, self.balance_coef),
               "z_loss": router_z_loss(logits, self.z_coef)}
        return GateOutput(a, aux, routing_metrics(a))
