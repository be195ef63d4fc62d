"""evals.harness.assignment_means: the routed-expert means and their bootstrap, against routing.metrics."""

from __future__ import annotations

import numpy as np
import torch

from evals.harness import assignment_means
from routing.metrics import assignment_summary, expert_assignment


def _data(seed=0, n=300, v=6, e=4):
    rng = np.random.default_rng(seed)
    values = rng.choice([f"n{i}" for i in range(v)], n)
    experts = np.where(rng.random(n) < 0.6, np.array([int(s[1:]) % e for s in values]), rng.integers(-1, e, n))
    return values, experts, e


def _inputs(values, experts, e):
    rows = expert_assignment(values, experts, e)
    idx = {r["value"]: i for i, r in enumerate(rows)}
    vi = torch.tensor([idx[str(x)] for x in values])
    return rows, vi, torch.as_tensor(experts), torch.tensor([r["expert"] for r in rows])


def test_means_equal_routing_metrics_on_the_full_sample():
    values, experts, e = _data()
    rows, vi, ex, best = _inputs(values, experts, e)
    summ = assignment_summary(values, experts, e)
    got = assignment_means(vi, ex, best)
    assert torch.allclose(got.double(), torch.tensor([summ["precision"], summ["recall"], summ["f1"]], dtype=torch.float64), atol=1e-6)


def test_weights_are_the_sample_repeated_with_the_experts_held_fixed():
    """Integer weights w give the means of the sample with prompt i repeated w_i times, scored on the full
    sample's experts (so: equal to routing.metrics on the repeated sample wherever its best experts agree)."""
    values, experts, e = _data(1)
    rows, vi, ex, best = _inputs(values, experts, e)
    g = torch.Generator().manual_seed(0)
    w = torch.randint(0, 3, (4, len(values)), generator=g).float()
    got = assignment_means(vi, ex, best, w)
    assert got.shape == (4, 3)
    for b in range(4):
        rep = np.repeat(np.arange(len(values)), w[b].long().numpy())
        counts = np.zeros((len(rows), e))
        ok = experts[rep] >= 0
        np.add.at(counts, (vi.numpy()[rep][ok], experts[rep][ok]), 1)
        n_v, n_e = np.bincount(vi.numpy()[rep], minlength=len(rows)), counts.sum(0)
        pr = [counts[i, r["expert"]] / n_e[r["expert"]] if n_e[r["expert"]] else 0.0 for i, r in enumerate(rows)]
        rc = [counts[i, r["expert"]] / n_v[i] for i, r in enumerate(rows)]
        f1 = [2 * p * r / (p + r) if p + r else 0.0 for p, r in zip(pr, rc)]
        assert np.allclose(got[b].numpy(), [np.mean(pr), np.mean(rc), np.mean(f1)], atol=1e-6)
