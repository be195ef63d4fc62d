"""MoE layers: combine equals the definition, multi-gate sharing, MoE block inside a transformer."""

import pytest
import torch

from routing.config import GateConfig
from routing.gates import make_gate
from routing.moe import MoE, MoEFeedForward, MultiGateMoE


def _reference(moe_experts, x, weights):
    return sum(weights[:, e:e + 1] * moe_experts.expert(e, x) for e in range(weights.shape[1]))


@pytest.mark.parametrize("name", ["topk", "comet", "expert-choice"])  # sparse, dense (soft trees), uneven
def test_moe_output_is_weighted_sum_of_experts(name):
    torch.manual_seed(0)
    moe = MoE(make_gate(GateConfig(gate=name, experts=4, k=2), 6), 6, 8, 3)
    x = torch.randn(20, 6)
    y, route = moe(x)
    ref = _reference(moe.experts, x, route.weights)
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)
    # the sparse dispatch's gradients equal the dense reference's, for the experts and the router alike
    params = [p for p in moe.parameters() if p.requires_grad]
    probe = torch.randn_like(y)
    got = torch.autograd.grad((y * probe).sum(), params, retain_graph=True, allow_unused=True)
    want = torch.autograd.grad((ref * probe).sum(), params, allow_unused=True)
    assert any(g is not None and g.abs().sum() > 0 for g in got)
    for g, w in zip(got, want):
        if g is None or w is None:
            assert g is None and w is None
        else:
            torch.testing.assert_close(g, w, atol=1e-5, rtol=1e-4)


def test_multi_gate_moe_shares_experts_across_tasks():
    torch.manual_seed(0)
    gates = [make_gate(GateConfig(gate="topk", experts=4, k=1), 6) for _ in range(2)]
    mmoe = MultiGateMoE(gates, 6, 8, 3)
    x = torch.randn(16, 6)
    ys, routes = mmoe(x)
    assert len(ys) == 2 and not torch.equal(routes[0].mask, routes[1].mask)
    for y, r in zip(ys, routes):
        torch.testing.assert_close(y, _reference(mmoe.experts, x, r.weights), atol=1e-5, rtol=1e-5)


def test_moe_feed_forward_replaces_a_transformer_mlp():
    """Inside a HookedTransformer the MoE block computes sum_e w_e f_e(ln2(x)) at every position, and the
    router's gradient of (LM loss + aux loss) is the true one (central finite difference, float64)."""
    tl = pytest.importorskip("transformer_lens")
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20, act_fn="gelu",
                                     d_mlp=32, dtype=torch.float64)
    model = tl.HookedTransformer(cfg)
    block = MoEFeedForward(make_gate(GateConfig(gate="topk", experts=4, k=2), 16), 16, 8).double()
    model.blocks[0].mlp = block
    tokens = torch.randint(0, 20, (2, 8))
    _, cache = model.run_with_cache(tokens, names_filter=["blocks.0.ln2.hook_normalized", "blocks.0.hook_mlp_out"])
    x = cache["blocks.0.ln2.hook_normalized"].reshape(16, 16)
    route = block.last_route
    assert route.allocation.shape == (16, 4) and route.allocation.row_counts().tolist() == [2] * 16
    torch.testing.assert_close(cache["blocks.0.hook_mlp_out"].reshape(16, 16),
                               _reference(block.moe.experts, x, route.weights))

    w = block.moe.gate.router.weight
    loss = model(tokens, return_type="loss") + block.aux_loss()
    grad, = torch.autograd.grad(loss, w)
    direction = torch.randn_like(w)
    eps = 1e-6
    with torch.no_grad():
        w.add_(eps * direction)
        up = model(tokens, return_type="loss") + block.aux_loss()
        w.sub_(2 * eps * direction)
        down = model(tokens, return_type="loss") + block.aux_loss()
        w.add_(eps * direction)
    torch.testing.assert_close((grad * direction).sum(), (up - down) / (2 * eps), atol=1e-7, rtol=1e-5)
    assert (grad * direction).sum().abs() > 1e-6  # the router does change the loss


def test_union_of_allocations_gives_each_gate_its_weights():
    """Multi-gate dispatch runs each (token, expert) pair once; every gate reads its own weight on it."""
    from routing.moe import union
    from workbench.alloc import Allocation

    a = Allocation(torch.tensor([0, 0, 1, 2]), torch.tensor([1, 3, 0, 2]), torch.tensor([0.5, 0.5, 1.0, 1.0]), (3, 4))
    b = Allocation(torch.tensor([0, 1, 1, 2]), torch.tensor([3, 0, 2, 1]), torch.tensor([1.0, 0.3, 0.7, 1.0]), (3, 4))
    u, (wa, wb) = union([a, b])
    assert list(zip(u.rows.tolist(), u.cols.tolist())) == [(0, 1), (0, 3), (1, 0), (1, 2), (2, 1), (2, 2)]
    torch.testing.assert_close(u.with_values(wa).dense(), a.dense())
    torch.testing.assert_close(u.with_values(wb).dense(), b.dense())
