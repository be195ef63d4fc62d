import pytest
import torch

from workbench import alloc


@pytest.fixture
def scores():
    g = torch.Generator().manual_seed(0)
    return torch.randn(37, 11, generator=g)


def test_topk_per_row_matches_sorted_reference(scores):
    a = alloc.topk_per_row(scores, 3)
    assert a.row_counts().tolist() == [3] * 37
    ref = torch.zeros_like(scores, dtype=torch.bool)
    ref.scatter_(1, scores.argsort(1, descending=True)[:, :3], True)
    assert torch.equal(a.mask(), ref)
    assert torch.equal(a.dense(), scores * ref)


def test_topk_per_col_uniform_and_varying_capacity(scores):
    a = alloc.topk_per_col(scores, 4)
    assert a.col_counts().tolist() == [4] * 11
    ref = torch.zeros_like(scores, dtype=torch.bool)
    ref.scatter_(0, scores.argsort(0, descending=True)[:4], True)
    assert torch.equal(a.mask(), ref)
    cap = torch.tensor([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 40])
    b = alloc.topk_per_col(scores, cap)
    assert b.col_counts().tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 37]
    # rows sorted so embedding_bag offsets are valid
    assert torch.all(b.rows[1:] >= b.rows[:-1])


def test_topk_global_keeps_largest_entries(scores):
    a = alloc.topk_global(scores, 50)
    kth = scores.flatten().sort(descending=True).values[49]
    assert a.nnz == 50 and torch.all(a.values >= kth)
    assert torch.equal(a.mask(), scores >= kth)
    assert int(a.row_counts().sum()) == 50


def test_threshold_scalar_and_per_unit(scores):
    a = alloc.threshold(scores, 0.5)
    assert torch.equal(a.mask(), scores > 0.5)
    theta = torch.linspace(-1, 1, 11)
    b = alloc.threshold(scores, theta)
    assert torch.equal(b.mask(), scores > theta)


def test_offsets_drive_embedding_bag(scores):
    a = alloc.topk_global(scores.relu(), 60)
    w = torch.randn(11, 5)
    out = torch.nn.functional.embedding_bag(a.cols, w, a.offsets(), mode="sum", per_sample_weights=a.values)
    assert torch.allclose(out, a.dense() @ w, atol=1e-5)


def test_values_carry_gradients(scores):
    s = scores.clone().requires_grad_(True)
    a = alloc.topk_per_row(s, 2)
    a.dense().sum().backward()
    assert torch.equal(s.grad, a.mask().float())


@pytest.mark.parametrize("fn,arg", [(alloc.topk_per_row, 0), (alloc.topk_per_row, 12), (alloc.topk_global, 0)])
def test_bad_budgets_raise(scores, fn, arg):
    with pytest.raises(ValueError):
        fn(scores, arg)


def test_zipf_capacities_sum_and_order():
    caps = alloc.zipf_capacities(1000, 16, alpha=1.0)
    assert int(caps.sum()) == 1000 and torch.all(caps[:-1] >= caps[1:])
    ranks = torch.tensor([3, 1, 2, 4])
    c = alloc.zipf_capacities(100, 4, ranks=ranks)
    assert int(c.sum()) == 100 and c[1] == c.max()
    u = alloc.uniform_capacities(800, 64, ranks=alloc.ranks_of(torch.arange(64.0)))
    assert int(u.sum()) == 800 and set(u.tolist()) == {12, 13} and u[63] == 13 and u[0] == 12
