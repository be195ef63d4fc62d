"""Routing on CUDA gives the CPU's answers: the sparse-OT solver (eager and compiled), every gate, the
MoE layer. Skipped without a GPU; run on a lent GPU machine (docs/routing.md records where and when)."""

import copy

import pytest
import torch

from routing.benchmarks import router_costs
from routing.config import GATES, GateConfig
from routing.gates import make_gate
from routing.moe import Experts, combine
from routing.sparse_ot import solve_sparse_ot

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.parametrize("dtype,rtol", [(torch.float64, 1e-9), (torch.float32, 1e-4)])
@pytest.mark.parametrize("compile", [False, True])
def test_sparse_ot_on_cuda_matches_cpu(dtype, rtol, compile):
    cost = router_costs(12, 16, 256, 0, dtype)  # 12 problems: BFGS shrinks the batch on the way
    a, b = torch.full((16,), 1 / 16, dtype=dtype), torch.full((256,), 1 / 256, dtype=dtype)
    cpu = solve_sparse_ot(cost, a, b, 2, 1.0, compile=False, backend="torch")  # the same torch code on both
    gpu = solve_sparse_ot(cost.cuda(), a.cuda(), b.cuda(), 2, 1.0, compile=compile)
    assert gpu.plan.device.type == "cuda"
    torch.testing.assert_close(gpu.value.cpu(), cpu.value, rtol=rtol, atol=0)
    assert ((gpu.plan > 0).sum(-2) <= 2).all()  # nnz per column <= k, exactly
    torch.testing.assert_close(gpu.plan.sum(-2).cpu(), b.expand(12, 256), atol=10 * torch.finfo(dtype).eps, rtol=0)


@pytest.mark.parametrize("name", GATES)
def test_every_gate_on_cuda_matches_cpu(name):
    """In float64, so that the sparse-OT gate's solver ends at the same support on both devices (in
    float32 it stops at a kink of the semi-dual whose side depends on the order of the reductions)."""
    torch.manual_seed(0)
    gate = make_gate(GateConfig(gate=name, experts=8, k=2, ot_group=32), 12).double()
    gate_gpu = copy.deepcopy(gate).cuda()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1), dtype=torch.float64, requires_grad=True)
    xg = x.detach().cuda().requires_grad_(True)
    out, out_g = gate(x), gate_gpu(xg)
    assert out_g.weights.device.type == "cuda"
    assert torch.equal(out.mask, out_g.mask.cpu()), f"{name}: different experts chosen on CUDA"
    torch.testing.assert_close(out_g.weights.cpu(), out.weights, atol=1e-9, rtol=1e-7)
    if not out.weights.requires_grad:  # hash: fixed routing, nothing to differentiate
        return
    probe = torch.randn(64, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    (out.weights * probe).sum().backward()
    (out_g.weights * probe.cuda()).sum().backward()
    torch.testing.assert_close(xg.grad.cpu(), x.grad, atol=1e-9, rtol=1e-7)
    for (n, p), pg in zip(gate.named_parameters(), gate_gpu.parameters()):
        if p.grad is not None:
            torch.testing.assert_close(pg.grad.cpu(), p.grad, atol=1e-9, rtol=1e-7, msg=f"{name}: grad of {n}")


def test_moe_layer_on_cuda_matches_cpu():
    torch.manual_seed(0)
    gate, experts = make_gate(GateConfig(gate="comet", experts=8, k=2), 12), Experts(8, 12, 16, 4)
    gate_g, experts_g = copy.deepcopy(gate).cuda(), copy.deepcopy(experts).cuda()
    x = torch.randn(64, 12, generator=torch.Generator().manual_seed(1))
    y = combine(experts, x, [gate(x)])[0]
    y_g = combine(experts_g, x.cuda(), [gate_g(x.cuda())])[0]
    torch.testing.assert_close(y_g.cpu(), y, atol=1e-5, rtol=1e-4)
    y_g.pow(2).sum().backward()
    y.pow(2).sum().backward()
    for (n, p), pg in zip(experts.named_parameters(), experts_g.parameters()):
        torch.testing.assert_close(pg.grad.cpu(), p.grad, atol=1e-4, rtol=1e-3, msg=n)
