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
    torch.testing.assert_close(y, _reference(moe.experts, x, route.weights), atol=1e-5, rtol=1e-5)


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
    tl = pytest.importorskip("transformer_lens")
    torch.manual_seed(0)
    cfg = tl.HookedTransformerConfig(n_layers=1, d_model=16, n_ctx=8, d_head=4, n_heads=4, d_vocab=20, act_fn="gelu",
                                     d_mlp=32)
    model = tl.HookedTransformer(cfg)
    block = MoEFeedForward(make_gate(GateConfig(gate="topk", experts=4, k=2), 16), 16, 8)
    model.blocks[0].mlp = block
    tokens = torch.randint(0, 20, (2, 8))
    loss = model(tokens, return_type="loss") + block.aux_loss()
    loss.backward()
    assert block.last_route.weights.shape == (16, 4)
    assert block.moe.gate.router.weight.grad is not None
