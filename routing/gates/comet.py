"""COMET gate (Ibrahim et al. 2023): k soft binary trees of depth log2(E) select k experts.

Tree j has E - 1 internal nodes in heap order (children of node i are 2i+1, 2i+2); node i routes left
with probability S(u_{j,i} . x) (smooth step). Leaf l's reach probability p_{j,l} is the product of
the branch probabilities on its root-to-leaf path (bits of l, MSB first; 0 = left). Leaf logits are
linear in x: o_{j,l} = w_{j,l} . x + c_{j,l}.

    g = softmax over all k * E values of (o_{j,l} + log p_{j,l})   (-inf where p = 0)
    weights_e = sum_j g_{j,e}                                      (N, E), on the simplex
    aux: entropy_reg * mean_N sum_j H(p_{j,.})

Init: node weights U(+-gamma/100), leaf weights U(+-0.05), leaf bias 0. When every tree is hard
(p_{j,.} one-hot) a token has at most k nonzero weights.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from routing.gate import Gate, GateOutput, routing_metrics
from routing.gates.smooth_step import entropy, smooth_step


def leaf_paths(n_experts: int) -> tuple[Tensor, Tensor]:
    """For each leaf l: the D = log2(E) internal nodes on its path (E, D) and directions (E, D), 1 = left."""
    depth = int(math.log2(n_experts))
    nodes = torch.zeros(n_experts, depth, dtype=torch.long)
    left = torch.zeros(n_experts, depth)
    for leaf in range(n_experts):
        node = 0
        for d in range(depth):
            bit = (leaf >> (depth - 1 - d)) & 1
            nodes[leaf, d], left[leaf, d] = node, 1.0 - bit
            node = 2 * node + 1 + bit
    return nodes, left


class CometGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, gamma: float = 10.0, entropy_reg: float = 0.1):
        super().__init__(d_in, n_experts, k)
        self.gamma, self.entropy_reg = gamma, entropy_reg
        self.nodes = nn.Linear(d_in, k * (n_experts - 1), bias=False)  # one hyperplane per tree per node
        self.leaves = nn.Linear(d_in, k * n_experts)  # one logit per tree per leaf
        nn.init.uniform_(self.nodes.weight, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.leaves.weight, -0.05, 0.05)
        nn.init.zeros_(self.leaves.bias)
        nodes, left = leaf_paths(n_experts)
        self.register_buffer("path_nodes", nodes)
        self.register_buffer("path_left", left)

    def reach_probabilities(self, x: Tensor) -> Tensor:
        """p (N, k, E): probability that tree j reaches leaf l."""
        n, e = x.shape[0], self.n_experts
        s = smooth_step(self.nodes(x).view(n, self.k, e - 1), self.gamma)  # (N, k, E-1) P(left)
        s_path = s[:, :, self.path_nodes]  # (N, k, E, D)
        left = self.path_left.to(x.dtype)
        return (left * s_path + (1 - left) * (1 - s_path)).prod(-1)

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        n, e = x.shape[0], self.n_experts
        p = self.reach_probabilities(x)  # (N, k, E)
        o = self.leaves(x).view(n, self.k, e)
        logp = torch.where(p > 0, p.clamp(min=1e-30).log(), torch.full_like(p, -torch.inf))
        g = (o + logp).view(n, self.k * e).softmax(-1).view(n, self.k, e)
        weights = g.sum(1)
        mask = weights > 0
        aux = {"entropy": self.entropy_reg * entropy(p).sum(-1).mean()}
        metrics = routing_metrics(weights, mask)
        metrics["soft_trees"] = ((p > 0) & (p < 1)).any(-1).to(x.dtype).mean()
        return GateOutput(weights, mask, aux, metrics)
