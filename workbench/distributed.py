"""Multi-process training helpers: the process group torchrun describes, and the few collectives trainers use.

``torchrun --nproc-per-node N -m workbench sae train ...`` starts N copies of the CLI with RANK,
WORLD_SIZE and LOCAL_RANK in the environment; :func:`from_env` checks the setting (device, backend,
batch divisibility) with one-line errors and joins the group: gloo on the CPU, NCCL on GPUs (one GPU
per process, ``cuda:LOCAL_RANK``). Without torchrun it returns the single-process :data:`SINGLE`,
whose collectives are identities, so a trainer is written once for both.

Two ways to use N processes (``TrainConfig.distribute``):

- ``data``: data parallel. Every rank holds every SAE (wrapped in DistributedDataParallel) and reads
  its own disjoint shard of each global batch, so gradients averaged over ranks are the one-process
  gradients of the global batch.
- ``hooks``: one process per group of hooks (as sparsify's ``distribute_modules``). Every rank runs
  the model on its own text, the activations at every hook are gathered from all ranks, and each rank
  trains only the SAEs of its own hooks on them.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

from workbench.errors import ConfigError

BACKENDS = ("auto", "gloo", "nccl")


@dataclass(frozen=True)
class Dist:
    """This process's place in the group: rank, world size and the backend (None when single)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    backend: str | None = None

    @property
    def main(self) -> bool:
        """Rank 0 writes the run dir, checkpoints and wandb; the others only compute."""
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ---- collectives (identities in a single process) -------------------------------------------
    def sum(self, t):
        """All-reduce (sum) in place; returns t."""
        if self.active:
            import torch.distributed as dist

            dist.all_reduce(t)
        return t

    def mean(self, t):
        return self.sum(t).div_(self.world) if self.active else t

    def cat(self, t):
        """Rank-ordered concatenation along dim 0 of every rank's t; ranks may hold different row counts."""
        if not self.active:
            return t
        import torch
        import torch.distributed as dist

        n = torch.tensor([t.shape[0]], device=t.device)
        sizes = [torch.zeros_like(n) for _ in range(self.world)]
        dist.all_gather(sizes, n)
        sizes = [int(s) for s in sizes]
        most = max(sizes)
        padded = t if t.shape[0] == most else torch.cat([t, t.new_zeros(most - t.shape[0], *t.shape[1:])])
        parts = [torch.empty_like(padded) for _ in range(self.world)]
        dist.all_gather(parts, padded.contiguous())
        return torch.cat([p[:s] for p, s in zip(parts, sizes)])

    def objects(self, obj: Any) -> list:
        """Every rank's obj, in rank order (pickled; for small states such as data positions)."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's obj on every rank."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            dist.barrier()

    def centered_sq_sum(self, x):
        """sum over the global batch of |x - mean(x)|^2 (two passes: the mean first, as one process does)."""
        import torch

        if not self.active:
            return (x - x.mean(0)).pow(2).sum()
        s = self.sum(torch.cat([x.detach().sum(0), x.new_tensor([x.shape[0]])]))
        mean = s[:-1] / s[-1]
        return self.sum((x.detach() - mean).pow(2).sum().reshape(1))[0]

    def shard(self, items: list) -> list:
        """This rank's share of items (contiguous, sizes differing by at most one): the hook groups."""
        n, w, r = len(items), self.world, self.rank
        lo = r * (n // w) + min(r, n % w)
        return items[lo: lo + n // w + (r < n % w)]


SINGLE = Dist()


def world_size_from_env() -> int:
    """WORLD_SIZE as torchrun sets it (1 without torchrun); a malformed value is a one-line error."""
    raw = os.environ.get("WORLD_SIZE", "1")
    if not raw.isdigit() or int(raw) < 1:
        raise ConfigError(f"WORLD_SIZE={raw!r} is not a positive integer; launch with torchrun --nproc-per-node N")
    return int(raw)


def check_setting(world: int, device: str, backend: str, batch_size: int, mode: str = "data") -> str:
    """The backend to use for this setting, or a one-line error naming the fix. No process group needed."""
    if backend not in BACKENDS:
        raise ConfigError(f"backend: {backend!r} is not one of {', '.join(BACKENDS)}; pass --backend auto")
    on_gpu = str(device).startswith("cuda")
    if backend == "nccl":
        import torch

        if not on_gpu or not torch.cuda.is_available():
            where = "no GPU is visible" if not torch.cuda.is_available() else f"--device is {device}"
            raise ConfigError(f"backend: NCCL needs GPUs, but {where}; pass --backend gloo (or auto) for CPU "
                              f"processes, or --device cuda on a machine with GPUs")
        if world > torch.cuda.device_count():
            raise ConfigError(f"backend: NCCL with {world} processes needs {world} GPUs, this machine has "
                              f"{torch.cuda.device_count()}; pass --nproc-per-node {torch.cuda.device_count()} to torchrun")
    chosen = backend if backend != "auto" else ("nccl" if on_gpu else "gloo")
    if mode == "data" and batch_size % world:
        lower = batch_size - batch_size % world
        raise ConfigError(f"batch_size: --batch-size {batch_size} is the global batch and does not split over "
                          f"{world} processes; pass --batch-size {lower or world} (a multiple of {world}) "
                          f"or a --nproc-per-node that divides {batch_size}")
    return chosen


def from_env(device: str, backend: str = "auto", batch_size: int = 1, mode: str = "data") -> Dist:
    """Join the torchrun process group (or return SINGLE without torchrun); validates first."""
    world = world_size_from_env()
    if world == 1:
        return SINGLE
    chosen = check_setting(world, device, backend, batch_size, mode)
    import torch
    import torch.distributed as dist

    rank, local = int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        if str(device) == "cuda":
            torch.cuda.set_device(local)  # one GPU per process; "cuda" then means this process's GPU
        missing = [v for v in ("MASTER_ADDR", "MASTER_PORT") if v not in os.environ]
        if missing:
            raise ConfigError(f"WORLD_SIZE={world} is set but {' and '.join(missing)} not: launch with "
                              f"torchrun --nproc-per-node {world} -m workbench ..., or unset WORLD_SIZE")
        dist.init_process_group(chosen)
    return Dist(rank=rank, world=world, local_rank=local, backend=chosen)


def current(backend: str | None = None) -> Dist:
    """The Dist of an already initialised process group (tests start one with torch.multiprocessing)."""
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return SINGLE
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=int(os.environ.get("LOCAL_RANK", dist.get_rank())),
                backend=backend or dist.get_backend())


def rank_device(device: str, d: Dist) -> str:
    """cuda -> cuda:LOCAL_RANK with several processes (one GPU per process); any other device as given."""
    return f"cuda:{d.local_rank}" if d.active and device == "cuda" else device
