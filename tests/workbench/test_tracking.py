"""Tracker with real wandb in offline mode: the offline run is read back from its .wandb file."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.wandb_records import offline_run
from workbench.runs import Run
from workbench.tracking import Tracker, wandb_key


def test_wandb_key_namespaces_metrics():
    assert wandb_key("fvu", "train") == "train/fvu"
    assert wandb_key("eval_fvu", "eval") == "eval/fvu"
    assert wandb_key("eval/topk/fvu", "train") == "eval/topk/fvu"  # already namespaced
    assert wandb_key("heldout_names/accuracy", "eval") == "eval/heldout_names/accuracy"


def test_offline_run_has_tags_group_sections_histogram_artifact_and_says_how_to_sync(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WANDB_MODE", "offline")
    run = Run.create("test", {}, name="w", root=tmp_path)
    (run.path / "weights.bin").write_bytes(b"\0" * 64)
    tr = Tracker(run, project="workbench-tests", config={"lr": 0.001}, tags=["sweep1", "topk"], group="sweep1")
    tr.log({"loss": 0.5}, step=3)
    tr.log({"eval_fvu": 0.25, "ce_recovered": 0.9}, step=3, section="eval")
    tr.histogram("train/latent_density_log10", np.log10(np.array([1e-3, 1e-2, 1e-2, 0.1])), step=3)
    tr.artifact("w weights", [run.path / "weights.bin"], metadata={"k": 4})
    tr.finish()
    assert run.metrics() == [{"step": 3, "loss": 0.5}, {"step": 3, "eval_fvu": 0.25, "ce_recovered": 0.9}]  # bare names
    info = json.loads((run.path / "wandb.json").read_text())
    got = offline_run(run.path)
    assert info["mode"] == "offline" and info["dir"] == str(got["dir"].resolve())
    assert info["sync"] == f"wandb sync {got['dir'].resolve()}"
    assert f"upload it with `wandb sync {got['dir'].resolve()}`" in capsys.readouterr().err
    assert got["run"]["tags"] == ["sweep1", "topk"] and got["run"]["group"] == "sweep1"
    assert got["run"]["config"]["lr"] == 0.001
    keys = set().union(*got["history"])
    assert {"train/loss", "eval/fvu", "eval/ce_recovered", "train/latent_density_log10/_type"} <= keys
    assert got["summary"]["train/latent_density_log10/_type"] == "histogram"
    assert sum(got["summary"]["train/latent_density_log10/values"]) == 4
    assert got["artifacts"] == [{"name": "w-weights", "type": "model", "metadata": {"k": 4}, "files": ["weights.bin"]}]


def test_without_wandb_the_extras_are_no_ops(tmp_path):
    run = Run.create("test", {}, name="w", root=tmp_path)
    tr = Tracker(run)
    tr.histogram("train/x", [1.0], step=1)
    tr.artifact("a", [run.path / "config.json"])
    tr.finish()
    assert not (run.path / "wandb").exists() and not (run.path / "wandb.json").exists()
