"""Sparsity-constrained OT router (Liu, Puigcerver & Blondel 2023), on routing.sparse_ot.

    S = softmax(W x) (no bias), cost = -S, tokens split into groups of G, one OT problem per group:
    orientation "tokens"  (tokens choose experts): rows = E experts, columns = G tokens, <= k experts
                          per token; marginals 1/E per expert, 1/G per token
    orientation "experts" (experts choose tokens): rows = G tokens, columns = E experts, <= capacity
                          c = ceil(cf * G * k / E) tokens per expert; marginals 1/G per token, 1/E per expert
    dispatch = support of the plan T; combine = S on the support ("scores", vmoe's default) or the
    plan rescaled to token mass 1 ("plan", differentiable through the implicit OT gradient).
Marginals are normalised to sum 1, so ot_gamma is relative to that scale (gamma -> 0: exact OT);
vmoe's setting (marginals 1 per token, gamma = 1) is ot_gamma = G here.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput, routing_metrics
from routing.sparse_ot import solve_sparse_ot
from workbench.alloc import Allocation, budget_capacity


class SparseOTGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, gamma: float = 1.0, orientation: str = "tokens",
                 combine: str = "scores", method: str = "bfgs", iters: int = 50, group: int = 512,
                 capacity_factor: float = 1.0, compile: str = "auto"):
        super().__init__(d_in, n_experts, k)
        self.router = nn.Linear(d_in, n_experts, bias=False)
        self.gamma, self.orientation, self.combine = gamma, orientation, combine
        self.method, self.iters, self.group, self.capacity_factor = method, iters, group, capacity_factor
        self.compile = {"on": True, "off": False}.get(compile, compile)  # "auto": large problems only
        self.last_plan: Tensor | None = None  # (G, E) plan of the first group of the last call, for the app

    def _expert_mass(self, g: int, like: Tensor) -> Tensor:
        """Row marginals (E,) of the tokens orientation: 1/E each, or, for k = 1 when E does not divide
        the group, whole-token counts floor/ceil(G/E) / G (k = 1 sends every token to one expert whole)."""
        e = self.n_experts
        if self.k > 1 or g % e == 0:
            return like.new_full((e,), 1 / e)
        counts = torch.full((e,), g // e, dtype=like.dtype, device=like.device)
        counts[: g % e] += 1
        return counts / g

    def _solve(self, scores: Tensor) -> tuple[Tensor, Tensor, dict]:
        """scores (B, G, E) -> plan-derived weights (B, G, E) with token mass 1, support (B, G, E)."""
        b, g, e = scores.shape
        cost = -scores
        if self.orientation == "tokens":
            res = solve_sparse_ot(cost.transpose(1, 2), self._expert_mass(g, scores), scores.new_full((g,), 1 / g),
                                  k=min(self.k, e), gamma=self.gamma, method=self.method, max_iter=self.iters,
                                  compile=self.compile)
            plan = res.plan.transpose(1, 2)  # (B, G, E)
        else:
            cap = min(g, budget_capacity(self.k, g, e, self.capacity_factor))
            res = solve_sparse_ot(cost, scores.new_full((g,), 1 / g), scores.new_full((e,), 1 / e),
                                  k=cap, gamma=self.gamma, method=self.method, max_iter=self.iters,
                                  compile=self.compile)
            plan = res.plan
        rows = e if self.orientation == "tokens" else g
        info = {"ot_row_error": res.row_error.max() * rows,  # relative to the row mass 1/rows
                "ot_iters": torch.tensor(float(res.n_iter))}
        return plan * g, plan > 0, info

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        n, e = x.shape[0], self.n_experts
        scores = self.router(x).softmax(-1)  # (N, E)
        g = min(self.group, n)
        parts, sizes = [], [g] * (n // g) + ([n % g] if n % g else [])
        start, infos = 0, []
        for size, count in _runs(sizes):
            chunk = scores[start:start + size * count].view(count, size, e)
            parts.append(self._solve(chunk))
            start += size * count
        plan = torch.cat([p.reshape(-1, e) for p, _, _ in parts])  # (N, E) dense: the solver's own output
        mask = torch.cat([m.reshape(-1, e) for _, m, _ in parts])
        self.last_plan = plan[:g].detach() / g
        rows, cols = torch.nonzero(mask, as_tuple=True)  # the plan's support, sorted by token
        weights = scores if self.combine == "scores" else plan
        a = Allocation(rows, cols, weights[rows, cols], (n, e))
        metrics = routing_metrics(a)
        for _, _, info in parts:
            for key, v in info.items():
                metrics[key] = torch.maximum(metrics.get(key, v), v).detach()
        return GateOutput(a, {}, metrics)


def _runs(sizes: list[int]) -> list[tuple[int, int]]:
    """[g, g, g, r] -> [(g, 3), (r, 1)]: groups of equal size are solved as one batch."""
    out: list[tuple[int, int]] = []
    for s in sizes:
        if out and out[-1][0] == s:
            out[-1] = (s, out[-1][1] + 1)
        else:
            out.append((s, 1))
    return out
