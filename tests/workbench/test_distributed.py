"""The process-group helpers without a process group: hook groups, devices per rank, single-process identities."""

import pytest
import torch

from workbench.distributed import SINGLE, Dist, rank_device, world_size_from_env
from workbench.errors import ConfigError


@pytest.mark.parametrize("n,world", [(4, 2), (5, 2), (3, 3), (7, 3), (2, 1)])
def test_hook_groups_cover_every_hook_once_in_order(n, world):
    items = [f"h{i}" for i in range(n)]
    groups = [Dist(rank=r, world=world).shard(items) for r in range(world)]
    assert sum(groups, []) == items  # contiguous, in order, each hook exactly once
    assert max(map(len, groups)) - min(map(len, groups)) <= 1 and all(groups)


def test_one_gpu_per_process():
    assert rank_device("cuda", Dist(rank=3, world=4, local_rank=1, backend="nccl")) == "cuda:1"
    assert rank_device("cuda", SINGLE) == "cuda" and rank_device("cpu", Dist(rank=1, world=2, local_rank=1)) == "cpu"


def test_single_process_collectives_are_identities():
    x = torch.randn(7, 3)
    assert SINGLE.cat(x) is x and SINGLE.sum(x) is x and SINGLE.objects(5) == [5] and SINGLE.broadcast("a") == "a"
    torch.testing.assert_close(SINGLE.centered_sq_sum(x), (x - x.mean(0)).pow(2).sum())


def test_a_bad_world_size_is_one_line(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "two")
    with pytest.raises(ConfigError, match="torchrun --nproc-per-node N"):
        world_size_from_env()
    monkeypatch.delenv("WORLD_SIZE")
    assert world_size_from_env() == 1
