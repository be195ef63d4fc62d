"""MoE layers over any gate: experts, a MoE layer, a multi-gate MoE (one gate per task) and a MoE
feed-forward block that can replace a transformer MLP.

    y_n = sum_e w_{n,e} f_e(x_n)        over the gate's Allocation (dispatched pairs, values = w)

Experts are E two-layer MLPs with stacked weights W1 (E, d_in, h), W2 (E, h, d_out). Sparse dispatch
takes each expert's tokens from the Allocation's group-by-unit (``Allocation.by_unit``), runs the
expert once on them and scatters the weighted outputs back with index_add; when more than half of all
pairs are dispatched (soft DSelect-k / COMET / local-search phases) all experts run on all tokens with
one einsum instead.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput
from workbench.alloc import Allocation


class Experts(nn.Module):
    """E independent MLPs d_in -> hidden (ReLU) -> d_out."""

    def __init__(self, n_experts: int, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.n_experts = n_experts
        self.w1 = nn.Parameter(torch.empty(n_experts, d_in, d_hidden))
        self.b1 = nn.Parameter(torch.zeros(n_experts, d_hidden))
        self.w2 = nn.Parameter(torch.empty(n_experts, d_hidden, d_out))
        self.b2 = nn.Parameter(torch.zeros(n_experts, d_out))
        nn.init.uniform_(self.w1, -1 / math.sqrt(d_in), 1 / math.sqrt(d_in))
        nn.init.uniform_(self.w2, -1 / math.sqrt(d_hidden), 1 / math.sqrt(d_hidden))

    def expert(self, e: int, x: Tensor) -> Tensor:
        """f_e(x) for x (n, d_in) -> (n, d_out)."""
        return torch.relu(x @ self.w1[e] + self.b1[e]) @ self.w2[e] + self.b2[e]

    def dense(self, x: Tensor) -> Tensor:
        """All experts on all tokens: (N, d_in) -> (N, E, d_out)."""
        h = torch.relu(torch.einsum("nd,edh->neh", x, self.w1) + self.b1)
        return torch.einsum("neh,eho->neo", h, self.w2) + self.b2

    def pairs(self, x: Tensor, a: Allocation) -> Tensor:
        """f_{cols[i]}(x[rows[i]]) for each pair i of the allocation: (nnz, d_out), in a's pair order."""
        g = a.by_unit
        xs = x[g.rows].split(g.split_sizes())  # expert e's tokens, expert after expert
        out = torch.cat([self.expert(e, xe) for e, xe in enumerate(xs)])
        return torch.empty_like(out).index_copy(0, g.order, out)


def union(allocations: list[Allocation]) -> tuple[Allocation, list[Tensor]]:
    """The pairs dispatched by any of the allocations (sorted by row, then unit; values unused) and, for
    each allocation, its values on those pairs (nnz_union,), 0 where it did not dispatch (differentiable)."""
    if len(allocations) == 1:
        return allocations[0], [allocations[0].values]
    n, e = allocations[0].shape
    keys = [a.rows * e + a.cols for a in allocations]
    merged = torch.unique(torch.cat(keys))  # sorted: row-major
    u = Allocation(merged // e, merged % e, merged.new_zeros(0), (n, e))
    vals = [a.values.new_zeros(len(merged)).index_put((torch.searchsorted(merged, key),), a.values)
            for a, key in zip(allocations, keys)]
    return u, vals


def combine(experts: Experts, x: Tensor, routes: list[GateOutput]) -> list[Tensor]:
    """y_t = sum_e w^t_{n,e} f_e(x_n) for each gate output t, sharing expert evaluations across gates."""
    n, e = routes[0].allocation.shape
    u, weights = union([r.allocation for r in routes])
    if u.nnz > 0.5 * n * e:
        out = experts.dense(x)  # (N, E, d_out)
        return [torch.einsum("ne,neo->no", r.weights, out) for r in routes]
    out = experts.pairs(x, u)  # (nnz, d_out)
    return [out.new_zeros(n, out.shape[-1]).index_add(0, u.rows, w.unsqueeze(-1) * out) for w in weights]


class MoE(nn.Module):
    """One gate, E experts: x (N, d_in) -> y (N, d_out), GateOutput."""

    def __init__(self, gate: Gate, d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.gate = gate
        self.experts = Experts(gate.n_experts, d_in, d_hidden, d_out)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> tuple[Tensor, GateOutput]:
        route = self.gate(x, ids)
        return combine(self.experts, x, [route])[0], route


class MultiGateMoE(nn.Module):
    """Shared experts, one gate per task (MMoE; Ma et al. 2018): x -> [y_t (N, d_out)], [GateOutput_t]."""

    def __init__(self, gates: list[Gate], d_in: int, d_hidden: int, d_out: int):
        super().__init__()
        self.gates = nn.ModuleList(gates)
        self.experts = Experts(gates[0].n_experts, d_in, d_hidden, d_out)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> tuple[list[Tensor], list[GateOutput]]:
        routes = [g(x, ids) for g in self.gates]
        return combine(self.experts, x, routes), routes

    def set_progress(self, progress: float) -> None:
        for g in self.gates:
            g.set_progress(progress)


class MoEFeedForward(nn.Module):
    """Drop-in replacement for a transformer MLP: (..., d_model) -> (..., d_model), tokens routed
    independently. The last GateOutput and its aux loss are kept on the module for the trainer.

    ``token_ids`` (..., same leading shape as x), when set by the caller before the forward pass, are
    handed to the gate as ids (the hash gate hashes them; learned gates ignore them)."""

    def __init__(self, gate: Gate, d_model: int, d_hidden: int):
        super().__init__()
        self.moe = MoE(gate, d_model, d_hidden, d_model)
        self.last_route: GateOutput | None = None
        self.token_ids: Tensor | None = None

    def forward(self, x: Tensor) -> Tensor:
        flat = x.reshape(-1, x.shape[-1])
        ids = None
        if self.token_ids is not None:
            if self.token_ids.shape != x.shape[:-1]:
                raise ValueError(f"token_ids {tuple(self.token_ids.shape)} do not match the tokens {tuple(x.shape[:-1])}")
            ids = self.token_ids.reshape(-1)
        y, self.last_route = self.moe(flat, ids)
        return y.view_as(x)

    def aux_loss(self) -> Tensor:
        return self.last_route.aux_loss() if self.last_route is not None else torch.zeros(())
