"""Expert-parallel dispatch: experts sharded over ranks, tokens exchanged with all_to_all.

Rank r owns experts [r E/W, (r+1) E/W). Each rank routes its own tokens with its gate, then
    1. takes its (token, expert) pairs grouped by expert (``Allocation.by_unit``; experts of one rank are
       contiguous, so this also groups them by owning rank) and exchanges the counts (all_to_all_single),
    2. sends the token features and local expert ids to the owners (all_to_all_single, uneven splits),
    3. runs its local experts on what it received and sends the outputs back the same way,
    4. combines y_n = sum_e w_{n,e} f_e(x_n) locally.
Feature exchanges are a differentiable all_to_all (_Exchange), so gradients flow back to the
sending rank's tokens and gate. Works on any backend with all_to_all (gloo on CPU, nccl).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from routing.gate import GateOutput
from routing.moe import Experts
from workbench.alloc import Allocation


def shard_experts(full: Experts, rank: int, world: int) -> Experts:
    """A copy of the experts rank `rank` owns (E / world of them)."""
    e = full.n_experts
    if e % world:
        raise ValueError(f"{e} experts do not split evenly over {world} ranks; use a multiple of the world size")
    lo, hi = rank * e // world, (rank + 1) * e // world
    d_in, d_hidden = full.w1.shape[1:]
    local = Experts(hi - lo, d_in, d_hidden, full.w2.shape[2])
    with torch.no_grad():
        for name in ("w1", "b1", "w2", "b2"):
            getattr(local, name).copy_(getattr(full, name)[lo:hi])
    return local


class _Exchange(torch.autograd.Function):
    """all_to_all of rows whose backward sends the gradients back the way the rows came.

    Our own Function over dist.all_to_all_single: torch.distributed.nn's version is deprecated and,
    with gloo, aborts a few percent of worker processes at exit ("terminate called without an
    active exception"); with this one, none of 480 two-rank spawns aborted.
    """

    @staticmethod
    def forward(ctx, t: Tensor, send: list[int], recv: list[int], group) -> Tensor:
        ctx.send, ctx.recv, ctx.group = send, recv, group
        out = t.new_empty((sum(recv),) + tuple(t.shape[1:]))
        dist.all_to_all_single(out, t.contiguous(), output_split_sizes=recv, input_split_sizes=send, group=group)
        return out

    @staticmethod
    def backward(ctx, grad: Tensor):
        back = grad.new_empty((sum(ctx.send),) + tuple(grad.shape[1:]))
        dist.all_to_all_single(
            back, grad.contiguous(), output_split_sizes=ctx.send, input_split_sizes=ctx.recv, group=ctx.group
        )
        return back, None, None, None


def _exchange(t: Tensor, send: list[int], recv: list[int], group) -> Tensor:
    """all_to_all of the rows of t (differentiable): send[r] rows to rank r, recv[r] rows from it."""
    return _Exchange.apply(t, send, recv, group)


def expert_parallel_combine(x: Tensor, route: GateOutput, local: Experts, group=None) -> Tensor:
    """y (N, d_out) for this rank's tokens x (N, d_in) routed by `route`, with experts sharded over ranks."""
    world = dist.get_world_size(group)
    a = route.allocation
    n, e = a.shape
    e_local = local.n_experts
    if e_local * world != e:
        raise ValueError(f"gate has {e} experts but {world} ranks x {e_local} local experts = {e_local * world}")
    g = a.by_unit  # pairs expert by expert, hence rank by rank
    rows, cols = g.rows, a.cols[g.order]
    send_counts = g.counts.view(world, e_local).sum(1)  # (world,) pairs for each owning rank
    recv_counts = torch.empty_like(send_counts)
    dist.all_to_all_single(recv_counts, send_counts, group=group)
    send, recv = send_counts.tolist(), recv_counts.tolist()
    local_ids = (cols % e_local).contiguous()
    recv_ids = local_ids.new_empty(sum(recv))
    dist.all_to_all_single(recv_ids, local_ids, output_split_sizes=recv, input_split_sizes=send, group=group)
    recv_x = _exchange(x[rows], send, recv, group)  # (received pairs, d_in)
    received = Allocation(torch.arange(len(recv_ids), device=x.device), recv_ids, recv_x.new_zeros(0),
                          (len(recv_ids), e_local))  # one row per received pair
    out = local.pairs(recv_x, received)
    back = _exchange(out, recv, send, group)  # (sent pairs, d_out), aligned with rows/cols
    w = a.values[g.order].unsqueeze(-1)
    return back.new_zeros(n, back.shape[-1]).index_add(0, rows, w * back)
