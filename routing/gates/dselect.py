"""DSelect-k gate (Hazimeh et al. 2021): k differentiable selectors, each a binary code over log2(E) bits.

    z = Z x                     (N, k, B), B = log2 E bits per selector
    r_i(l) = prod_b [ S(z_ib) if bit b of l is 1 else 1 - S(z_ib) ]    (N, k, E), each r_i sums to 1
    alpha = softmax(A x)        (N, k) mixes the selectors
    weights = sum_i alpha_i r_i (N, E), on the simplex
    aux: entropy_reg * mean_N sum_i H(r_i)   (pushes every selector to a single expert)
Once every S is exactly 0/1 a token has at most k nonzero weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput, routing_metrics
from workbench.alloc import from_dense
from routing.gates.smooth_step import entropy, smooth_step


class DSelectKGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, gamma: float = 10.0, entropy_reg: float = 0.1):
        super().__init__(d_in, n_experts, k)
        self.bits = int(math.log2(n_experts))
        self.gamma, self.entropy_reg = gamma, entropy_reg
        self.codes = nn.Linear(d_in, k * self.bits)
        self.mix = nn.Linear(d_in, k)
        nn.init.uniform_(self.codes.weight, -gamma / 100, gamma / 100)
        nn.init.zeros_(self.codes.bias)
        bits = (torch.arange(n_experts)[:, None] >> torch.arange(self.bits - 1, -1, -1)[None, :]) & 1
        self.register_buffer("bit_table", bits.float())  # (E, B): bit b of expert l (MSB first)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        n = x.shape[0]
        s = smooth_step(self.codes(x).view(n, self.k, 1, self.bits), self.gamma)  # (N, k, 1, B)
        bits = self.bit_table.to(x.dtype)  # (E, B)
        r = (bits * s + (1 - bits) * (1 - s)).prod(-1)  # (N, k, E)
        alpha = self.mix(x).softmax(-1)  # (N, k)
        weights = torch.einsum("nk,nke->ne", alpha, r)
        a = from_dense(weights)  # the support where every tree/selector is hard is <= k per token
        aux = {"entropy": self.entropy_reg * entropy(r).sum(-1).mean()}
        metrics = routing_metrics(a)
        metrics["soft_selectors"] = ((s > 0) & (s < 1)).any(-1).to(x.dtype).mean()
        return GateOutput(a, aux, metrics)
