"""MoE layers over any gate: experts, a MoE layer, a multi-gate MoE (one gate per task) and a MoE
feed-forward block that can replace a transformer MLP.

    y_n = sum_e w_{n,e} f_e(x_n)        over the gate's dispatch mask (N, E)

Experts are E two-layer MLPs with stacked weights W1 (E, d_in, h), W2 (E, h, d_out). Sparse dispatch
gathers each expert's tokens (pairs sorted by expert) and scatters the weighted outputs back with
index_add; when the mask is dense (soft DSelect-k / COMET / local-search phases) all experts run on
all tokens with one einsum.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput


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

    def pairs(self, x: Tensor, rows: Tensor, cols: Tensor) -> Tensor:
        """f_{cols[i]}(x[rows[i]]) for each dispatched pair: (nnz, d_out)."""
        order = torch.argsort(cols, stable=True)
        counts = torch.bincount(cols, minlength=self.n_experts).tolist()
        xs = x[rows[order]].split(counts)
        out = torch.cat([self.expert(e, xe) for e, xe in enumerate(xs)])
        return torch.empty_like(out).index_copy(0, order, out)


def combine(experts: Experts, x: Tensor, routes: list[GateOutput]) -> list[Tensor]:
    """y_t = sum_e w^t_{n,e} f_e(x_n) for each gate output t, sharing expert evaluations across gates."""
    n, e = routes[0].mask.shape
    union = routes[0].mask
    for r in routes[1:]:
        union = union | r.mask
    if union.sum() > 0.5 * n * e:
        out = experts.dense(x)  # (N, E, d_out)
        return [torch.einsum("ne,neo->no", r.weights, out) for r in routes]
    rows, cols = torch.nonzero(union, as_tuple=True)
    out = experts.pairs(x, rows, cols)  # (nnz, d_out)
    ys = []
    for r in routes:
        w = r.weights[rows, cols].unsqueeze(-1)
        ys.append(out.new_zeros(n, out.shape[-1]).index_add(0, rows, w * out))
    return ys


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
