"""Gates: hard-mode invariants, exact balance, gradients, local-search hardening."""

import pytest
import torch

from routing.config import GATES, GateConfig
from routing.gate import switch_balance_loss
from routing.gates import make_gate
from workbench.alloc import from_dense
from workbench.errors import ConfigError

N, D, E, K = 64, 12, 8, 2


def _gate(name, **kw):
    torch.manual_seed(0)
    return make_gate(GateConfig(gate=name, experts=E, k=K, ot_group=32, **kw), D)


def _x(dtype=torch.float32, n=N):
    return torch.randn(n, D, generator=torch.Generator().manual_seed(1), dtype=dtype)


@pytest.mark.parametrize("name", GATES)
def test_weights_nonnegative_on_mask_and_at_most_one_per_token(name):
    out = _gate(name)(_x())
    w, m = out.weights, out.mask
    assert w.shape == m.shape == (N, E)
    assert (w >= 0).all() and (w[~m] == 0).all()
    assert (w.sum(1) <= 1 + 1e-5).all()
    assert set(out.metrics) >= {"load", "load_cv", "frac_dropped", "experts_per_token"}
    assert out.metrics["load"].shape == (E,)


@pytest.mark.parametrize("name", ["topk", "hash", "base", "s-base", "sparse-ot"])
def test_token_choice_gates_use_at_most_k_experts(name):
    gate = _gate(name)
    for train in (True, False):
        gate.train(train)
        out = gate(_x())
        assert (out.mask.sum(1) <= K).all()
        if name != "sparse-ot":  # exactly k and weights on the simplex
            assert (out.mask.sum(1) == K).all()
            torch.testing.assert_close(out.weights.sum(1), torch.ones(N))


def test_expert_choice_and_base_are_exactly_balanced():
    ec = _gate("expert-choice")(_x())
    assert (ec.mask.sum(0) == K * N // E).all()  # capacity = N k / E tokens per expert
    base = _gate("base").train()(_x())
    assert (base.mask.sum(0) == K * N // E).all()
    assert (base.mask.sum(1) == K).all()  # k distinct experts per token


def test_sparse_ot_experts_orientation_gives_each_expert_its_capacity():
    """vmoe's Top-Items-Per-Expert dispatch: each expert takes its C largest plan entries, C = ceil(G k / E)
    rounded up to a multiple of 4 (here 8 per group of 32)."""
    out = _gate("sparse-ot", ot_orientation="experts")(_x())
    assert (out.mask.view(2, 32, E).sum(1) == 8).all()
    gate = _gate("sparse-ot", ot_orientation="experts", capacity_factor=0.75)  # ceil(6) = 6 -> 8 with rounding
    assert gate.capacity(32) == 8
    assert _gate("sparse-ot", ot_orientation="experts", capacity_factor=0.75, ot_capacity_multiple_of=1).capacity(32) == 6


@pytest.mark.parametrize("cf,cap", [(2.0, 16), (0.5, 4)])
def test_sparse_ot_tokens_orientation_is_vmoe_top_k_with_capacity(cf, cap):
    """Each token's k largest plan entries (zeros too, ordered by score) are its choices; an expert takes at
    most C = ceil(cf G k / E) (a multiple of 4) of them per group, and a choice is dropped only when its
    expert is full."""
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="sparse-ot", experts=E, k=K, ot_group=32, capacity_factor=cf), D)
    x = _x()
    out = gate(x)
    assert gate.capacity(32) == cap
    mask = out.mask[:32]  # the first group, whose plan the gate keeps
    scores = gate.router(x[:32]).softmax(-1).detach()
    key = torch.where(gate.last_plan > 0, gate.last_plan + 2, scores - 2)
    choices = torch.zeros_like(mask).scatter_(1, key.topk(K, dim=1).indices, True)
    assert (choices | ~mask).all() and (mask.sum(1) <= K).all()  # dispatched pairs are choices
    assert (mask.sum(0) <= cap).all()
    dropped = choices & ~mask
    assert (mask.sum(0)[dropped.nonzero()[:, 1]] == cap).all()  # only into full experts


def test_sparse_ot_gate_uses_vmoe_marginals():
    """ot_gamma = 1 with marginals 1 per token and G/E per expert is the same plan as gamma = G with
    marginals summing to 1, scaled by G."""
    from routing.sparse_ot import solve_sparse_ot

    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="sparse-ot", experts=E, k=K, ot_group=32, ot_iters=200), D).double()
    x = _x(torch.float64, n=32)
    gate(x)
    scores = gate.router(x).softmax(-1).detach()
    ref = solve_sparse_ot(-scores.t(), torch.full((E,), 1 / E, dtype=torch.float64),
                          torch.full((32,), 1 / 32, dtype=torch.float64), K, gamma=32.0, max_iter=200)
    torch.testing.assert_close(gate.last_plan, ref.plan.t() * 32, atol=1e-9, rtol=1e-9)


def test_sparse_ot_small_remainder_joins_the_last_group_and_bad_shapes_are_one_line_errors():
    from routing.gate import RoutingShapeError

    gate = _gate("sparse-ot")  # groups of 32, k = 2, 8 experts: a group needs >= 4 tokens
    assert gate.groups(67) == [32, 35] and gate.groups(70) == [32, 32, 6] and gate.groups(3) == [3]
    assert gate(_x(n=67)).allocation.shape == (67, E)
    with pytest.raises(RoutingShapeError, match="route at least 4 tokens"):
        gate(_x(n=3))
    with pytest.raises(RoutingShapeError, match="raise --capacity-factor to 1 or more"):
        make_gate(GateConfig(gate="sparse-ot", experts=E, k=1, ot_group=64, ot_orientation="experts",
                             capacity_factor=0.25, ot_capacity_multiple_of=1), D)
    with pytest.raises(RoutingShapeError, match="at least as many tokens as experts"):
        _gate("expert-choice")(_x(n=E - 1))


@pytest.mark.parametrize("name", ["dselect", "comet"])
def test_tree_gates_are_on_the_simplex_and_k_sparse_once_hard(name):
    gate = _gate(name)
    out = gate(_x())
    torch.testing.assert_close(out.weights.sum(1), torch.ones(N))
    assert (out.mask.sum(1) > K).any()  # soft at init
    with torch.no_grad():  # saturate every smooth step: selectors / trees become hard
        (gate.codes if name == "dselect" else gate.nodes).weight.mul_(1e7)
    out = gate(_x())
    assert (out.mask.sum(1) <= K).all()
    torch.testing.assert_close(out.weights.sum(1), torch.ones(N))


def test_balance_loss_is_coef_for_uniform_routing():
    probs = torch.full((16, 4), 0.25)
    mask = torch.eye(4, dtype=torch.bool).repeat(4, 1)
    torch.testing.assert_close(switch_balance_loss(probs, from_dense(mask.float()), 0.01), torch.tensor(0.01))


@pytest.mark.parametrize("name,kw", [("topk", {}), ("dselect", {}), ("comet", {}), ("s-base", {}),
                                     ("sparse-ot", {"ot_combine": "plan", "k": E, "ot_gamma": 0.125})])
def test_gradcheck_weights_wrt_inputs(name, kw):
    """Combine weights are differentiable in x where the method says so (sparse-ot with plan weights:
    through the implicit OT gradient; k = E and gamma 1/8 keep the small problem away from support switches)."""
    kw = {"k": K, **kw}
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate=name, experts=E, ot_group=32, **kw), D).double()
    x = _x(torch.float64, n=8).requires_grad_(True)
    if name == "sparse-ot":
        gate.group = 8
    assert torch.autograd.gradcheck(lambda t: gate(t).weights, (x,), eps=1e-6, atol=1e-5)


@pytest.mark.parametrize("name", [g for g in GATES if g != "hash"] + ["hash"])
def test_gradients_reach_learned_gates_only(name):
    gate = _gate(name)
    out = gate(_x())
    loss = (out.weights * torch.arange(E)).sum() + out.aux_loss()
    params = [p for p in gate.parameters() if p.requires_grad]
    if name == "hash":
        assert not params
        return
    loss.backward()
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in params)


@pytest.mark.parametrize("name", ["topk", "comet", "hash", "dselect"])
def test_local_search_hardens_into_a_permutation(name):
    gate = _gate(name, local_search=True, ls_fraction=0.5)
    p = gate.permutation
    gate.set_progress(0.2)
    soft = gate(_x())
    assert "perm_entropy" in soft.aux_losses and p.iters > p.iters_start
    assert p.temperature < p.temp_start
    pi = p.soft()
    torch.testing.assert_close(pi.sum(0), torch.ones(E), atol=1e-4, rtol=0)
    gate.set_progress(0.5)
    assert bool(p.hard) and not p.perm_logits.requires_grad
    assert sorted(p.perm.tolist()) == list(range(E))
    out = gate(_x())
    inner = gate.inner(_x())
    torch.testing.assert_close(out.weights[:, p.perm], inner.weights)
    assert (out.mask.sum(1) == inner.mask.sum(1)).all()


def test_sparse_ot_k1_groups_not_divisible_by_experts():
    """k = 1 needs whole tokens per expert: a group of 20 tokens over 8 experts gets 3/3/3/3/2/2/2/2."""
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="sparse-ot", experts=E, k=1, ot_group=20), D)
    out = gate(_x(n=60))
    assert (out.mask.sum(1) <= 1).all()


def test_smooth_step_is_exactly_hard_outside_its_band():
    from routing.gates.smooth_step import smooth_step

    for gamma in (10.0, 0.3, 7.0):
        t = torch.tensor([-1e9, -gamma / 2, -gamma / 4, 0.0, gamma / 4, gamma / 2, 1e9], dtype=torch.float64)
        s = smooth_step(t, gamma)
        assert s[0] == 0 and s[1] == 0 and s[-1] == 1 and s[-2] == 1 and s[3] == 0.5
        u = t[2:5] / gamma  # the paper's cubic inside the band
        torch.testing.assert_close(s[2:5], -2 * u**3 + 1.5 * u + 0.5)


@pytest.mark.parametrize("experts", [E, 3, 12])
def test_comet_reach_probabilities_are_path_products(experts):
    """log_reach (two matmuls of log-probabilities, hard branches -> p = 0) equals the product of branch
    probabilities along each root-to-leaf path, with some nodes saturated; any number of experts."""
    from routing.gates.comet import leaf_paths
    from routing.gates.smooth_step import smooth_step

    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="comet", experts=experts, k=K), D).double()
    with torch.no_grad():
        gate.nodes.weight[::3].mul_(1e6)  # every third node hard
    x = _x(torch.float64, n=16)
    s = smooth_step(gate.nodes(x).view(16, K, experts - 1), gate.gamma)  # (N, k, E-1) P(left)
    ref = torch.stack([torch.stack([s[..., node] if left else 1 - s[..., node] for node, left in path], -1).prod(-1)
                       for path in leaf_paths(experts)], -1)  # (N, k, E)
    p = gate.reach_probabilities(x)
    torch.testing.assert_close(p, ref, atol=1e-12, rtol=1e-9)
    assert (ref == 0).any() and ((p == 0) == (ref == 0)).all()
    torch.testing.assert_close(p.sum(-1), torch.ones(16, K, dtype=torch.float64))


def test_comet_tree_for_any_number_of_experts():
    """The heap-ordered tree with E leaves (the authors' recursion): E = 12 has 8 leaves at depth 4 and
    4 at depth 3, every internal node on some path; hard trees give <= k experts per token."""
    from routing.gates.comet import leaf_paths

    paths = leaf_paths(12)
    assert sorted(len(p) for p in paths) == [3] * 4 + [4] * 8
    assert {node for p in paths for node, _ in p} == set(range(11))
    assert leaf_paths(4) == [[(0, True), (1, True)], [(0, True), (1, False)], [(0, False), (2, True)],
                             [(0, False), (2, False)]]
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="comet", experts=12, k=K), D)
    out = gate(_x())
    torch.testing.assert_close(out.weights.sum(1), torch.ones(N))
    with torch.no_grad():
        gate.nodes.weight.mul_(1e7)
    out = gate(_x())
    assert (out.allocation.row_counts() <= K).all() and (out.allocation.col_counts() > 0).sum() > 2


def test_local_search_starts_near_a_permutation():
    """The authors' U(+-0.05) logits at tau = 1e-3 give a nearly hard first permutation (largest entry per
    row ~0.8; the old U(0, 1e-3) init gave ~0.09, so '+' gates sent every token to all experts early on)."""
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="comet", experts=16, k=2, local_search=True), D)
    gate.set_progress(0.0)
    with torch.no_grad():
        assert float(gate.permutation.soft().amax(1).mean()) > 0.6


def test_local_search_hardens_the_last_soft_permutation_not_the_logits():
    """As the authors: Hungarian on the last relaxed permutation of training; an evaluation during the
    search uses that matching without freezing it."""
    torch.manual_seed(0)
    gate = _gate("topk", local_search=True, ls_fraction=0.5)
    p = gate.permutation
    gate.set_progress(0.1)
    gate(_x())  # a training step stores its relaxed permutation
    torch.testing.assert_close(p.last_soft, p.soft().detach())
    target = torch.randperm(E)
    with torch.no_grad():
        p.last_soft.copy_(torch.eye(E)[target] * 0.9 + 0.1 / E)  # a soft permutation the logits do not give
        p.perm_logits.copy_(torch.eye(E) * 10)  # whose own matching is the identity
    gate.eval()
    ev = gate(_x())
    assert not bool(p.hard)
    torch.testing.assert_close(ev.weights[:, target], gate.inner(_x()).weights)
    gate.train()
    gate.set_progress(0.5)
    assert bool(p.hard) and torch.equal(p.perm, target)


def test_local_search_penalty_has_both_entropy_terms_and_weights_stay_on_the_simplex():
    from routing.gates.local_search import permutation_entropy

    pi = torch.tensor([[0.5, 0.5], [0.5, 0.3]])  # rows of a truncated Sinkhorn need not sum to 1
    rows = torch.tensor([[0.5, 0.5], [0.625, 0.375]])
    h = lambda p: -(p * (p + 1e-6).log()).sum()  # noqa: E731
    torch.testing.assert_close(permutation_entropy(pi), h(pi) + h(rows))
    assert float(permutation_entropy(torch.eye(3))) < 1e-4
    gate = _gate("comet", local_search=True, ls_iters_start=2)  # few iterations: Pi far from doubly stochastic
    gate.set_progress(0.0)
    torch.testing.assert_close(gate(_x()).weights.sum(1), torch.ones(N))


def test_task_gates_share_one_learned_permutation():
    """The multi-task model's gates share one permutation (the authors' MovieLens setup): one set of
    permutation logits, trained by both tasks' losses, hardened once."""
    from routing.models import MultiTaskMoE

    torch.manual_seed(0)
    model = MultiTaskMoE(D, 2, GateConfig(gate="comet", experts=E, k=K, local_search=True, ls_fraction=0.5))
    g0, g1 = model.moe.gates
    assert g0.permutation is g1.permutation
    logits = [p for n, p in model.named_parameters() if n.endswith("perm_logits")]
    assert len(logits) == 1
    model.set_progress(0.1)
    pred, routes = model(_x())
    pred[:, 1].sum().backward()  # task 1's loss alone reaches the shared permutation
    assert logits[0].grad is not None and logits[0].grad.abs().sum() > 0
    model.set_progress(0.6)
    assert bool(g0.permutation.hard)


def test_ablations_revert_each_of_the_authors_choices():
    """--ablate node-bias,perm-init,harden-logits,perm-entropy gives the earlier versions, one by one."""
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="comet", experts=E, k=K, ablate="node-bias"), D)
    assert gate.nodes.bias is None
    torch.testing.assert_close(gate(_x()).weights.sum(1), torch.ones(N))
    p = make_gate(GateConfig(gate="topk", experts=16, k=2, local_search=True, ablate="perm-init"), D).permutation
    assert 0 <= float(p.perm_logits.detach().min()) and float(p.perm_logits.detach().max()) <= 1e-3
    p.set_progress(0.0)
    with torch.no_grad():
        assert float(p.soft().amax(1).mean()) < 0.2  # the nearly uniform first permutation of the old init
    gate = _gate("topk", local_search=True, ls_fraction=0.5, ablate="harden-logits")
    p = gate.permutation
    gate.set_progress(0.1)
    gate(_x())
    target = torch.randperm(E)
    with torch.no_grad():
        p.last_soft.copy_(torch.eye(E)[target] * 0.9 + 0.1 / E)
        p.perm_logits.copy_(torch.eye(E) * 10)  # the logits' matching is the identity
    gate.set_progress(0.5)
    assert torch.equal(p.perm, torch.arange(E))
    gate = _gate("topk", local_search=True, ablate="perm-entropy")
    gate.set_progress(0.0)
    out = gate(_x())
    pi = gate.permutation.last_soft
    torch.testing.assert_close(out.aux_losses["perm_entropy"], 1e-4 * -(pi * (pi + 1e-6).log()).sum())
    with pytest.raises(ConfigError, match="unknown ablation 'bias'"):
        GateConfig(gate="comet", ablate="bias")


def test_comet_centre_input_uses_the_batch_mean_then_the_running_mean():
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate="comet", experts=E, k=K, center_input=True), D)
    x = _x() + 5.0
    shifted = gate(x).weights
    torch.testing.assert_close(shifted, gate(x - 7.0).weights)  # training: a constant shift is removed
    assert float(gate.center.running_mean.mean()) > 0  # and the running mean moved towards the data's
    gate.eval()
    assert not torch.allclose(gate(x).weights, gate(x - 7.0).weights)
