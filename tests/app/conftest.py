"""Real run dirs for the app tests, made once per session by a tiny pipeline through the CLI front door.

On the tiny random toy-world model (tests/conftest.py): two SAEs (TopK, Feature Choice) trained for a
few steps and analysed, an IOI locate run and an IOI eval of the TopK SAE, a sparse-OT MoE run and a
small gate bench; plus the broken dirs the app must survive (corrupt config.json, unknown kind, a dir
that is not a run, a half-written SAE run, an SAE run with a corrupt eval.json and a truncated table).
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
APP = ROOT / "app"
HOOK = "blocks.1.hook_resid_post"
BROKEN = ("broken-config", "unknown-kind", "not-a-run")


def _cli(*argv: str) -> None:
    from cli.main import main

    rc = main(list(argv))
    assert rc == 0, f"workbench {' '.join(argv)} exited with {rc}"


@pytest.fixture(scope="session")
def app_runs(tiny_model_dir, tmp_path_factory) -> Path:
    """The runs root; `timings` in runs/.timings.json (seconds per step)."""
    root = tmp_path_factory.mktemp("app") / "runs"
    root.mkdir()
    model, runs = str(tiny_model_dir), str(root)
    t = {}

    def step(name, *argv):
        t0 = time.perf_counter()
        _cli(*argv)
        t[name] = round(time.perf_counter() - t0, 2)

    for arch in ("topk", "feature-choice"):
        step(f"sae {arch}", "sae", "train", "--model", model, "--hook", HOOK, "--arch", arch, "--k", "4", "--expansion", "2",
             "--tokens", "1536", "--batch-size", "128", "--seq-batch", "16", "--shuffle-buffer", "256", "--log-every", "2",
             "--eval-tokens", "256", "--warmup-steps", "2", "--dead-window", "512", "--checkpoint-every", "6",
             "--name", f"sae-{arch}", "--runs-dir", runs, "--quiet")
        step(f"analyze {arch}", "sae", "analyze", str(root / f"sae-{arch}"), "--tokens", "2000", "--seq-batch", "32", "--quiet")
    step("ioi locate", "ioi", "locate", "--model", model, "--n-prompts", "40", "--qkv-heads", "2", "--name", "ioi-locate",
         "--runs-dir", runs, "--quiet")
    step("ioi eval", "ioi", "eval", "--model", model, "--location", f"{HOOK}@END", "--sae", str(root / "sae-topk"),
         "--n-train", "100", "--n-eval", "24", "--ks", "1", "2", "--name", "ioi-eval", "--runs-dir", runs, "--quiet")
    step("moe train", "moe", "train", "--task", "synthetic", "--gate", "sparse-ot", "--experts", "4", "--k", "2", "--epochs", "2",
         "--n-train", "600", "--batch-size", "128", "--log-every", "2", "--name", "moe-ot", "--runs-dir", runs, "--quiet")
    step("moe bench", "moe", "bench", "--task", "synthetic", "--gates", "topk,hash", "--seeds", "2", "--experts", "4", "--k", "2",
         "--epochs", "1", "--n-train", "400", "--batch-size", "128", "--log-every", "2", "--bench-name", "bench-syn", "--runs-dir", runs)

    # broken dirs, each made from real files cut short or overwritten
    (root / "broken-config").mkdir()
    text = (root / "sae-topk" / "config.json").read_text()
    (root / "broken-config" / "config.json").write_text(text[: len(text) // 2])
    (root / "unknown-kind").mkdir()
    (root / "unknown-kind" / "config.json").write_text(json.dumps({"kind": "banana", "config": {}}))
    (root / "not-a-run").mkdir()
    (root / "not-a-run" / "notes.txt").write_text("hello")
    half = root / "sae-half"  # a run killed mid-training: config, a few metric rows and a torn last line
    half.mkdir()
    shutil.copy(root / "sae-topk" / "config.json", half / "config.json")
    lines = (root / "sae-topk" / "metrics.jsonl").read_text().splitlines()
    (half / "metrics.jsonl").write_text("\n".join(lines[:3]) + "\n" + lines[3][: len(lines[3]) // 2])
    (half / "status.json").write_text(json.dumps({"status": "running", "step": 6}))
    bad = root / "sae-corrupt"  # finished run whose eval.json and latent table were damaged
    shutil.copytree(root / "sae-feature-choice", bad)
    (bad / "eval.json").write_text('{"fvu": 0.5, "l0_')
    table = (bad / "analysis_latents.parquet").read_bytes()
    (bad / "analysis_latents.parquet").write_bytes(table[: len(table) // 3])
    (root / ".timings.json").write_text(json.dumps(t))
    return root


@pytest.fixture
def app_env(app_runs, monkeypatch) -> Path:
    monkeypatch.setenv("WORKBENCH_RUNS", str(app_runs))
    return app_runs


@pytest.fixture
def app_test(app_env):
    """make(page=None, **query) -> a run AppTest of Home.py, switched to pages/<page> when given."""
    from streamlit.testing.v1 import AppTest

    def make(page: str | None = None, **query):
        at = AppTest.from_file(str(APP / "Home.py"), default_timeout=60)
        if page:
            at.switch_page(f"pages/{page}")
        for k, v in query.items():
            at.query_params[k] = str(v)
        at.run()
        assert not at.exception, [e.value for e in at.exception]
        return at

    return make
