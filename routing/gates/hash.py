"""Hash gate (Roller et al. 2021): a fixed, untrained token -> experts map.

With token ids (N,): scores = R[ids mod B] for a fixed random table R (B, E); without ids: a fixed
random projection of the features, scores = x P (a locality-sensitive hash). The k highest-scoring
experts get weight 1/k each (workbench.alloc.topk_per_row). No parameters, no aux losses.
"""

from __future__ import annotations

import torch
from torch import Tensor

from routing.gate import Gate, GateOutput, routing_metrics
from workbench.alloc import topk_per_row


class HashGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, buckets: int = 4096, seed: int = 12345):
        super().__init__(d_in, n_experts, k)
        gen = torch.Generator().manual_seed(seed)
        self.register_buffer("table", torch.rand(buckets, n_experts, generator=gen))  # (B, E)
        self.register_buffer("proj", torch.randn(d_in, n_experts, generator=gen))  # (d, E)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        if ids is not None:
            scores = self.table[ids.long() % self.table.shape[0]].to(x.dtype)
        else:
            scores = x.detach() @ self.proj.to(x.dtype)
        chosen = topk_per_row(scores, self.k)
        a = chosen.with_values(torch.full_like(chosen.values, 1 / self.k))
        return GateOutput(a, {}, routing_metrics(a))
