"""workbench.simplex: dense and k-sparse simplex projections, log-domain Sinkhorn."""

import itertools

import pytest
import torch

from workbench.simplex import project_simplex, project_sparse_simplex, sinkhorn_log, sparse_simplex_parts


def _brute_sparse(v: torch.Tensor, k: int, z: float = 1.0) -> torch.Tensor:
    """Best projection over every support of size <= k (tiny d only)."""
    best, best_d = None, float("inf")
    d = v.numel()
    for size in range(1, k + 1):
        for s in itertools.combinations(range(d), size):
            p = torch.zeros_like(v)
            p[list(s)] = project_simplex(v[list(s)], z)
            dist = float((p - v).pow(2).sum())
            if dist < best_d - 1e-12:
                best, best_d = p, dist
    return best


def test_projection_is_on_simplex_and_satisfies_kkt():
    torch.manual_seed(0)
    v = torch.randn(5, 7, 9, dtype=torch.float64)
    p = project_simplex(v, 2.0)
    assert p.shape == v.shape and (p >= 0).all()
    torch.testing.assert_close(p.sum(-1), torch.full((5, 7), 2.0, dtype=torch.float64))
    # KKT: p = max(v - theta, 0) with one theta per vector; on the support v - p is constant
    gap = v - p  # = theta on the support, >= v elsewhere (v <= theta there)
    theta = torch.where(p > 0, gap, torch.full_like(gap, -torch.inf)).amax(-1, keepdim=True)
    on = p > 0
    assert (gap[on] - theta.expand_as(gap)[on]).abs().max() < 1e-12
    assert (v[~on] <= theta.expand_as(v)[~on] + 1e-12).all()


def test_projection_matches_pot():
    ot = pytest.importorskip("ot")
    torch.manual_seed(1)
    v = torch.randn(6, 11, dtype=torch.float64)
    ref = ot.smooth.projection_simplex(v.numpy(), 1.0, axis=1)
    torch.testing.assert_close(project_simplex(v), torch.as_tensor(ref))


@pytest.mark.parametrize("k", [1, 2, 3, 6])
def test_sparse_projection_is_the_best_k_sparse_point(k):
    torch.manual_seed(k)
    for _ in range(10):
        v = torch.randn(6, dtype=torch.float64)
        p = project_sparse_simplex(v, k)
        assert int((p > 0).sum()) <= k
        torch.testing.assert_close(p.sum(), torch.tensor(1.0, dtype=torch.float64))
        torch.testing.assert_close(p, _brute_sparse(v, k))


def test_sparse_projection_batched_and_differentiable():
    torch.manual_seed(2)
    v = torch.randn(3, 4, 10, dtype=torch.float64, requires_grad=True)
    p = project_sparse_simplex(v, 3, z=0.5)
    assert ((p > 0).sum(-1) <= 3).all()
    torch.testing.assert_close(p.sum(-1), torch.full((3, 4), 0.5, dtype=torch.float64))
    assert torch.autograd.gradcheck(lambda t: project_sparse_simplex(t, 3), (v,))


def test_sinkhorn_marginals():
    torch.manual_seed(3)
    logits = torch.randn(2, 12, 4, dtype=torch.float64)
    t = sinkhorn_log(logits, n_iters=200).exp()
    torch.testing.assert_close(t.sum(-2), torch.full((2, 4), 3.0, dtype=torch.float64))  # columns n/m
    torch.testing.assert_close(t.sum(-1), torch.ones(2, 12, dtype=torch.float64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("k", [1, 2, 3, 9])
def test_sparse_projection_along_any_dim(k):
    """dim=-2 (the OT solver's layout: rows reduced, columns contiguous) equals the last-dim projection;
    k = 9 > SMALL_K takes the torch.topk path."""
    torch.manual_seed(10 + k)
    v = torch.randn(3, 12, 7, dtype=torch.float64)
    ref = project_sparse_simplex(v.transpose(-1, -2), k).transpose(-1, -2)
    torch.testing.assert_close(project_sparse_simplex(v, k, dim=-2), ref, atol=1e-15, rtol=0)


def test_sparse_projection_with_ties_keeps_k_nonzeros():
    """Tied entries defeat the masked-maxima path: parts flags them and the projection falls back to topk."""
    v = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.5, 0.2, 0.5, 0.1], [0.3, 0.1, -0.2, 0.0]], dtype=torch.float64)
    _, ties = sparse_simplex_parts(v, 2)
    assert ties.tolist() == [True, True, False]
    p = project_sparse_simplex(v, 2)
    assert ((p > 0).sum(-1) <= 2).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(3, dtype=torch.float64))
    for row in range(3):
        assert float((p[row] - v[row]).pow(2).sum()) <= float((_brute_sparse(v[row], 2) - v[row]).pow(2).sum()) + 1e-12
