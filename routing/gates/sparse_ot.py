"""Sparsity-constrained OT router (Liu, Puigcerver & Blondel 2023) with vmoe's conventions, on routing.sparse_ot.

As google-research/vmoe (projects/sparsity_constrained_ot/ksparse_projection_routing.py): scores
S = softmax(W x) (W without bias), cost = -S, tokens split into groups of G, one OT problem per group
with marginals 1 per token and G/E per expert, regularisation (gamma/2)||T||^2 with gamma = ot_gamma
(vmoe: 1). The solver works with any scale: the same plan comes from marginals summing to 1 with
gamma * G (routing.sparse_ot docstring), so ot_gamma = 1 here is what earlier versions of this gate
called ot_gamma = G.

    orientation "tokens"  (tokens choose experts): rows = E experts (mass G/E), columns = G tokens
        (mass 1), <= k nonzeros per token. Dispatch: each token's k largest plan entries, then at most
        C = ceil(capacity_factor * G * k / E) tokens per expert, first choices before second choices,
        earlier tokens first (vmoe's Top-Experts-Per-Item dispatcher, "vanilla" priority).
    orientation "experts" (experts choose tokens): rows = G tokens (mass 1), columns = E experts
        (mass G/E), <= C nonzeros per expert, C = ceil(capacity_factor * G * k / E) as a multiple of
        ot_capacity_multiple_of. Dispatch: each expert's C largest plan entries (vmoe's
        Top-Items-Per-Expert dispatcher).
    combine = S on the dispatched pairs ("scores", vmoe's default) or the plan ("plan": token mass 1,
        differentiable through the implicit OT gradient).

Capacities come from workbench.alloc.budget_capacity rounded up to a multiple of ot_capacity_multiple_of
(vmoe's compute_capacity uses 4). vmoe's capacity_factor C_v counts the k choices inside it (capacity =
ceil(C_v G / E) for experts-choose-tokens, ceil(C_v G k / E) for tokens-choose-experts); ours multiplies
by k in both, so vmoe's experts orientation with C_v is ours with capacity_factor = C_v / k.
Like vmoe, dispatch takes the top-k (top-C) entries of the plan even where some are 0 (a token whose plan
has fewer than k nonzeros still gets k experts); vmoe's top_k breaks those ties by expert index, we break
them by the score S, so no expert is favoured for its index.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput, RoutingShapeError, routing_metrics
from routing.sparse_ot import solve_sparse_ot
from workbench.alloc import Allocation, budget_capacity, drop_over_capacity, topk_per_col


class SparseOTGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, gamma: float = 1.0, orientation: str = "tokens",
                 combine: str = "scores", method: str = "bfgs", iters: int = 50, group: int = 512,
                 capacity_factor: float = 1.0, compile: str = "auto", capacity_multiple_of: int = 4):
        super().__init__(d_in, n_experts, k)
        self.router = nn.Linear(d_in, n_experts, bias=False)
        self.gamma, self.orientation, self.combine = gamma, orientation, combine
        self.method, self.iters, self.group, self.capacity_factor = method, iters, group, capacity_factor
        self.multiple_of = capacity_multiple_of
        self.compile = {"on": True, "off": False}.get(compile, compile)  # "auto": large problems only
        self.last_plan: Tensor | None = None  # (G, E) plan of the first group of the last call, for the app
        self.check_tokens(group)  # a full group must be routable: fail at construction, before training

    def capacity(self, g: int) -> int:
        """Tokens per expert in a group of g tokens: ceil(cf * g * k / E), a multiple of `multiple_of`, <= g."""
        return min(g, budget_capacity(self.k, g, self.n_experts, self.capacity_factor, self.multiple_of))

    def groups(self, n: int) -> list[int]:
        """Group sizes for n tokens: groups of `group`; a remainder too small to route joins the last group."""
        g = min(self.group, n)
        sizes = [g] * (n // g)
        rest = n - g * len(sizes)
        if rest:
            if self._routable(rest) or not sizes:
                sizes.append(rest)
            else:
                sizes[-1] += rest
        return sizes

    def _routable(self, g: int) -> bool:
        if self.orientation == "tokens":  # every expert needs mass: g tokens reach at most g k experts
            return g * min(self.k, self.n_experts) >= self.n_experts
        return self.n_experts * self.capacity(g) >= g  # every token needs mass: E experts take <= C each

    def check_tokens(self, n_tokens: int) -> None:
        super().check_tokens(n_tokens)
        g = self.groups(n_tokens)[0]
        if self._routable(g):
            return
        if self.orientation == "tokens":
            raise RoutingShapeError(
                f"sparse-ot (tokens orientation) cannot give all {self.n_experts} experts their share from "
                f"{g} tokens with k = {self.k} ({g * self.k} slots); route at least "
                f"{-(-self.n_experts // self.k)} tokens at once (raise --ot-group / the batch) or raise --k")
        raise RoutingShapeError(
            f"sparse-ot (experts orientation): {self.n_experts} experts x capacity {self.capacity(g)} cannot take "
            f"all {g} tokens of a group; raise --capacity-factor to {1 / self.k:.3g} or more (capacity x experts "
            f">= tokens)")

    def _expert_mass(self, g: int, like: Tensor) -> Tensor:
        """Expert marginals (E,): g/E each, or, for k = 1 when E does not divide g, whole-token counts
        floor/ceil(g/E) (k = 1 sends every token to one expert whole)."""
        e = self.n_experts
        if self.k > 1 or g % e == 0:
            return like.new_full((e,), g / e)
        counts = torch.full((e,), g // e, dtype=like.dtype, device=like.device)
        counts[: g % e] += 1
        return counts

    def _solve(self, scores: Tensor) -> tuple[Tensor, dict]:
        """scores (B, G, E) -> the plan (B, G, E) in vmoe's units (token mass 1) and solver metrics."""
        b, g, e = scores.shape
        cost = -scores
        tokens, experts = scores.new_ones(g), self._expert_mass(g, scores)
        if self.orientation == "tokens":  # rows = experts, columns = tokens
            res = solve_sparse_ot(cost.transpose(1, 2), experts, tokens, k=min(self.k, e), gamma=self.gamma,
                                  method=self.method, max_iter=self.iters, compile=self.compile)
            plan, row_mass = res.plan.transpose(1, 2), experts
        else:  # rows = tokens, columns = experts
            res = solve_sparse_ot(cost, tokens, experts, k=self.capacity(g), gamma=self.gamma,
                                  method=self.method, max_iter=self.iters, compile=self.compile)
            plan, row_mass = res.plan, tokens
        info = {"ot_row_error": res.row_error.max() / row_mass.min(),  # relative to a row's mass
                "ot_iters": torch.tensor(float(res.n_iter))}
        return plan, info

    def _dispatch(self, plan: Tensor, scores: Tensor, start: int) -> Allocation:
        """The pairs vmoe's dispatchers pick from one group's plan (G, E); rows offset by `start`."""
        g, e = plan.shape
        key = torch.where(plan > 0, plan + 2, scores - 2).detach()  # plan entries first, then zeros by score
        if self.orientation == "experts":
            a = topk_per_col(key, self.capacity(g))
            return Allocation(a.rows + start, a.cols, a.values, a.shape)
        k = min(self.k, e)
        idx = key.topk(k, dim=1, sorted=True).indices  # (G, k): first choice, second choice, ...
        rows = torch.arange(g, device=plan.device).repeat_interleave(k)
        rank = torch.arange(k, device=plan.device).repeat(g)
        a = drop_over_capacity(Allocation(rows, idx.reshape(-1), key[rows, idx.reshape(-1)], (g, e)), rank,
                               self.capacity(g))
        return Allocation(a.rows + start, a.cols, a.values, a.shape)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        n, e = x.shape[0], self.n_experts
        self.check_tokens(n)
        scores = self.router(x).softmax(-1)  # (N, E)
        plans, infos, start = [], [], 0
        for size, count in _runs(self.groups(n)):
            chunk = scores[start:start + size * count].view(count, size, e)
            plan, info = self._solve(chunk)
            plans.append(plan.reshape(-1, e))
            infos.append(info)
            start += size * count
        plan = torch.cat(plans)  # (N, E) dense: the solver's own output, token mass 1
        self.last_plan = plan[:self.groups(n)[0]].detach()
        parts, start = [], 0
        for size in self.groups(n):
            parts.append(self._dispatch(plan[start:start + size], scores[start:start + size], start))
            start += size
        rows, cols = torch.cat([p.rows for p in parts]), torch.cat([p.cols for p in parts])
        weights = scores if self.combine == "scores" else plan
        a = Allocation(rows, cols, weights[rows, cols], (n, e))
        metrics = routing_metrics(a)
        for info in infos:
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
