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
    assert alloc.budget_capacity(8, 100, 64) == 13


def test_by_unit_groups_every_pair_under_its_unit(scores):
    a = alloc.topk_per_row(scores, 3)
    g = a.by_unit
    assert g is a.by_unit  # computed once
    assert torch.equal(g.counts, a.col_counts()) and g.split_sizes() == a.col_counts().tolist()
    assert sorted(g.order.tolist()) == list(range(a.nnz))
    for u in range(scores.shape[1]):
        lo, n = int(g.offsets[u]), int(g.counts[u])
        pairs = g.order[lo:lo + n]
        assert torch.all(a.cols[pairs] == u)
        assert torch.equal(g.rows[lo:lo + n], a.rows[pairs])
        assert torch.equal(a.rows[pairs], torch.nonzero(a.mask()[:, u]).squeeze(1))  # stable: row order kept


def test_by_unit_drives_a_unit_wise_embedding_bag(scores):
    a = alloc.topk_per_col(scores, 5)
    x = torch.randn(scores.shape[0], 4)
    g = a.by_unit
    per_unit = torch.nn.functional.embedding_bag(g.rows, x, g.offsets, mode="sum", per_sample_weights=a.values[g.order])
    torch.testing.assert_close(per_unit, a.dense().t() @ x)


def test_normalized_and_from_dense(scores):
    w = scores.relu()
    a = alloc.from_dense(w)
    assert torch.equal(a.mask(), w > 0) and torch.equal(a.dense(), w)
    n = a.normalized()
    nonempty = a.row_counts() > 0
    torch.testing.assert_close(n.row_sums()[nonempty], torch.ones(int(nonempty.sum())))
    torch.testing.assert_close(n.dense(), w / w.sum(1, keepdim=True).clamp(min=1e-12))


def test_budget_capacity_is_the_one_capacity_formula():
    assert alloc.budget_capacity(2, 512, 16) == 64  # Expert Choice at cf 1: k N / E
    assert alloc.budget_capacity(2, 500, 16, factor=1.25) == 79  # ceil(78.125)
    assert alloc.budget_capacity(1, 500, 16, multiple_of=4) == 32  # vmoe: ceil(31.25) = 32, a multiple of 4
    assert alloc.budget_capacity(1, 100, 16, multiple_of=4) == 8  # ceil(6.25) = 7 -> 8
    assert alloc.budget_capacity(3, 10, 10, factor=0.1) == 1
    with pytest.raises(ValueError):
        alloc.budget_capacity(2, 0, 16)


def test_drop_over_capacity_keeps_first_choices_then_earlier_rows():
    """vmoe's vanilla priority, against a direct loop: rank 0 of every row before any rank 1, then row order."""
    g = torch.Generator().manual_seed(3)
    n, f, k, cap = 40, 5, 2, 9
    idx = torch.rand(n, f, generator=g).argsort(1)[:, :k]  # (n, k) distinct units per row, rank order
    rows = torch.arange(n).repeat_interleave(k)
    rank = torch.arange(k).repeat(n)
    a = alloc.Allocation(rows, idx.reshape(-1), torch.rand(n * k, generator=g), (n, f))
    kept = alloc.drop_over_capacity(a, rank, cap)
    load, ref = [0] * f, []
    for r in range(k):
        for i in range(n):
            u = int(idx[i, r])
            if load[u] < cap:
                load[u] += 1
                ref.append((i, u))
    assert sorted(zip(kept.rows.tolist(), kept.cols.tolist())) == sorted(ref)
    assert torch.all(kept.rows[1:] >= kept.rows[:-1]) and (kept.col_counts() <= cap).all()
    assert kept.nnz < a.nnz  # something was dropped


def test_uniform_capacities_sum_exactly_to_the_budget():
    u = alloc.uniform_capacities(800, 64, ranks=alloc.ranks_of(torch.arange(64.0)))
    assert int(u.sum()) == 800 and set(u.tolist()) == {12, 13} and u[63] == 13 and u[0] == 12
    g = torch.Generator().manual_seed(0)
    for usage in (torch.arange(64.0), torch.rand(64, generator=g), torch.randint(0, 3, (64,), generator=g).float()):
        for total in (800, 768, 63, 0):  # with ties in usage: the lower index ranks first, as ranks_of
            assert torch.equal(alloc.uniform_capacities(total, 64, usage=usage),
                               alloc.uniform_capacities(total, 64, ranks=alloc.ranks_of(usage)))


def test_topk_per_col_with_known_capacities_is_the_same_allocation():
    """The sync-free path (capacities' min, max and sum given by the caller) picks the same pairs."""
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(50, 24, generator=g)
    for total in (24 * 3, 24 * 3 + 7, 24 * 5 - 1):
        base, extra = divmod(total, 24)
        cap = alloc.uniform_capacities(total, 24, alloc.ranks_of(torch.rand(24, generator=g)))
        a = alloc.topk_per_col(scores, cap)
        b = alloc.topk_per_col(scores, cap, known=(base, base + (extra > 0), total))
        assert torch.equal(a.rows, b.rows) and torch.equal(a.cols, b.cols) and torch.equal(a.values, b.values)
        assert b.nnz == total
