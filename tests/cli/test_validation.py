"""Arguments are checked before a model loads: a typo costs no model load, no run dir and no traceback."""

from __future__ import annotations

import pytest
import torch

from cli.main import main


class ModelLoaded(AssertionError):
    pass


@pytest.fixture
def no_model(monkeypatch):
    """Any model load fails the test."""
    def boom(*a, **k):
        raise ModelLoaded(f"load_model{a} was called before the arguments were checked")

    monkeypatch.setattr("workbench.models.load_model", boom)


@pytest.fixture
def bad_cache(tmp_path):
    """A cache of another hook's activations."""
    from workbench.cache import CacheWriter

    w = CacheWriter(tmp_path / "cache-l0", d=32, meta={"model": "toy-ioi", "hook": "blocks.0.hook_resid_post"})
    w.write(torch.randn(300, 32))
    w.close()
    return tmp_path / "cache-l0"


def _run(argv, capsys):
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2 and "Traceback" not in err, err
    assert len(err.strip().splitlines()) == 1, err  # one line
    return err


@pytest.mark.parametrize("argv,expect", [
    (["sae", "train", "--cache", "/nonexistent/cache"], "/nonexistent/cache"),
    (["sae", "train", "--hook", "blocks.1.resid_post"], "hook: 'blocks.1.resid_post' is not a TransformerLens hook name"),
    (["sae", "train", "--name", "../x"], "name: '../x' is not a valid run name"),
    (["sae", "train", "--name", ".hidden"], "not a valid run name"),
    (["sae", "train", "--arch", "gated"], "arch: unknown value 'gated'"),
    (["acts", "cache", "--name", "a/b/c"], "name: 'a/b/c' is not a valid run name"),
    (["acts", "cache", "--tokens", "0"], "tokens: must be positive"),
    (["acts", "cache", "--hook", "resid_post"], "hook:"),
    (["model", "train", "--name", "a/b"], "not a valid run name"),
    (["ioi", "locate", "--name", "../up"], "not a valid run name"),
    (["ioi", "eval", "--location", "blocks.1.hook_resid_post@NOPE"], "location: cannot parse"),
    (["ioi", "eval", "--locations", "/nonexistent/locate-run"], "does not exist"),
    (["ioi", "eval", "--location", "blocks.1.hook_resid_post@END", "--sae", "/nonexistent/sae-run"], "/nonexistent/sae-run"),
    (["moe", "train", "--task", "synthetic", "--name", "../x"], "not a valid run name"),
    (["moe", "bench", "--task", "synthetic", "--bench-name", "a/b"], "not a valid run name"),
])
def test_bad_arguments_fail_before_the_model_loads(argv, expect, no_model, tmp_path, capsys):
    runs = tmp_path / "runs"
    err = _run([*argv, "--runs-dir", str(runs)], capsys)
    assert expect in err
    assert not runs.exists() or not any(runs.iterdir())  # no run dir either


def test_a_cache_of_another_hook_fails_before_the_model_loads(bad_cache, no_model, tmp_path, capsys):
    err = _run(["sae", "train", "--cache", str(bad_cache), "--runs-dir", str(tmp_path / "runs")], capsys)
    assert "hook: the cache" in err and "blocks.0.hook_resid_post" in err


def test_the_check_would_see_a_load(no_model, tmp_path):
    """Good arguments do reach the model load (so the tests above are not vacuous)."""
    with pytest.raises(ModelLoaded):
        main(["ioi", "locate", "--runs-dir", str(tmp_path), "--quiet"])


@pytest.mark.parametrize("argv", [["ioi", "locate", "--name", "taken"], ["sae", "train", "--name", "taken"],
                                  ["model", "train", "--name", "taken"], ["acts", "cache", "--name", "taken"],
                                  ["moe", "train", "--task", "synthetic", "--name", "taken"]])
def test_a_taken_run_name_fails_before_the_model_loads(argv, no_model, tmp_path, capsys):
    from workbench.runs import Run

    Run.create("sae", {}, name="taken", root=tmp_path)
    err = _run([*argv, "--runs-dir", str(tmp_path)], capsys)
    assert "already exists" in err and "--resume" in err


def test_a_used_bench_name_fails_before_training(tmp_path, capsys):
    from workbench.runs import Run

    Run.create("moe", {}, name="topk-s0", root=tmp_path / "b")
    err = _run(["moe", "bench", "--task", "synthetic", "--gates", "topk", "--bench-name", "b", "--runs-dir", str(tmp_path)], capsys)
    assert "already holds bench runs" in err


def test_find_locations_names_the_missing_ones_and_what_the_run_has(tmp_path):
    """Locations of a locate run by the names it writes, in the order asked; a missing one is a ConfigError
    that names it and lists what the run has (the bench scripts turn it into a usage error)."""
    import json

    from cli.ioi import find_locations
    from workbench.errors import ConfigError

    run = tmp_path / "locate"
    run.mkdir()
    sections = [{"name": "a", "locations": ["blocks.0.attn.hook_z[3]@END", "blocks.1.attn.hook_z[1]@END"], "description": "",
                 "evidence": {}}]
    (run / "locations.json").write_text(json.dumps({"cross_sections": sections}))
    locs = find_locations(str(run), ["blocks.1.attn.hook_z[1]@END", "blocks.0.attn.hook_z[3]@END"])
    assert [str(loc) for loc in locs] == ["blocks.1.attn.hook_z[1]@END", "blocks.0.attn.hook_z[3]@END"]
    with pytest.raises(ConfigError, match=r"blocks.9.hook_resid_post@END not in .* it has blocks.0.attn.hook_z\[3\]@END, "):
        find_locations(str(run), ["blocks.9.hook_resid_post@END"])
