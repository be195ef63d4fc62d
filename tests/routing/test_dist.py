"""Expert-parallel dispatch over 2 CPU processes (gloo) equals the single-process MoE layer."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank: int, world: int, init_file: str, result_dir: str) -> None:
    from routing.config import GateConfig
    from routing.dist import expert_parallel_combine, shard_experts
    from routing.gates import make_gate
    from routing.moe import Experts, combine

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    torch.manual_seed(0)  # same gate and experts on every rank
    gate = make_gate(GateConfig(gate="topk", experts=4, k=2), 6)
    full = Experts(4, 6, 8, 3)
    local = shard_experts(full, rank, world)
    torch.manual_seed(100 + rank)  # different tokens per rank, different counts too
    x = torch.randn(10 + 3 * rank, 6, requires_grad=True)
    route = gate(x)
    y = expert_parallel_combine(x, route, local)
    y.pow(2).sum().backward()
    gx = x.grad.clone()
    x2 = x.detach().clone().requires_grad_(True)
    ref = combine(full, x2, [gate(x2)])[0]
    ref.pow(2).sum().backward()
    torch.save({"y": y.detach(), "ref": ref.detach(), "gx": gx, "gref": x2.grad}, os.path.join(result_dir, f"{rank}.pt"))
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.timeout(120)
def test_all_to_all_dispatch_matches_local_moe():
    if not dist.is_available() or not dist.is_gloo_available():
        pytest.skip("torch.distributed with gloo is not available in this build")
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_worker, args=(2, os.path.join(d, "init"), d), nprocs=2, join=True)
        for rank in range(2):
            r = torch.load(os.path.join(d, f"{rank}.pt"))
            torch.testing.assert_close(r["y"], r["ref"], atol=1e-5, rtol=1e-5)
            torch.testing.assert_close(r["gx"], r["gref"], atol=1e-5, rtol=1e-5)
