"""Multi-process SAE training over 2 CPU processes (gloo): data parallel equals one process at the same
global batch, resumes under DDP, reads disjoint cache shards per rank; hook groups split the hooks; bad
settings are one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from workbench.errors import ConfigError
from workbench.runs import Run

ROOT = Path(__file__).resolve().parents[2]
HOOKS = ["blocks.0.hook_resid_post", "blocks.1.hook_resid_post"]

needs_gloo = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available in this build")


class Kill(Exception):
    """Stands in for every process dying after a step."""


def _final(run_dir) -> dict:
    from sae.trainer import checkpoint_store
    from workbench.runs import Run

    return torch.load(checkpoint_store(Run.open(run_dir)).paths()[-1], weights_only=False)["sae"]


def _data_parallel_worker(rank: int, world: int, init_file: str, cfgs: dict) -> None:
    """Each rank trains the same configs; `cut` is killed after step 6 and resumed (checkpoint at step 4)."""
    os.environ.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from sae.trainer import train
    from workbench.distributed import current

    group = current()
    for name in ("topk", "relu"):
        train(cfgs[name], progress=False, group=group)

    def kill(completed):
        if completed == 6:
            raise Kill

    try:
        train(cfgs["cut"], progress=False, group=group, on_step=kill)
    except Kill:
        pass
    seen = []
    train(cfgs["cut"], resume=Path(cfgs["cut"].runs_dir) / cfgs["cut"].name, progress=False, group=group, on_step=seen.append)
    Path(cfgs["cut"].runs_dir, f"seen-{rank}.json").write_text(json.dumps(seen))
    dist.barrier()
    dist.destroy_process_group()


@pytest.fixture
def cache(tiny_cfg, tmp_path):
    from workbench.cache import CacheWriter

    g = torch.Generator().manual_seed(0)
    w = CacheWriter(tmp_path / "cache", d=32, meta={"model": tiny_cfg().acts.model, "hook": "blocks.1.hook_resid_post"},
                    shard_rows=700)
    w.write(torch.randn(2000, 32, generator=g) * 3 + 1)
    w.close()
    return str(tmp_path / "cache")


@needs_gloo
@pytest.mark.timeout(600)
def test_data_parallel_equals_one_process_and_resumes(tiny_cfg, tiny_model, cache):
    from sae.trainer import train

    cfgs = {"topk": tiny_cfg("topk", name="ddp-topk", cache=cache),
            "relu": tiny_cfg("relu-l1", aux="none", name="ddp-relu", cache=cache),
            "cut": tiny_cfg("topk", name="ddp-cut", cache=cache)}
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_data_parallel_worker, args=(2, os.path.join(d, "init"), cfgs), nprocs=2, join=True)
    runs = Path(cfgs["topk"].runs_dir)
    for name, arch, aux in (("topk", "topk", "aux_k"), ("relu", "relu-l1", "none")):
        one = train(tiny_cfg(arch, aux=aux, name=f"one-{name}", cache=cache), model=tiny_model, progress=False)
        a, b = _final(one.path), _final(runs / f"ddp-{name}")
        assert a.keys() == b.keys()
        for k in a:  # parameters and the latent statistics (dead counters, densities) of the global batch
            torch.testing.assert_close(b[k], a[k], rtol=1e-4, atol=1e-5, msg=f"{name}: {k} differs from one process")
        # logged losses are those of the global batch
        fa = [r["fvu"] for r in one.metrics() if "fvu" in r]
        fb = [r["fvu"] for r in Run.open(runs / f"ddp-{name}").metrics() if "fvu" in r]
        assert fa == pytest.approx(fb, rel=1e-4, abs=1e-6)
    # resume under DDP: continued from the step-4 checkpoint on both ranks, ends where the uninterrupted run did
    assert [json.loads((runs / f"seen-{r}.json").read_text()) for r in (0, 1)] == [list(range(5, 13))] * 2
    a, b = _final(runs / "ddp-topk"), _final(runs / "ddp-cut")
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # only rank 0 wrote: no second run dir, one set of metrics rows
    assert sorted(p.name for p in runs.iterdir() if p.is_dir()) == ["ddp-cut", "ddp-relu", "ddp-topk", "one-relu", "one-topk"]
    assert json.loads((runs / "ddp-cut" / "status.json").read_text())["status"] == "done"


def test_cache_shards_are_disjoint_per_rank_and_make_up_the_global_batch(cache):
    from workbench.cache import ActivationCache

    c = ActivationCache(cache)
    one = c.batches(128, seed=3, start_batch=5)
    ranks = [c.batches(128, seed=3, start_batch=5, rank=r, world=2) for r in range(2)]
    for _ in range(20):  # across an epoch boundary (15 batches per epoch)
        whole = next(one)
        parts = [next(it) for it in ranks]
        assert [len(p) for p in parts] == [64, 64]
        assert torch.equal(torch.cat(parts), whole)
        rows0, rows1 = ({tuple(r.tolist()) for r in p} for p in parts)
        assert not rows0 & rows1  # no row read by both ranks
    with pytest.raises(Exception, match="multiple of 3"):
        next(c.batches(128, rank=0, world=3))


def test_several_hooks_from_one_forward_equal_separate_runs(tiny_cfg, tiny_model):
    from sae.trainer import train, train_many

    base = tiny_cfg(tokens=128 * 6)
    cfgs = [replace(base, name=f"many-{h}", acts=replace(base.acts, hook=h)) for h in HOOKS]
    runs = train_many(cfgs, model=tiny_model, progress=False)
    assert [r.name for r in runs] == [f"many-{h}" for h in HOOKS]
    for h, run in zip(HOOKS, runs):
        alone = train(replace(base, name=f"alone-{h}", acts=replace(base.acts, hook=h)), model=tiny_model, progress=False)
        a, b = _final(alone.path), _final(run.path)
        for k in a:
            assert torch.equal(a[k], b[k]), f"{h}: {k}"
        assert json.loads((run.path / "cfg.json").read_text())["hook_name"] == h


def test_hooks_trained_together_must_share_their_settings(tiny_cfg, tiny_model, cache):
    from sae.trainer import train_many

    base = tiny_cfg()
    other = replace(base, name="b", acts=replace(base.acts, hook=HOOKS[0]), tokens=128 * 3)
    with pytest.raises(ConfigError, match="differ in tokens"):
        train_many([base, other], model=tiny_model, progress=False)
    with pytest.raises(ConfigError, match="pass each --hook once"):
        train_many([base, replace(base, name="c")], model=tiny_model, progress=False)
    with pytest.raises(ConfigError, match="--cache holds one hook"):
        c = tiny_cfg(cache=cache)
        train_many([c, replace(c, name="d", acts=replace(c.acts, hook=HOOKS[0]))], model=tiny_model, progress=False)


def _hook_group_worker(rank: int, world: int, init_file: str, cfgs: list) -> None:
    os.environ.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from sae.trainer import Source, train_many
    from workbench.distributed import current
    from workbench.models import load_model

    group = current()
    runs = train_many(cfgs, progress=False, group=group)
    # what a rank's stream yields: the activations of both ranks' text at its own hooks
    model = load_model(cfgs[0].acts.model)
    src = Source(cfgs[0], model, hooks=HOOKS, group=group, keep=group.shard(HOOKS))
    x = src.next_all()
    before = src.stream.tokens_seen
    chunk = src.stream.forward_chunks()
    own = src.stream.tokens_seen - before  # rows of this rank's own text in that forward pass
    Path(cfgs[0].runs_dir, f"rank-{rank}.json").write_text(json.dumps(
        {"runs": [r.name for r in runs], "batch": {h: list(v.shape) for h, v in x.items()},
         "chunk_rows": {h: len(v) for h, v in chunk.items()}, "own_rows": own}))
    dist.barrier()
    dist.destroy_process_group()


@needs_gloo
@pytest.mark.timeout(600)
def test_hook_groups_give_each_process_its_hooks_and_everyones_tokens(tiny_cfg):
    base = tiny_cfg(tokens=128 * 4, distribute="hooks")
    cfgs = [replace(base, name=f"g-{h}", acts=replace(base.acts, hook=h)) for h in HOOKS]
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_hook_group_worker, args=(2, os.path.join(d, "init"), cfgs), nprocs=2, join=True)
    runs = Path(base.runs_dir)
    info = [json.loads((runs / f"rank-{r}.json").read_text()) for r in (0, 1)]
    assert [i["runs"] for i in info] == [[f"g-{HOOKS[0]}"], [f"g-{HOOKS[1]}"]]  # one process per hook group
    for r, i in enumerate(info):
        assert i["batch"] == {HOOKS[r]: [128, 32]}
        # a forward pass yields the rows of both ranks' text at the rank's own hook
        assert i["chunk_rows"] == {HOOKS[r]: info[0]["own_rows"] + info[1]["own_rows"]}
    for h in HOOKS:
        assert json.loads((runs / f"g-{h}" / "status.json").read_text())["status"] == "done"
        assert json.loads((runs / f"g-{h}" / "cfg.json").read_text())["hook_name"] == h


# ---- bad settings: one line that names the fix ---------------------------------------------------
def test_world_size_must_divide_the_global_batch():
    from workbench.distributed import check_setting

    with pytest.raises(ConfigError, match=r"--batch-size 4096 .* 3 processes; pass --batch-size 4095"):
        check_setting(3, "cpu", "auto", 4096)
    assert check_setting(2, "cpu", "auto", 4096) == "gloo"
    assert check_setting(3, "cpu", "auto", 4096, mode="hooks") == "gloo"  # hook groups do not split the batch


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_nccl_and_cuda_without_a_gpu_name_the_fix():
    from workbench.devices import check_device
    from workbench.distributed import check_setting

    with pytest.raises(ConfigError, match="NCCL needs GPUs.*pass --backend gloo"):
        check_setting(2, "cpu", "nccl", 4096)
    with pytest.raises(ConfigError, match="NCCL needs GPUs"):
        check_setting(2, "cuda", "nccl", 4096)
    with pytest.raises(ConfigError, match="asks for a GPU.*pass --device cpu"):
        check_device("cuda")
    check_device("cpu")


def _cli(*argv, env=None, timeout=300):
    e = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", **(env or {})}
    return subprocess.run(list(argv), capture_output=True, text=True, env=e, cwd=ROOT, timeout=timeout)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU-only message")
def test_cli_device_cuda_without_a_gpu_is_one_line(tiny_model_dir, tmp_path):
    out = _cli(sys.executable, "-m", "workbench", "sae", "train", "--model", str(tiny_model_dir), "--device", "cuda",
               "--runs-dir", str(tmp_path), "--quiet")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert out.stderr.strip().count("\n") == 0 and "pass --device cpu" in out.stderr


def test_cli_bad_world_settings_are_one_line(tiny_model_dir, tmp_path):
    env = {"WORLD_SIZE": "3", "RANK": "0", "LOCAL_RANK": "0"}  # what torchrun sets; fails before joining a group
    out = _cli(sys.executable, "-m", "workbench", "sae", "train", "--model", str(tiny_model_dir), "--batch-size", "128",
               "--runs-dir", str(tmp_path), "--quiet", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "multiple of 3" in out.stderr
    out = _cli(sys.executable, "-m", "workbench", "sae", "train", "--model", str(tiny_model_dir), "--batch-size", "126",
               "--arch", "mutual-choice", "--runs-dir", str(tmp_path), "--quiet", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr and "allocates over the whole batch" in out.stderr


@needs_gloo
@pytest.mark.timeout(600)
def test_torchrun_trains_data_parallel_and_only_rank_0_writes(tiny_model_dir, cache, tmp_path):
    torchrun = Path(sys.executable).with_name("torchrun")
    if not torchrun.exists():
        pytest.skip("torchrun is not installed next to this python")
    runs = tmp_path / "tr-runs"
    out = _cli(str(torchrun), "--standalone", "--nproc-per-node", "2", "-m", "workbench", "sae", "train",
               "--model", str(tiny_model_dir), "--cache", cache, "--batch-size", "128", "--tokens", "768", "--k", "4",
               "--expansion", "2", "--eval-tokens", "256", "--dead-window", "512", "--runs-dir", str(runs),
               "--name", "tr", "--quiet", timeout=500)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.count("run ") == 1 and "FVU" in out.stdout  # rank 0 reports
    assert [p.name for p in runs.iterdir()] == ["tr"]
    assert json.loads((runs / "tr" / "status.json").read_text())["status"] == "done"
    assert json.loads((runs / "tr" / "config.json").read_text())["config"]["acts"]["batch_size"] == 128


# ---- GPUs: skipped without them -------------------------------------------------------------------
def _nccl_worker(rank: int, world: int, init_file: str, cfg) -> None:
    os.environ.update(OMP_NUM_THREADS="1", WANDB_MODE="offline", WANDB_SILENT="true", LOCAL_RANK=str(rank))
    torch.cuda.set_device(rank)
    dist.init_process_group("nccl", init_method=f"file://{init_file}", rank=rank, world_size=world)
    from sae.trainer import train
    from workbench.distributed import current

    train(cfg, progress=False, group=current())
    dist.barrier()
    dist.destroy_process_group()


@pytest.mark.skipif(torch.cuda.device_count() < 2 or not dist.is_nccl_available(), reason="needs 2 CUDA GPUs and NCCL")
@pytest.mark.timeout(600)
def test_nccl_data_parallel_equals_one_gpu(tiny_cfg, cache):
    from sae.trainer import train

    cfg = tiny_cfg("topk", name="nccl", cache=cache)
    cfg = replace(cfg, acts=replace(cfg.acts, device="cuda"))
    with tempfile.TemporaryDirectory() as d:
        mp.spawn(_nccl_worker, args=(2, os.path.join(d, "init"), cfg), nprocs=2, join=True)
    one = train(replace(cfg, name="one-gpu"), progress=False)
    a, b = _final(one.path), _final(Path(cfg.runs_dir) / "nccl")
    for k in a:
        torch.testing.assert_close(b[k].cpu(), a[k].cpu(), rtol=1e-3, atol=1e-4, msg=k)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_train_on_cuda_end_to_end_with_several_hooks(tiny_cfg):
    """--device cuda streams from the model on the GPU and trains one SAE per hook from one forward."""
    from sae.trainer import train_many

    base = tiny_cfg(tokens=128 * 4)
    base = replace(base, acts=replace(base.acts, device="cuda"))
    runs = train_many([replace(base, name=f"cuda-{h}", acts=replace(base.acts, hook=h)) for h in HOOKS], progress=False)
    for r in runs:
        assert r.status() == "done" and r.read_json("eval.json")["fvu"] < 2
