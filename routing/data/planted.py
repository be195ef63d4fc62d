"""Planted routing: E clusters, each with its own linear map; does the gate recover the clusters?

    c ~ Uniform{0..C-1};  x = mu_c + eps,  eps ~ N(0, I_d),  mu_c ~ N(0, I_d) * separation / sqrt(d);
    y = A_c x + 0.05 * noise,  A_c ~ N(0, 1/d) per cluster   (d_out outputs)
Scored by NMI/ARI between each token's top expert and its cluster (routing.metrics).
"""

from __future__ import annotations

import torch

from routing.data import Split, TaskData


def make_planted(n_train: int = 8000, d: int = 32, clusters: int = 8, d_out: int = 8, separation: float = 4.0,
                 seed: int = 0) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    mu = torch.randn(clusters, d, generator=gen) * separation / d**0.5  # centres ~separation*sqrt(2) apart
    maps = torch.randn(clusters, d_out, d, generator=gen) / d**0.5
    n = int(n_train / 0.8)
    c = torch.randint(0, clusters, (n,), generator=gen)
    x = mu[c] + torch.randn(n, d, generator=gen)
    y = torch.einsum("nod,nd->no", maps[c], x) + 0.05 * torch.randn(n, d_out, generator=gen)
    y = y / y[:n_train].std()
    cut = [0, n_train, n_train + (n - n_train) // 2, n]
    ones = torch.ones(n, d_out, dtype=torch.bool)

    def split(lo: int, hi: int) -> Split:
        return Split(x[lo:hi], y[lo:hi], ones[lo:hi], ids=torch.arange(lo, hi), cluster=c[lo:hi])

    return TaskData("planted", "regression", [f"y{j}" for j in range(d_out)], split(cut[0], cut[1]),
                    split(cut[1], cut[2]), split(cut[2], cut[3]), {"clusters": clusters, "d": d})
