"""Allocation invariants of the variants, the fast allocation paths, aux_k / aux_zipf."""

import pytest
import torch

from sae.config import SAEConfig
from sae.losses import aux_loss, aux_weights, cover_loss, uncovered, zipf_weights
from sae.model import build_sae
from workbench import alloc


def _sae(arch, **kw):
    s = build_sae(SAEConfig(arch=arch, k=4, d_sae=64, **kw).resolve(16))
    s.init_weights(torch.Generator().manual_seed(0))
    with torch.no_grad():
        s.b_enc.copy_(torch.randn(64, generator=torch.Generator().manual_seed(5)) * 0.3)
    return s


X = torch.randn(128, 16, generator=torch.Generator().manual_seed(9))


def test_topk_gives_every_token_k_latents():
    out = _sae("topk")(X)
    assert out.alloc.row_counts().tolist() == [4] * 128


def test_feature_choice_gives_every_latent_m_tokens_and_tokens_vary():
    out = _sae("feature-choice")(X)
    assert out.alloc.col_counts().tolist() == [4 * 128 // 64] * 64 and out.alloc.nnz == 4 * 128
    assert out.alloc.row_counts().float().std() > 0  # adaptive per-token allocation


def test_feature_choice_zipf_capacities_follow_usage_ranks():
    s = _sae("feature-choice", capacity="zipf")
    with torch.no_grad():
        s.mass.copy_(torch.linspace(0.001, 0.2, 64))  # latent 63 is the most used
    caps = s.capacities(128)
    assert int(caps.sum()) == 4 * 128 and caps[63] == caps.max() and caps[0] == caps.min()
    counts = s(X).alloc.col_counts()
    assert torch.equal(counts, caps)


# ---- defects (a)-(e) of issue 13, each test failed before its fix ---------------------------------
def test_a_aux_zipf_ranks_feature_choice_latents_by_usage_not_by_index():
    """Uniform capacities give every latent the same density, so ranking by density was the index order."""
    s = _sae("feature-choice")
    out = s(X)
    s.update_stats(out, density_ema=1.0)
    mass = torch.zeros(64).index_add_(0, out.alloc.cols, out.values.detach())  # per-latent activation mass
    ranks = alloc.ranks_of(s.usage())
    assert not torch.equal(ranks, torch.arange(1, 65))
    assert torch.equal(ranks, alloc.ranks_of(mass))
    torch.testing.assert_close(s.usage(), 4 * mass / mass.sum())  # usage sums to k
    torch.testing.assert_close(aux_weights("aux_zipf", s, 10_000), zipf_weights(4 * mass / mass.sum(), 4))


def test_b_dead_latents_weigh_one_in_aux_zipf_although_their_density_is_not_zero():
    s = _sae("mutual-choice")
    with torch.no_grad():
        s.density.fill_(4 / 64)
        s.density[[3, 7]] = 0.003  # decayed but never 0 under an EMA
        s.since_active[[3, 7]] = 5_000  # fired on none of the last 5,000 tokens: dead for window 4,096
    w = aux_weights("aux_zipf", s, 4_096)
    assert w[3] == 1 and w[7] == 1
    assert torch.equal(aux_weights("aux_k", s, 4_096).nonzero().squeeze(1), torch.tensor([3, 7]))


@pytest.mark.parametrize("arch", ["feature-choice", "mutual-choice"])
def test_c_cover_loss_teaches_the_allocation_to_cover_tokens_it_left_out(arch):
    s = build_sae(SAEConfig(arch=arch, k=1, d_sae=64, normalize="per_token").resolve(16))
    s.init_weights(torch.Generator().manual_seed(0))
    n0 = uncovered(s(X)).numel()  # k = 1: 128 entries for 128 tokens, many tokens left out
    assert n0 > 30
    opt = torch.optim.SGD(s.parameters(), lr=0.2)
    for _ in range(40):
        opt.zero_grad()
        cover_loss(s, s(X), k=1).backward()
        opt.step()
        assert s.W_dec.grad is None or not s.W_dec.grad.any()  # the encoder learns to compete; the decoder is untouched
    assert uncovered(s(X)).numel() < 0.6 * n0
    t = _sae("topk")
    assert cover_loss(t, t(X), k=4).item() == 0.0  # nothing to cover


@pytest.mark.parametrize("arch", ["feature-choice", "mutual-choice"])
def test_c_cover_loss_in_a_fixed_slot_equals_the_exact_one_until_the_slot_is_full(arch, monkeypatch):
    """The GPU's form (a fixed slot of ceil(COVER_ROWS N) rows, padded, nothing read back) gives the CPU's
    value and gradient while the uncovered tokens fit; past that, it is the mean over the first ones."""
    import sae.losses as L

    s = build_sae(SAEConfig(arch=arch, k=1, d_sae=64, normalize="per_token").resolve(16))
    s.init_weights(torch.Generator().manual_seed(0))
    out = s(X)
    unc = uncovered(out)
    assert 30 < unc.numel() < X.shape[0]

    def loss_and_grad(fixed):
        s.zero_grad()
        v = cover_loss(s, out, k=3, fixed=fixed)
        v.backward(retain_graph=True)
        return v.detach(), s.W_enc.grad.clone(), s.b_enc.grad.clone()

    exact = loss_and_grad(False)
    assert exact[0] > 0
    monkeypatch.setattr(L, "COVER_ROWS", 1.0)  # room for every token: same value and gradients
    for a, b in zip(loss_and_grad(True), exact):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    monkeypatch.setattr(L, "COVER_ROWS", 10 / X.shape[0])  # room for 10: the first 10 uncovered tokens alone
    part = loss_and_grad(True)[0]
    # reference, token by token: the hinge of the first 10 uncovered tokens over the bars of this batch
    with torch.no_grad():
        on = out.values > 0
        sel = out.alloc.values[on]
        if arch == "mutual-choice":
            bar = sel.min().expand(64)
        else:
            bar = torch.full((64,), float("inf")).scatter_reduce(0, out.alloc.cols[on], sel, "amin")
            bar = torch.where(torch.isinf(bar), torch.zeros_like(bar), bar)
        bar = bar.clamp_min(0)
        total = 0.0
        for u in unc[:10].tolist():
            near = (out.pre[u] - bar).topk(3).indices
            pre_u = out.x_c[u] @ s.W_enc[:, near] + s.b_enc[near]
            total += float((bar[near] - pre_u).relu().sum())
    torch.testing.assert_close(float(part), total / (10 * 3 * float(sel.mean())), rtol=1e-5, atol=1e-7)


def test_d_uniform_feature_choice_capacities_spend_exactly_the_budget():
    s = build_sae(SAEConfig(arch="feature-choice", k=4, d_sae=48).resolve(16))
    s.init_weights(torch.Generator().manual_seed(0))
    caps = s.capacities(64)  # k N / F = 5.33: ceil(5.33) * 48 = 288 entries, not 256
    assert int(caps.sum()) == 4 * 64 and int(caps.max() - caps.min()) == 1
    assert s(torch.randn(64, 16)).alloc.nnz == 4 * 64


def test_e_zipf_capacities_capped_at_n_redistribute_the_budget():
    caps = alloc.zipf_capacities(8 * 4096, 1024, cap=4096)  # the top ranks want more than 4096 tokens
    assert int(caps.sum()) == 8 * 4096 and int(caps.max()) == 4096
    assert torch.all(caps[:-1] >= caps[1:])  # still ordered by rank
    s = build_sae(SAEConfig(arch="feature-choice", capacity="zipf", k=8, d_sae=64).resolve(16))
    s.init_weights(torch.Generator().manual_seed(0))
    out = s(torch.randn(40, 16))  # 8 * 40 = 320 entries; the rank-1 latent alone would want 67 > 40
    assert out.alloc.nnz == 8 * 40 and int(out.alloc.col_counts().max()) == 40


def test_mutual_choice_keeps_the_global_budget_of_largest_entries():
    s = _sae("mutual-choice")
    out = s(X)
    assert out.alloc.nnz == 4 * 128
    pre = out.pre.detach()
    kth = pre.flatten().topk(4 * 128).values[-1]
    assert torch.all(out.alloc.values >= kth)


def test_relu_l1_keeps_every_positive_entry():
    out = _sae("relu-l1")(X)
    assert torch.equal(out.alloc.mask(), out.pre.detach() > 0)


@pytest.mark.parametrize("arch", ["feature-choice", "mutual-choice"])
def test_threshold_mode_does_not_depend_on_the_batch(arch):
    s = _sae(arch)
    s(X)  # one batch-mode step of statistics
    s.update_stats(s(X), density_ema=0.1)
    assert torch.isfinite(s.threshold).any()
    s.set_mode("threshold")
    whole, half = s.encode(X), s.encode(X[:50])
    assert torch.equal(whole[:50], half)
    if arch == "mutual-choice":
        assert torch.all(s.threshold == s.threshold[0])  # one global threshold


def test_topk_sae_has_no_threshold_mode():
    with pytest.raises(ValueError, match="modes"):
        _sae("topk").set_mode("threshold")


def test_fast_global_topk_equals_full_topk_on_a_large_matrix():
    g = torch.Generator().manual_seed(0)
    s = torch.randn(600, 1024, generator=g).relu()  # 614k entries: the sampled-threshold path
    for budget in (600 * 4, 600 * 16):
        a = alloc.topk_global(s, budget)
        ref = torch.zeros_like(s, dtype=torch.bool).view(-1)
        ref[s.view(-1).topk(budget).indices] = True
        assert torch.equal(a.mask(), ref.view_as(s)) and torch.all(a.rows[1:] >= a.rows[:-1])


def test_bucketed_column_topk_equals_reference_with_varying_capacities():
    g = torch.Generator().manual_seed(1)
    s = torch.randn(300, 40, generator=g)
    cap = alloc.zipf_capacities(300 * 3, 40)
    a = alloc.topk_per_col(s, cap)
    ref = torch.zeros_like(s, dtype=torch.bool)
    order = s.argsort(0, descending=True)
    for j in range(40):
        ref[order[: min(int(cap[j]), 300), j], j] = True
    assert torch.equal(a.mask(), ref)


def test_zipf_weights_targets_sum_to_k_and_dead_latents_weigh_one():
    density = torch.tensor([0.5, 0.0, 0.02, 0.3, 0.0, 0.001])
    w = zipf_weights(density, k=1.0)
    assert torch.all(w[density == 0] == 1)
    assert w[0] == 0  # the most used latent is above its target
    assert torch.all((w >= 0) & (w <= 1))


def _aux_k_reference(s, x, dead, k_aux):
    """Gao et al.'s aux_k written densely: top-k_aux dead latents reconstruct the residual."""
    out = s(x)
    pre = out.pre.detach().masked_fill(~dead, float("-inf"))
    idx = pre.topk(min(k_aux, int(dead.sum())), dim=1).indices
    codes = torch.zeros_like(pre).scatter(1, idx, pre.gather(1, idx)).relu()
    e = (x - out.x_hat).detach()
    e_hat = codes @ s.W_dec
    return ((e_hat - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()


def test_aux_zipf_with_dead_indicator_weights_is_aux_k():
    s = _sae("topk", kernel="dense")
    dead = torch.zeros(64, dtype=torch.bool)
    dead[[1, 5, 9, 20, 33, 40, 41, 63]] = True
    with torch.no_grad():
        s.density.copy_(torch.where(dead, 0.0, 0.05))
        s.since_active.copy_(torch.where(dead, 10_000, 0))
    ref = _aux_k_reference(s, X, dead, k_aux=3)
    out = s(X)
    w_zipf_dead = (s.density == 0).float()  # aux_zipf's weights replaced by [p_i == 0]
    torch.testing.assert_close(aux_loss(s, out, w_zipf_dead, 3), ref)
    torch.testing.assert_close(aux_loss(s, out, aux_weights("aux_k", s, 5_000), 3), ref)
    assert torch.equal(aux_weights("aux_k", s, 5_000), w_zipf_dead)


def test_aux_loss_is_zero_without_candidates():
    s = _sae("topk")
    out = s(X)
    assert aux_loss(s, out, torch.zeros(64), 3).item() == 0.0
