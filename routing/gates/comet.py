"""COMET gate (Ibrahim et al. 2023): k soft binary trees select k experts, for any number of experts E.

Each tree is the heap-ordered complete binary tree with E leaves, as in the authors' code: internal nodes
0..E-2 (children of node i are 2i+1 and 2i+2), every node index >= E-1 a leaf, experts = the leaves from
left to right. For E a power of 2 every leaf sits at depth log2 E; otherwise the leaves sit at two depths
(E = 12: 8 leaves at depth 4, 4 at depth 3), which is how the authors' recursion builds it.
Node i of tree j routes left with probability S(u_{j,i} . x + b_{j,i}) (smooth step of width gamma);
leaf l's reach probability p_{j,l} is the product of the branch probabilities on its root-to-leaf path.
Leaf logits are linear in x: o_{j,l} = w_{j,l} . x + c_{j,l}.

    g = softmax over all k * E values of (o_{j,l} + log p_{j,l})   (-inf where p = 0)
    weights_e = sum_j g_{j,e}                                      (N, E), on the simplex
    aux: entropy_reg * mean_N sum_j H(p_{j,.})

Init as the authors' TF code (mazumder-lab/COMET, model/gates/comet.py): node weights and biases
U(+-gamma/100), leaf weights and biases U(+-0.05) (Keras' RandomUniform default). When every tree is
hard (p_{j,.} one-hot) a token has at most k nonzero weights.

Two switches outside the authors' method: node_bias=False drops the node biases (the version before them,
for the ablation in docs/routing.md), and center_input=True subtracts a running mean of x (a BatchNorm
without scale, momentum 0.01; the batch mean in training, the running mean in evaluation) before the
trees, so that the node hyperplanes see centred inputs.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from routing.gate import Gate, GateOutput, routing_metrics
from routing.gates.smooth_step import smooth_step
from workbench.alloc import from_dense

DEAD_LOGP = -60.0  # a hard branch adds log(1e-30) = -69 to a path; live paths stay far above this


def leaf_paths(n_experts: int) -> list[list[tuple[int, bool]]]:
    """Root-to-leaf path of each expert (leaves left to right) as [(internal node, goes left), ...]."""
    paths: list[list[tuple[int, bool]]] = []

    def walk(node: int, path: list[tuple[int, bool]]) -> None:
        if node >= n_experts - 1:  # a leaf
            paths.append(path)
            return
        walk(2 * node + 1, path + [(node, True)])
        walk(2 * node + 2, path + [(node, False)])

    walk(0, [])
    return paths


class CometGate(Gate):
    def __init__(self, d_in: int, n_experts: int, k: int, gamma: float = 10.0, entropy_reg: float = 0.1,
                 node_bias: bool = True, center_input: bool = False):
        super().__init__(d_in, n_experts, k)
        if n_experts < 2:
            raise ValueError(f"COMET needs at least 2 experts (a tree with one split), got {n_experts}")
        self.gamma, self.entropy_reg = gamma, entropy_reg
        self.nodes = nn.Linear(d_in, k * (n_experts - 1), bias=node_bias)  # one hyperplane per tree per node
        self.leaves = nn.Linear(d_in, k * n_experts)  # one logit per tree per leaf
        self.center = nn.BatchNorm1d(d_in, affine=False, momentum=0.01) if center_input else None
        nn.init.uniform_(self.nodes.weight, -gamma / 100, gamma / 100)
        if node_bias:
            nn.init.uniform_(self.nodes.bias, -gamma / 100, gamma / 100)
        nn.init.uniform_(self.leaves.weight, -0.05, 0.05)
        nn.init.uniform_(self.leaves.bias, -0.05, 0.05)
        paths = torch.zeros(2 * (n_experts - 1), n_experts)  # [goes left; goes right] at node i on the way to leaf l
        for leaf, path in enumerate(leaf_paths(n_experts)):
            for node, left in path:
                paths[node if left else n_experts - 1 + node, leaf] = 1.0
        self.register_buffer("paths", paths)  # (2(E-1), E)

    def _projections(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """Node pre-activations divided by gamma (N k, E-1) and leaf logits (N, k, E), from one matmul."""
        n, e, k = x.shape[0], self.n_experts, self.k
        if self.center is not None:
            x = self._centred(x)
        w = torch.cat([self.nodes.weight / self.gamma, self.leaves.weight])
        node_bias = self.nodes.bias if self.nodes.bias is not None else self.nodes.weight.new_zeros(k * (e - 1))
        bias = torch.cat([node_bias / self.gamma, self.leaves.bias])
        out = F.linear(x, w, bias)  # (N, k (E-1) + k E)
        return out[:, :k * (e - 1)].reshape(n * k, e - 1), out[:, k * (e - 1):].reshape(n, k, e)

    def _centred(self, x: Tensor) -> Tensor:
        """x minus the batch mean (training; updates the running mean) or the running mean (evaluation)."""
        bn = self.center
        if self.training and x.shape[0] > 1:
            with torch.no_grad():
                bn.running_mean.lerp_(x.mean(0).to(bn.running_mean.dtype), bn.momentum)
                bn.num_batches_tracked += 1
            return x - x.mean(0)
        return x - bn.running_mean.to(x.dtype)

    def log_reach(self, x: Tensor, pre: Tensor | None = None) -> Tensor:
        """log p (N, k, E): log-probability that tree j reaches leaf l, -inf where p = 0.

        log p = [log s, log(1 - s)] @ [L; R] with L, R (E-1, E) the 0/1 "goes left / right at node i on
        the way to leaf l" matrices (one small matmul instead of a gather over paths of unequal length).
        A hard branch (s exactly 0 or 1) contributes log(0 + 1e-30) = -69 to every leaf below its closed
        side, so a path total below DEAD_LOGP marks a leaf that cannot be reached (p = 0 exactly)."""
        n, e = x.shape[0], self.n_experts
        if pre is None:
            pre = self._projections(x)[0]
        s = smooth_step(pre, 1.0)  # (N k, E-1) P(left); pre is already (u . x + b) / gamma
        logp = (torch.cat([s, 1 - s], -1) + 1e-30).log() @ self.paths.to(x.dtype)  # (N k, E); log 0 -> -69
        return logp.masked_fill(logp < DEAD_LOGP, -torch.inf).view(n, self.k, e)

    def reach_probabilities(self, x: Tensor) -> Tensor:
        """p (N, k, E): probability that tree j reaches leaf l (exactly 0 behind a hard branch)."""
        return self.log_reach(x).exp()

    def forward(self, x: Tensor, ids: Tensor | None = None) -> GateOutput:
        n, e = x.shape[0], self.n_experts
        pre, o = self._projections(x)
        logp = self.log_reach(x, pre)  # (N, k, E)
        g = (o + logp).view(n, self.k * e).softmax(-1).view(n, self.k, e)
        weights = g.sum(1)
        a = from_dense(weights)  # the support; <= k per token once every tree is hard
        p = logp.exp()
        aux = {"entropy": -self.entropy_reg * (p * logp.clamp(min=DEAD_LOGP)).sum((-2, -1)).mean()}
        metrics = routing_metrics(a)
        metrics["soft_trees"] = (p.detach().amax(-1) < 1).to(x.dtype).mean()  # hard tree: one leaf has p = 1
        return GateOutput(a, aux, metrics)
