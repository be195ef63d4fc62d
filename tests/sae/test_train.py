"""Training: resume is bit-identical, NaN stops cleanly, config errors come early, the CLI works end to end."""

import json
from pathlib import Path

import pytest
import torch

from sae.trainer import Diverged, Source, checkpoint_store, train
from workbench.errors import ConfigError
from workbench.runs import Run


class Kill(KeyboardInterrupt):
    """Stands in for the process being stopped (Ctrl-C, or SIGTERM, which the CLI turns into KeyboardInterrupt)."""


def _weights(run):
    ck = torch.load(checkpoint_store(run).paths()[-1], weights_only=False)
    return ck["sae"]


def _kill_at(n):
    def hook(completed):
        if completed == n:
            raise Kill

    return hook


@pytest.mark.parametrize("arch,aux", [("topk", "aux_k"), ("mutual-choice", "aux_zipf")])
def test_interrupt_and_resume_is_bit_identical(tiny_cfg, tiny_model, arch, aux):
    full = train(tiny_cfg(arch, aux, name="full"), model=tiny_model, progress=False)
    cut_cfg = tiny_cfg(arch, aux, name="cut")
    with pytest.raises(Kill):
        train(cut_cfg, model=tiny_model, progress=False, on_step=_kill_at(6))  # last checkpoint: step 4
    assert json.loads((full.path.parent / "cut" / "status.json").read_text())["status"] == "interrupted"
    seen = []
    resumed = train(cut_cfg, resume=full.path.parent / "cut", model=tiny_model, progress=False, on_step=seen.append)
    assert seen == list(range(5, 13))  # continued from the step-4 checkpoint, not from scratch
    a, b = _weights(full), _weights(resumed)
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k  # parameters, thresholds, densities, dead counters
    # metrics after the resume point are recomputed, not duplicated
    assert [r["step"] for r in full.metrics()] == [r["step"] for r in resumed.metrics()]
    assert full.read_json("eval.json")["fvu"] == resumed.read_json("eval.json")["fvu"]


def test_resume_from_a_cache_is_bit_identical(tiny_cfg, tiny_model, tmp_path):
    from workbench.cache import CacheWriter

    g = torch.Generator().manual_seed(0)
    w = CacheWriter(tmp_path / "cache", d=32, meta={"model": tiny_cfg().acts.model, "hook": "blocks.1.hook_resid_post"},
                    shard_rows=700)
    w.write(torch.randn(2000, 32, generator=g))
    w.close()
    full = train(tiny_cfg("feature-choice", name="full", cache=str(tmp_path / "cache")), model=tiny_model, progress=False)
    cut = tiny_cfg("feature-choice", name="cut", cache=str(tmp_path / "cache"))
    with pytest.raises(Kill):
        train(cut, model=tiny_model, progress=False, on_step=_kill_at(11))
    seen = []
    resumed = train(cut, resume=full.path.parent / "cut", model=tiny_model, progress=False, on_step=seen.append)
    assert seen == [9, 10, 11, 12]
    a, b = _weights(full), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_nan_activations_stop_with_step_and_last_checkpoint(tiny_cfg, tiny_model, monkeypatch):
    real_next = Source.__next__
    calls = {"n": 0}

    def poisoned(self):
        x = real_next(self)
        calls["n"] += 1
        if calls["n"] == 7:
            x[3, 5] = float("nan")
        return x

    monkeypatch.setattr(Source, "__next__", poisoned)
    cfg = tiny_cfg(name="nan")
    with pytest.raises(Diverged) as e:
        train(cfg, model=tiny_model, progress=False)
    msg = str(e.value)
    assert "step 7" in msg and "step-00000004.pt" in msg and "non-finite" in msg
    run = Run.open(Path(cfg.runs_dir) / "nan")
    assert [p.name for p in checkpoint_store(run).paths()] == ["step-00000004.pt"]
    assert not (run.path / "sae_weights.safetensors").exists()
    assert run.status() == "failed"


def test_nan_loss_stops_before_the_update(tiny_cfg, tiny_model, monkeypatch):
    import sae.trainer as tr

    real = tr.fvu
    calls = {"n": 0}

    def bad_fvu(x, x_hat, den=None):
        calls["n"] += 1
        return real(x, x_hat, den) * (float("inf") if calls["n"] == 3 else 1.0)

    monkeypatch.setattr(tr, "fvu", bad_fvu)
    with pytest.raises(Diverged, match=r"step 3: loss is inf.*no checkpoint was written yet"):
        train(tiny_cfg(name="inf"), model=tiny_model, progress=False)


@pytest.mark.parametrize("change,field", [
    (dict(sae=dict(k=100)), "k"),  # d_sae = 2 * 32 = 64 < k: caught once the hook width is known
    (dict(sae=dict(d_in=48)), "d_in"),
])
def test_errors_that_need_the_hook_width_come_before_the_run_dir(tiny_cfg, tiny_model, change, field):
    from dataclasses import replace

    cfg = tiny_cfg(name="bad")
    cfg = replace(cfg, sae=replace(cfg.sae, **change["sae"]))
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        train(cfg, model=tiny_model, progress=False)
    assert not Path(cfg.runs_dir, "bad").exists()


@pytest.mark.parametrize("kw,field", [
    (dict(k=0), "k"), (dict(expansion=0), "expansion"), (dict(d_sae=-3), "d_sae"), (dict(k=10, d_sae=8), "k"),
    (dict(arch="topk", capacity="zipf"), "capacity"), (dict(arch="gated"), "arch"),
])
def test_sae_config_errors(kw, field):
    from sae.config import SAEConfig

    with pytest.raises(ConfigError, match=rf"^{field}:"):
        SAEConfig(**kw)


@pytest.mark.parametrize("kw,field", [(dict(tokens=0), "tokens"), (dict(tokens=10), "tokens"), (dict(aux="aux_q"), "aux"),
                                      (dict(lr=-1.0), "lr"), (dict(checkpoint_every=0), "checkpoint_every")])
def test_train_config_errors(tiny_cfg, kw, field):
    with pytest.raises(ConfigError, match=rf"^{field}:"):
        tiny_cfg(**kw)


def test_cli_train_then_eval_end_to_end_with_wandb_offline(tiny_model_dir, tmp_path, capsys, monkeypatch):
    from cli.main import main

    monkeypatch.setenv("WANDB_MODE", "offline")
    runs = tmp_path / "runs"
    rc = main(["sae", "train", "--model", str(tiny_model_dir), "--hook", "blocks.1.hook_resid_post", "--arch", "feature-choice",
               "--k", "4", "--expansion", "2", "--tokens", "1_024", "--batch-size", "128", "--seq-batch", "16",
               "--shuffle-buffer", "256", "--eval-tokens", "256", "--dead-window", "384", "--log-every", "2",
               "--runs-dir", str(runs), "--name", "e2e", "--wandb-project", "p", "--wandb-tags", "sweep-a", "fc",
               "--wandb-group", "sweep-a", "--quiet"])
    assert rc == 0
    run = runs / "e2e"
    for f in ("config.json", "cfg.json", "sae_weights.safetensors", "sae_stats.safetensors", "eval.json", "metrics.jsonl",
              "status.json"):
        assert (run / f).is_file(), f
    ev = json.loads((run / "eval.json").read_text())
    assert ev["arch"] == "feature-choice" and list(ev["modes"]) == ["threshold", "batch"]
    # the headline is the saved SAE's inference mode; batch mode only under modes
    assert ev["mode"] == "threshold" and ev["normalize"] == "per_token"
    inf = ev["modes"]["threshold"]
    assert (ev["fvu"], ev["ce_recovered"], ev["l0_mean"]) == (inf["fvu"], inf["ce_recovered"], inf["l0_mean"])
    assert ev["dead_fraction"] == inf["dead_fraction"] and ev["dead_window"] == inf["dead_window"] >= 384
    assert ev["hook"] == "blocks.1.hook_resid_post"
    assert list(run.glob("wandb/offline-run-*/run-*.wandb")), "wandb offline files missing"
    assert json.loads((run / "status.json").read_text())["status"] == "done"
    captured = capsys.readouterr()
    _check_wandb(run, captured.err)
    out = captured.out.splitlines()
    first = next(i for i, line in enumerate(out) if "FVU" in line)
    assert out[first].strip().startswith("saved SAE (threshold mode): FVU") and "CE recovered" in out[first]
    assert out[first + 1].strip().startswith("batch mode (the training rule")
    assert main(["sae", "eval", str(run), "--tokens", "256"]) == 0
    assert "saved SAE (threshold mode)" in capsys.readouterr().out
    assert main(["runs", "--runs-dir", str(runs)]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("e2e"))
    assert "done" in line and f"threshold mode: FVU {inf['fvu']:.4f}  CE recovered" in line


def _check_wandb(run, err: str):
    """The offline wandb run, read back: where it is, tags and group, the resolved lr, namespaced metrics, the
    latent-density histogram, the weights as an artifact."""
    import math

    from tests.wandb_records import offline_run

    got = offline_run(run)
    assert f"wandb sync {got['dir'].resolve()}" in err
    assert got["run"]["tags"] == ["sweep-a", "fc"] and got["run"]["group"] == "sweep-a"
    d_sae = json.loads((run / "config.json").read_text())["config"]["sae"]["d_sae"]
    lr = got["run"]["config"]["lr"]
    assert lr == pytest.approx(2e-4 / math.sqrt(d_sae / 2 ** 14))  # resolved, never null
    assert json.loads((run / "config.json").read_text())["config"]["lr"] == lr
    keys = set().union(*got["history"])
    assert {"train/fvu", "train/l0_mean", "train/dead_fraction", "train/lr", "eval/threshold/fvu", "eval/batch/ce_recovered",
            "train/latent_density_log10/_type"} <= keys
    assert not {k for k in keys if not k.startswith(("train/", "eval/", "_"))}  # every metric is namespaced
    hist = [h for h in got["history"] if "train/latent_density_log10/values" in h]
    assert hist and all(sum(h["train/latent_density_log10/values"]) == d_sae for h in hist)  # one count per latent
    (art,) = got["artifacts"]
    assert art["name"] == "e2e-sae" and art["type"] == "model"
    assert {"sae_weights.safetensors", "cfg.json"} <= set(art["files"]) and art["metadata"]["arch"] == "feature-choice"


def test_cli_resume_rejects_a_changed_flag(tiny_cfg, tiny_model, capsys):
    from cli.main import main

    cfg = tiny_cfg(name="r")
    with pytest.raises(Kill):
        train(cfg, model=tiny_model, progress=False, on_step=_kill_at(5))
    rc = main(["sae", "train", "--k", "8", "--resume", f"{cfg.runs_dir}/r"])
    assert rc == 2 and "k: --resume" in capsys.readouterr().err


def test_cli_reports_bad_hook_width_as_one_line(tiny_model_dir, tmp_path, capsys):
    from cli.main import main

    rc = main(["sae", "train", "--model", str(tiny_model_dir), "--d-in", "64", "--runs-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and "d_in:" in err and "width 32" in err and "Traceback" not in err


def test_resume_skips_a_corrupt_newest_checkpoint(tiny_cfg, tiny_model):
    full = train(tiny_cfg(name="full"), model=tiny_model, progress=False)
    cfg = tiny_cfg(name="torn")
    with pytest.raises(Kill):
        train(cfg, model=tiny_model, progress=False, on_step=_kill_at(10))  # checkpoints at 4 and 8
    run = Run.open(Path(cfg.runs_dir) / "torn")
    newest = checkpoint_store(run).paths()[-1]
    newest.write_bytes(newest.read_bytes()[:1000])  # as if the disk lost its tail
    seen = []
    with pytest.warns(UserWarning, match="unreadable"):
        train(cfg, resume=run.path, model=tiny_model, progress=False, on_step=seen.append)
    assert seen[0] == 5
    a, b = _weights(full), _weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_a_dead_window_as_long_as_the_run_is_flagged(tiny_cfg, tiny_model):
    """With --dead-window >= --tokens no latent can be dead, so aux_k is silently a no-op: warn."""
    import warnings

    from sae.trainer import train

    with pytest.warns(UserWarning, match="aux_k never acts"):
        train(tiny_cfg(dead_window=10_000, tokens=128 * 2, name="long-window"), model=tiny_model, progress=False)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        train(tiny_cfg(dead_window=128, tokens=128 * 2, name="short-window"), model=tiny_model, progress=False)
    assert not [w for w in caught if "dead-window" in str(w.message)]


# ---- the reliability sweep (issue 17) -----------------------------------------------------------
def test_eval_with_no_ce_or_fewer_modes_never_drops_a_stored_field(tiny_cfg, tiny_model, tiny_model_dir, capsys):
    from cli.main import main

    run = train(tiny_cfg("feature-choice", name="ev"), model=tiny_model, progress=False)
    before = run.read_json("eval.json")
    assert before["ce_recovered"] is not None and set(before["modes"]) == {"threshold", "batch"}
    assert main(["sae", "eval", str(run.path), "--no-ce", "--modes", "threshold", "--tokens", "256"]) == 0
    after = run.read_json("eval.json")
    assert after["ce_recovered"] == before["ce_recovered"]  # kept, not overwritten with null
    assert after["modes"]["threshold"]["ce_recovered"] == before["modes"]["threshold"]["ce_recovered"]
    assert after["modes"]["batch"] == before["modes"]["batch"]  # the mode not re-evaluated stays
    assert isinstance(after["modes"]["threshold"]["fvu"], float)
    assert "CE recovered" in capsys.readouterr().out


def test_merge_eval_new_numbers_win_and_nothing_is_lost():
    from sae.trainer import merge_eval

    old = {"fvu": 0.5, "ce_recovered": 0.9, "modes": {"batch": {"fvu": 0.5, "ce_recovered": 0.9}, "threshold": {"fvu": 0.4}}}
    new = {"fvu": 0.3, "ce_recovered": None, "modes": {"batch": {"fvu": 0.3, "ce_recovered": None}}}
    assert merge_eval(old, new) == {"fvu": 0.3, "ce_recovered": 0.9,
                                    "modes": {"batch": {"fvu": 0.3, "ce_recovered": 0.9}, "threshold": {"fvu": 0.4}}}


def test_resuming_a_finished_run_changes_nothing(tiny_cfg, tiny_model):
    cfg = tiny_cfg(name="fin")
    run = train(cfg, model=tiny_model, progress=False)
    rows, ev = (run.path / "metrics.jsonl").read_text(), (run.path / "eval.json").read_text()
    seen = []
    with pytest.warns(UserWarning, match="already finished"):
        train(cfg, resume=run.path, model=tiny_model, progress=False, on_step=seen.append)
    assert seen == [] and (run.path / "metrics.jsonl").read_text() == rows and (run.path / "eval.json").read_text() == ev
    assert sum('"eval/' in line for line in rows.splitlines()) == 1


def test_a_non_finite_evaluation_is_an_error_not_a_result(tiny_cfg, tiny_model, monkeypatch):
    import sae.trainer as trainer

    real = trainer.evaluate_saved

    def blown_up(*a, **k):
        res = real(*a, **k)
        res["batch"]["fvu"] = float("inf")
        return res

    monkeypatch.setattr(trainer, "evaluate_saved", blown_up)
    cfg = tiny_cfg(name="inf")
    with pytest.raises(Diverged, match=r"non-finite fvu, modes.batch.fvu.*nothing was written to eval.json"):
        train(cfg, model=tiny_model, progress=False)
    run = Run.open(Path(cfg.runs_dir) / "inf")
    assert run.status() == "failed" and not (run.path / "eval.json").exists()


def _cache_of(tmp_path, x):
    from workbench.cache import CacheWriter

    w = CacheWriter(tmp_path / "cache", d=x.shape[1], meta={"hook": "blocks.1.hook_resid_post"})
    w.write(x)
    return w.close()


def test_a_manifest_d_that_does_not_match_the_shards_fails_before_training(tiny_cfg, tmp_path):
    from workbench.errors import CacheError

    path = _cache_of(tmp_path, torch.randn(2000, 32))
    m = json.loads((path / "manifest.json").read_text())
    m["d"] = 16
    (path / "manifest.json").write_text(json.dumps(m))
    cfg = tiny_cfg(name="dm", cache=str(path))
    with pytest.raises(CacheError, match="width 32, but .* says d=16"):
        train(cfg, model=None, progress=False)  # before the model loads and before the run dir exists
    assert not (Path(cfg.runs_dir) / "dm").exists()


def test_a_cache_with_huge_values_fails_before_training(tiny_cfg, tmp_path):
    from workbench.errors import CacheError

    x = torch.randn(2000, 32)
    x[1234, 5] = 1e30  # finite, but its square is not
    cfg = tiny_cfg(name="huge", cache=str(_cache_of(tmp_path, x)))
    with pytest.raises(CacheError, match=r"values up to 1e\+30"):
        train(cfg, model=None, progress=False)
    assert not (Path(cfg.runs_dir) / "huge").exists()


def test_a_run_held_by_a_live_process_is_not_resumed(tiny_cfg, tiny_model):
    import os
    import socket

    from workbench.errors import RunError
    from workbench.runlock import LOCK

    cfg = tiny_cfg(name="live")
    with pytest.raises(Kill):
        train(cfg, model=tiny_model, progress=False, on_step=_kill_at(5))
    run = Run.open(Path(cfg.runs_dir) / "live")
    assert not (run.path / LOCK).exists()  # the killed trainer released it
    rows = (run.path / "metrics.jsonl").read_text()
    (run.path / LOCK).write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname(), "started": 0}))
    with pytest.raises(RunError, match=f"in use by pid {os.getppid()}"):
        train(cfg, resume=run.path, model=tiny_model, progress=False)
    assert (run.path / "metrics.jsonl").read_text() == rows and run.status() == "interrupted"


def test_cli_resume_from_a_checkpoint_missing_keys_is_one_line(tiny_cfg, tiny_model, capsys):
    from cli.main import main

    cfg = tiny_cfg(name="keys")
    with pytest.raises(Kill):
        train(cfg, model=tiny_model, progress=False, on_step=_kill_at(5))
    run = Run.open(Path(cfg.runs_dir) / "keys")
    p = checkpoint_store(run).paths()[-1]
    ck = torch.load(p, weights_only=False)
    del ck["opt"], ck["data"]
    torch.save(ck, p)
    assert main(["sae", "train", "--resume", str(run.path), "--quiet"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"workbench sae: error: checkpoint {p} lacks opt, data (it has") and err.count("\n") == 1


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")
def test_cli_cuda_without_a_gpu_is_one_line(tiny_model_dir, tmp_path, capsys):
    from cli.main import main

    rc = main(["sae", "train", "--model", str(tiny_model_dir), "--device", "cuda", "--runs-dir", str(tmp_path), "--quiet"])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("workbench sae: error: device: 'cuda' asks for a GPU, but") and err.count("\n") == 1
    assert not list(tmp_path.iterdir())  # nothing written


def test_any_dead_matches_the_dead_mask_step_by_step_and_after_loading():
    """SAE.any_dead answers from a host-side bound without reading the device, and agrees with the mask."""
    from sae.config import SAEConfig
    from sae.model import build_sae

    sae = build_sae(SAEConfig(arch="topk", k=2, d_sae=32).resolve(8))
    sae.init_weights(torch.Generator().manual_seed(0))
    g = torch.Generator().manual_seed(1)
    for step in range(40):
        x = torch.randn(16, 8, generator=g) + (3.0 if step % 7 == 0 else 0.0)
        for window in (16, 64, 200):
            assert sae.any_dead(window) == bool(sae.dead_mask(window).any()), (step, window)
        sae.update_stats(sae(x), 0.01)
    other = build_sae(sae.cfg)
    other.any_dead(10**9)  # a bound from its own (fresh) counters...
    other.load_state_dict(sae.state_dict())  # ...forgotten when the counters are replaced
    assert other.any_dead(64) == bool(sae.dead_mask(64).any())


def test_deferred_check_reports_the_first_unchecked_step():
    from sae.trainer import DeferredCheck

    c = DeferredCheck()
    assert c.failed() is None
    for step, v in ((3, 1.0), (4, float("nan")), (5, 2.0)):
        c.add(torch.tensor(v), step)
    assert c.failed() == 3 and c.failed() is None  # read once, then reset
    c.add(torch.tensor(1.0), 6)
    assert c.failed() is None


def test_prefetch_gives_the_same_run_and_resumes_exactly(tiny_cfg, tiny_model):
    """--prefetch makes batches in a background thread: same batches in the same order, and a run killed
    and resumed with it ends bit-identical to one trained without it."""
    plain = train(tiny_cfg("topk", "aux_k", name="plain"), model=tiny_model, progress=False)
    cut = tiny_cfg("topk", "aux_k", name="cut", prefetch=2)
    with pytest.raises(Kill):
        train(cut, model=tiny_model, progress=False, on_step=_kill_at(6))
    resumed = train(cut, resume=plain.path.parent / "cut", model=tiny_model, progress=False)
    a, b = _weights(plain), _weights(resumed)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert plain.read_json("eval.json")["fvu"] == resumed.read_json("eval.json")["fvu"]


def test_prefetch_pauses_for_evaluations_during_training(tiny_cfg, tiny_model):
    """With --ce-every the model is also used for evaluations mid-run: the prefetch thread pauses for them
    (batches already made are kept, in order), so the run equals one without prefetch."""
    plain = train(tiny_cfg("topk", "aux_k", name="plain", ce_every=4), model=tiny_model, progress=False)
    pre = train(tiny_cfg("topk", "aux_k", name="pre", ce_every=4, prefetch=3), model=tiny_model, progress=False)
    a, b = _weights(plain), _weights(pre)
    assert all(torch.equal(a[k], b[k]) for k in a)
    ce = lambda run: [r["ce_recovered"] for r in run.metrics() if "ce_recovered" in r]  # noqa: E731
    assert ce(plain) == ce(pre) and len(ce(plain)) == 2  # evaluated at steps 4 and 8
