"""Multi-task MoE models for the routing benchmarks.

    inputs -> x (N, d_in): categorical features embedded and concatenated (MovieLens) or dense features
    x -> MultiGateMoE (one gate per task, shared experts; a single gate for the planted task); with local
         search the task gates share one learned expert permutation, as in the authors' MovieLens model
      -> per-task tower (Linear-ReLU-Linear) -> prediction per task
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from routing.config import GateConfig
from routing.gate import GateOutput
from routing.gates import make_gate, make_permutation
from routing.moe import MultiGateMoE


class MultiTaskMoE(nn.Module):
    def __init__(self, d_features: int, n_tasks: int, gate_cfg: GateConfig, d_hidden: int = 32, d_expert_out: int = 16,
                 cardinalities: list[int] | None = None, d_emb: int = 16, shared_gate: bool = False, seed: int = 0):
        super().__init__()
        self.embs = nn.ModuleList(nn.Embedding(c, d_emb) for c in (cardinalities or []))
        d_in = d_emb * len(self.embs) if self.embs else d_features
        n_gates = 1 if shared_gate else n_tasks
        shared = make_permutation(gate_cfg) if gate_cfg.local_search else None
        gates = [make_gate(gate_cfg, d_in, seed=12345 + seed * 100 + t, permutation=shared) for t in range(n_gates)]
        self.moe = MultiGateMoE(gates, d_in, d_hidden, d_expert_out)
        outs = [n_tasks] if shared_gate else [1] * n_tasks
        self.towers = nn.ModuleList(nn.Sequential(nn.Linear(d_expert_out, d_expert_out), nn.ReLU(),
                                                  nn.Linear(d_expert_out, o)) for o in outs)

    def features(self, x: Tensor) -> Tensor:
        if not self.embs:
            return x
        return torch.cat([emb(x[:, j]) for j, emb in enumerate(self.embs)], -1)  # (N, d_emb * F)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> tuple[Tensor, list[GateOutput]]:
        """-> predictions (N, T), one GateOutput per gate."""
        ys, routes = self.moe(self.features(x), ids)
        return torch.cat([tower(y) for tower, y in zip(self.towers, ys)], -1), routes

    def set_progress(self, progress: float) -> None:
        self.moe.set_progress(progress)
