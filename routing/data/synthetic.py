"""Synthetic multi-task regression with controlled task relatedness (MMoE generator, Ma et al. 2018).

    u_1, u_2 orthogonal unit vectors in R^d;  w_1 = c u_1,  w_2 = c (rho u_1 + sqrt(1 - rho^2) u_2)
    y_t(x) = w_t . x + sum_{i=1..m} sin(a_i w_t . x + b_i) + eps,   x ~ N(0, I_d), eps ~ N(0, 0.01)
rho = task correlation (1: same task up to the sines; 0: unrelated). Targets are standardised with
the training split's statistics.
"""

from __future__ import annotations

import torch

from routing.data import Split, TaskData


def make_synthetic(n_train: int = 8000, d: int = 64, correlation: float = 0.5, n_sines: int = 10, scale: float = 1.0,
                   seed: int = 0) -> TaskData:
    gen = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(d, 2, generator=gen))
    u1, u2 = q[:, 0], q[:, 1]
    w = torch.stack([scale * u1, scale * (correlation * u1 + (1 - correlation**2) ** 0.5 * u2)])  # (2, d)
    a, b = torch.randn(n_sines, generator=gen), torch.randn(n_sines, generator=gen)
    n = int(n_train / 0.8)
    x = torch.randn(n, d, generator=gen)
    z = x @ w.T  # (n, 2)
    y = z + torch.sin(z.unsqueeze(-1) * a + b).sum(-1) + 0.1 * torch.randn(n, 2, generator=gen)
    tr = slice(0, n_train)
    y = (y - y[tr].mean(0)) / y[tr].std(0)
    cut = [0, n_train, n_train + (n - n_train) // 2, n]
    ones = torch.ones(n, 2, dtype=torch.bool)

    def split(lo: int, hi: int) -> Split:
        return Split(x[lo:hi], y[lo:hi], ones[lo:hi], ids=torch.arange(lo, hi))

    return TaskData("synthetic", "regression", ["task1", "task2"], split(cut[0], cut[1]), split(cut[1], cut[2]),
                    split(cut[2], cut[3]), {"d": d, "correlation": correlation})
